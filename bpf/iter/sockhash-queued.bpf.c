// SPDX-License-Identifier: GPL-2.0
/* sockhash-queued.bpf.c: each socket in the sockhash it is pinned for, as its key and the bytes
 * sk_msg moved to it that it has not read yet. A socket leaves a sockhash only when it closes
 * or is deleted from it: the socket's psock holds the sk_msg program, which holds the map, so
 * unpinning frees nothing while a tracked connection lives. disable deletes each socket once
 * its queue is empty; deleting one with data queued would drop that data with the psock. */
#include <bpf/bpf_core_read.h>
#include "iter.h"
#include "../headers/types.h"

struct list_head {
	struct list_head *next;
} __attribute__((preserve_access_index));

struct sk_buff_head {
	__u32 qlen;
} __attribute__((preserve_access_index));

struct sk_psock {
	struct sk_buff_head ingress_skb;
	struct list_head ingress_msg;
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

struct sock {
	void *sk_user_data;
} __attribute__((preserve_access_index));

/* sk_user_data's low bits are flags (SK_USER_DATA_NOCOPY, _BPF, _PSOCK) */
#define MB_USER_DATA_PTRMASK (~7UL)

char LICENSE[] SEC("license") = "GPL";

/* A function of its own so the record's type is in the object's BTF (the layout test reads it there). */
static __attribute__((noinline)) int emit(struct seq_file *seq, struct mb_queued *rec)
{
	return bpf_seq_write(seq, rec, sizeof(*rec));
}

SEC("iter/sockmap")
int mb_sockhash_queued(struct bpf_iter__sockmap *ctx)
{
	struct mb_queued rec = {};
	struct sock *sk = ctx->sk;
	void *key = ctx->key;
	struct sk_psock *psock;
	struct list_head *head, *next;

	if (!key || !sk)
		return 0;
	__builtin_memcpy(&rec.key, key, sizeof(rec.key));
	psock = (struct sk_psock *)((unsigned long)BPF_CORE_READ(sk, sk_user_data) & MB_USER_DATA_PTRMASK);
	if (psock) {
		if (bpf_core_field_exists(psock->msg_tot_len))
			rec.queued = BPF_CORE_READ(psock, msg_tot_len);
		/* a message on the list, or skbs waiting for the verdict, count even where no length is kept */
		head = &psock->ingress_msg;
		next = BPF_CORE_READ(psock, ingress_msg.next);
		if (!rec.queued && (next != head || BPF_CORE_READ(psock, ingress_skb.qlen)))
			rec.queued = 1;
	}
	emit(ctx->meta->seq, &rec);
	return 0;
}
