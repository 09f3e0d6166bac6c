/* tc_inbound.c: tc ingress on a meshed pod's interfaces, the job of Istio's PREROUTING chain
 * (headers/inbound.h says how). */
#include "headers/inbound.h"

SEC("tc")
int mb_tc_inbound(struct __sk_buff *skb)
{
	const struct mb_settings *cfg;
	struct mb_pod_config *pod;
	struct bpf_sock_tuple t = {};
	union mb_nethdr nh;
	struct bpf_sock *sk;
	struct tcphdr tcp;
	union mb_ip dst = {};
	__u32 tuple_size = 0;
	enum mb_l4 l4;
	int unregistered = 0, reopen = 0;
	__u16 dport;
	__u32 tcp_off = 0;
	long err;

	/* attached to both directions of the pod's interfaces: what leaves is a reply to undo a rewrite of */
	if (skb->ingress_ifindex != skb->ifindex)
		return nat_out(skb);
	l4 = find_tcp(skb, &t, &tuple_size, &dst, &tcp, &nh, &tcp_off);
	/* not TCP; or a fragment (or TCP whose header is out of reach): left to the kernel, which
	 * reassembles fragments before it looks for a socket, as netfilter does before its nat table;
	 * the cgroup's guard then judges the whole segment, and drops a SYN for a captured port that
	 * reached an app's listener (tc cannot hand a fragment over: fail closed) */
	if (l4 != MB_L4_TCP)
		return TC_ACT_OK;
	cfg = active_settings();
	if (!cfg)
		return TC_ACT_OK;
	pod = bpf_map_lookup_elem(&local_pod_ips, &dst);
	if (!pod) {
		/* another address of the pod's own, where routing delivers it here (Istio's PREROUTING
		 * captures whatever arrives for the pod): a registered one under its pod's rules; one
		 * shared by pods of separate networks, or one the namespace gained since the last sync,
		 * under the rules of the pod whose namespace this is (below, once its listener is found) */
		if (!arrives_here(skb, &t, tuple_size))
			return TC_ACT_OK;
		pod = other_address_rules(&dst, &unregistered);
	}
	dport = bpf_ntohs(tcp.dest);
	if (!inbound_port_captured(cfg, pod, dport))
		return TC_ACT_OK;
	/* a packet of a connection sent to the inbound listener by rewriting (its SYN retransmitted too) */
	err = nat_in(skb, cfg, &t, tuple_size, tcp_off, &tcp);
	if (err)
		return err > 0 ? TC_ACT_OK : TC_ACT_SHOT;
	if (!tcp.syn)
		return tcp.ack && !tcp.rst ? cookie_ack(skb, cfg, pod, &t, tuple_size, &nh, &tcp) : TC_ACT_OK;
	if (tcp.ack)
		return TC_ACT_OK; /* a SYN-ACK: the answer to a connect of the pod's own */
	sk = bpf_skc_lookup_tcp(skb, &t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* a retransmitted SYN of a handshake under way keeps its request socket; a SYN that
		 * would reopen a TIME_WAIT tuple is a new connection (the kernel would give it to the
		 * app's own listener). Handed to the inbound listener, its request would collide with
		 * the TIME_WAIT socket in the kernel's table and be dropped, on every retransmission
		 * until the TIME_WAIT ends (a client reusing ports after the server closed first):
		 * it is sent there by rewriting its port, to a tuple of its own. */
		int handshaking = sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT;

		reopen = sk->state == BPF_TCP_TIME_WAIT;
		bpf_sk_release(sk);
		if (handshaking)
			return TC_ACT_OK;
	}
	/* a new connection: to the inbound listener, or nowhere (fail closed, as a REDIRECT to a
	 * port nothing listens on would be: the client retries until the sidecar is up) */
	set_dport(&t, tuple_size, cfg->inbound_port);
	sk = bpf_sk_lookup_tcp(skb, &t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		/* an address not registered yet may be of a family the pod's proxy does not listen on
		 * (IPv6 without ISTIO_DUAL_STACK: Istio captures none of it) */
		if (unregistered)
			return TC_ACT_OK;
		count(MB_CNT_INBOUND_NO_LISTENER, 1);
		return TC_ACT_SHOT;
	}
	/* an address of no single registered pod: the rules of the pod whose namespace this is */
	if (!pod && sk->state == BPF_TCP_LISTEN && !netns_captures(sk, dport)) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
	if (sk->state != BPF_TCP_LISTEN)
		err = -1;
	else if ((cfg->flags & MB_SETTINGS_INBOUND_REWRITE) || reopen)
		err = -MB_ESOCKTNOSUPPORT;
	else
		err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	/* a reuseport listener before Linux 6.6: sent there by rewriting its port, as REDIRECT would */
	if (err == -MB_ESOCKTNOSUPPORT) {
		err = nat_start(skb, cfg, &t, tuple_size, tcp_off, &tcp, &dst);
		if (!err)
			count(reopen ? MB_CNT_INBOUND_REOPENED : MB_CNT_INBOUND_REWRITTEN, 1);
	} else if (!err)
		count(MB_CNT_INBOUND_ASSIGNED, 1);
	if (err) {
		count(MB_CNT_INBOUND_NO_LISTENER, 1);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}
