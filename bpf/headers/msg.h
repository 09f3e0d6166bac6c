/* msg.h: sk_msg verdict that moves payload socket to socket, skipping the TCP/IP stack. */
#pragma once
#include "helpers.h"

SEC("sk_msg")
int mb_msg_redirect(struct sk_msg_md *msg)
{
	struct mb_sock_state *st;
	struct mb_pair peer;
	union mb_ip l, r;
	long verdict;

	if (!active_settings())
		return SK_PASS; /* draining: new data goes over TCP, after what was already moved */
	/* the peer's key as sockops worked it out when this socket was tracked */
	st = bpf_sk_storage_get(&sock_charges, msg->sk, 0, 0);
	if (st && st->has_peer) {
		verdict = bpf_msg_redirect_hash(msg, &sock_pair_map, &st->peer, BPF_F_INGRESS);
	} else {
		MB_CTX_ADDRESSES(msg, &l, &r);
		/* the peer's own key: its namespace, and our remote as its local. local_port is host
		 * order, remote_port network order in the upper 16 bits */
		pair_from_ips(&peer, owner_netns(&r, msg), &r, (__be16)(msg->remote_port >> 16), &l, bpf_htons((__u16)msg->local_port));
		verdict = bpf_msg_redirect_hash(msg, &sock_pair_map, &peer, BPF_F_INGRESS);
	}
	if (verdict == SK_PASS) {
		count(MB_CNT_MSG_REDIRECTED, 1);
		count(MB_CNT_BYTES_REDIRECTED, msg->size);
	} else {
		count(MB_CNT_REDIRECT_MISS, 1);
	}
	return SK_PASS; /* fail open: without a peer the data simply takes TCP */
}
