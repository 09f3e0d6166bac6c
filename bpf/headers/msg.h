/* msg.h: sk_msg verdict that moves payload socket to socket, skipping the TCP/IP stack. */
#pragma once
#include "helpers.h"

SEC("sk_msg")
int mb_msg_redirect(struct sk_msg_md *msg)
{
	struct mb_pair peer;
	long verdict;

	/* every field read up front: the verifier refuses a context pointer chosen by a branch */
	__u32 l4 = msg->local_ip4, r4 = msg->remote_ip4;
	__u32 l6[4] = {msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]};
	__u32 r6[4] = {msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]};
	union mb_ip l, r;

	if (!active_settings())
		return SK_PASS; /* draining: new data goes over TCP, after what was already moved */
	if (talks_ipv4(msg->family, r6)) {
		ip_from_v4(&l, l4);
		ip_from_v4(&r, r4);
	} else {
		ip_from_v6(&l, l6[0], l6[1], l6[2], l6[3]);
		ip_from_v6(&r, r6[0], r6[1], r6[2], r6[3]);
	}
	/* the peer's own view: our remote is its local. local_port is host order, remote_port
	 * network order in the upper 16 bits */
	pair_from_ips(&peer, &r, (__be16)(msg->remote_port >> 16), &l, bpf_htons((__u16)msg->local_port), msg);
	verdict = bpf_msg_redirect_hash(msg, &sock_pair_map, &peer, BPF_F_INGRESS);
	if (verdict == SK_PASS) {
		count(MB_CNT_MSG_REDIRECTED, 1);
		count(MB_CNT_BYTES_REDIRECTED, msg->size);
	} else {
		count(MB_CNT_REDIRECT_MISS, 1);
	}
	return SK_PASS; /* fail open: without a peer the data simply takes TCP */
}
