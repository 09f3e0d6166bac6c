/* inbound_guard.c: cgroup_skb/ingress, inbound capture's backstop where tc is not. */
#include "headers/inbound.h"

/*
 * Inbound capture's backstop, on the cgroup's ingress, where the socket a packet goes to is known:
 * a SYN tc would have handed to the inbound listener that reached another listener of a registered
 * pod from outside it came in where tc is not (an interface the pod gained since sync attached tc
 * to its interfaces, one whose filter another tool took off), or in fragments, which tc cannot
 * hand over. Istio's PREROUTING is on every interface; here the SYN is dropped, as a REDIRECT to a
 * port nothing listens on would be, until sync puts tc there: the client's next retransmission
 * goes through the sidecar. Interfaces the pod excludes (inbound_skip) are left alone, as Istio
 * leaves them. Everything else, nearly every packet, is passed after a look at its socket.
 */
SEC("cgroup_skb/ingress")
int mb_inbound_guard(struct __sk_buff *skb)
{
	const struct mb_settings *cfg;
	struct mb_pod_config *pod;
	struct bpf_sock_tuple t = {};
	struct mb_iface iface = {};
	const struct mb_pod_id *id;
	union mb_nethdr nh;
	struct bpf_sock *sk = skb->sk;
	struct tcphdr tcp;
	union mb_ip dst = {};
	__u32 tuple_size = 0;
	enum mb_l4 l4;
	int unregistered = 0;
	__u32 tcp_off = 0;

	if (!sk || sk->state != BPF_TCP_LISTEN)
		return 1;
	cfg = active_settings();
	/* a sidecar listener: handed over (by tc, or by Istio's rules, which send a virtual machine's
	 * connections to the outbound one); lo: a connection from inside the pod, the connect hooks'
	 * to decide */
	if (!cfg || sk->src_port == cfg->inbound_port || sk->src_port == cfg->outbound_port || skb->ifindex == MB_LOOPBACK_IFINDEX)
		return 1;
	l4 = find_tcp(skb, &t, &tuple_size, &dst, &tcp, &nh, &tcp_off);
	/* reassembled by now: UNKNOWN is a chain of extension headers longer than walked */
	if (l4 == MB_L4_OTHER || (l4 == MB_L4_TCP && (!tcp.syn || tcp.ack)))
		return 1;
	iface.netns = sock_netns(sk);
	iface.ifindex = skb->ifindex;
	id = bpf_map_lookup_elem(&netns_pod_ips, &iface.netns);
	if (!id || bpf_map_lookup_elem(&inbound_skip, &iface))
		return 1;
	pod = bpf_map_lookup_elem(&local_pod_ips, &dst);
	if (!pod) {
		/* as tc: an address of no single registered pod is under this namespace's pod's rules */
		pod = other_address_rules(&dst, &unregistered);
		if (!pod)
			pod = bpf_map_lookup_elem(&local_pod_ips, &id->ip);
	}
	if (l4 == MB_L4_UNKNOWN) {
		/* TCP to a registered pod whose port cannot be read: it could be a captured one (at an
		 * address not registered yet, whose family the proxy may not listen on: passed) */
		if (unregistered)
			return 1;
		count(MB_CNT_INBOUND_UNPARSED, 1);
		return 0;
	}
	if (!inbound_port_captured(cfg, pod, bpf_ntohs(tcp.dest)))
		return 1;
	/* as tc: an address not registered yet, of a family the proxy does not listen on, is not captured */
	if (unregistered && !inbound_listener(skb, &t, tuple_size, cfg->inbound_port))
		return 1;
	count(MB_CNT_INBOUND_UNCOVERED, 1);
	return 0;
}
