/* sk_msg.c: sk_msg verdict that moves payload socket to socket, skipping the TCP/IP stack. */
#include "headers/helpers.h"
#include "headers/kernel.h"

/* Whether a socket handed data to TCP before sk_msg saw it: data in its SYN (Fast Open), or a send
 * that began before the socket was tracked and waited inside for the handshake to end. */
static __always_inline int took_tcp(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	return !tp || tp->bytes_sent || tp->write_seq != tp->snd_nxt;
}

SEC("sk_msg")
int mb_msg_redirect(struct sk_msg_md *msg)
{
	struct mb_sock_state *st;

	if (!active_settings())
		return SK_PASS; /* draining: new data goes over TCP, after what was already moved */
	/* The peer reads what was moved to it before what came over TCP. So once any of a socket's
	 * bytes took TCP (its peer not yet in the map: the handshake's last ACK still on its way, or
	 * lost), all of them do, or the peer would read them out of order. A socket with nowhere to
	 * remember that stays on TCP. */
	st = bpf_sk_storage_get(&sock_charges, msg->sk, 0, 0);
	if (!st || st->has_peer == MB_PEER_NONE)
		return SK_PASS;
	if (st->has_peer == MB_PEER_UNSEEN && took_tcp(msg->sk)) {
		st->has_peer = MB_PEER_NONE;
		count(MB_CNT_REDIRECT_MISS, 1);
		return SK_PASS;
	}
	if (bpf_msg_redirect_hash(msg, &sock_pair_map, &st->peer, BPF_F_INGRESS) == SK_PASS) {
		st->has_peer = MB_PEER_MOVING;
		count(MB_CNT_MSG_REDIRECTED, 1);
		count(MB_CNT_BYTES_REDIRECTED, msg->size);
	} else {
		st->has_peer = MB_PEER_NONE;
		count(MB_CNT_REDIRECT_MISS, 1);
	}
	return SK_PASS;
}
