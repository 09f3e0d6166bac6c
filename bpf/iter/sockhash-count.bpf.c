// SPDX-License-Identifier: GPL-2.0
/* sockhash-count.bpf.c: the sockets in the sockhash it is pinned for, one '.' each (the kernel
 * keeps no element count for socket maps, and the iterator's seq_num cannot tell none from one).
 * A full map is 64 KiB to read: far less than bpftool dumping it. */
#include "iter.h"

char LICENSE[] SEC("license") = "GPL";

SEC("iter/sockmap")
int mb_sockhash_count(struct bpf_iter__sockmap *ctx)
{
	static const char dot[] = ".";

	if (ctx->key)
		bpf_seq_write(ctx->meta->seq, dot, 1);
	return 0;
}
