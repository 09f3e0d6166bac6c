/* inbound.h: what tc_inbound.c and inbound_guard.c share: packet parsing and the inbound rules.
 * tc ingress on a meshed pod's interfaces does the job of Istio's PREROUTING chain. Every
 * TCP connection that reaches the pod from elsewhere (another node, an unmeshed pod, the host) on
 * a port the pod captures inbound is handed to its sidecar's inbound listener. Nothing is
 * rewritten: bpf_sk_assign delivers the SYN to the listener as TPROXY would, so the accepted
 * socket keeps the original destination as its own address (getsockopt.c answers SO_ORIGINAL_DST
 * from it) and replies leave from the address the client called. */
#pragma once
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include "helpers.h"
#include "kernel.h"

/* IPv6 extension headers walked to find TCP; more than this fails closed */
#define MB_MAX_EXT_HDRS 6

static __always_inline long load_net(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_NET);
}

/* Where a packet's TCP header is, or why it cannot be told. */
enum mb_l4 {
	MB_L4_TCP = 0,
	MB_L4_OTHER, /* not TCP, or not IP: none of inbound capture's business */
	/* TCP as far as can be told, but no header to read: a fragment, or a chain of extension
	 * headers longer than walked */
	MB_L4_UNKNOWN,
};

/* The network header as read, for bpf_tcp_check_syncookie (which reads only its addresses). */
union mb_nethdr {
	struct iphdr v4;
	struct ipv6hdr v6;
};

/*
 * Find the TCP header as netfilter's `-p tcp` would: after IPv6 extension headers too, so a SYN
 * carrying hop-by-hop or destination options cannot slip past the sidecar. Fragments never reach
 * netfilter's nat table unassembled; here they cannot be judged, so they are UNKNOWN.
 */
static __always_inline enum mb_l4 find_tcp(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 *tuple_size, union mb_ip *dst,
                                           struct tcphdr *tcp, union mb_nethdr *nh_copy, __u32 *tcp_off)
{
	/* offsets from the network header, and the protocol the device gave the packet: an interface
	 * without an Ethernet header (a tun, a WireGuard or IP-in-IP tunnel) is read as well as a
	 * veth, as netfilter reads them all */
	__u32 off = 0;
	__u16 proto = skb->protocol;
	__u8 nh;
	int i;

	if (proto == bpf_htons(MB_ETH_P_IP)) {
		struct iphdr ip;

		if (load_net(skb, off, &ip, sizeof(ip)) || ip.protocol != MB_IPPROTO_TCP)
			return MB_L4_OTHER;
		nh_copy->v4 = ip;
		ip_from_v4(dst, ip.daddr);
		/* the addresses even of what cannot be judged: whether it stays here is asked of them */
		t->ipv4.saddr = ip.saddr;
		t->ipv4.daddr = ip.daddr;
		*tuple_size = sizeof(t->ipv4);
		/* more fragments, or an offset: no whole TCP header to judge */
		if (ip.frag_off & bpf_htons(0x3fff) || ip.ihl < 5)
			return MB_L4_UNKNOWN;
		off += ip.ihl * 4;
	} else if (proto == bpf_htons(MB_ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (load_net(skb, off, &ip6, sizeof(ip6)))
			return MB_L4_OTHER;
		nh_copy->v6 = ip6;
		__builtin_memcpy(dst, &ip6.daddr, 16);
		__builtin_memcpy(t->ipv6.saddr, &ip6.saddr, 16);
		__builtin_memcpy(t->ipv6.daddr, &ip6.daddr, 16);
		*tuple_size = sizeof(t->ipv6);
		off += sizeof(ip6);
		nh = ip6.nexthdr;
#pragma unroll
		for (i = 0; i < MB_MAX_EXT_HDRS; i++) {
			__u8 ext[2];

			if (nh == MB_IPPROTO_TCP)
				break;
			if (nh == MB_IPV6_FRAGMENT)
				return MB_L4_UNKNOWN;
			if (nh != MB_IPV6_HOPOPTS && nh != MB_IPV6_ROUTING && nh != MB_IPV6_DSTOPTS && nh != MB_IPV6_AUTH)
				return MB_L4_OTHER;
			if (load_net(skb, off, ext, sizeof(ext)))
				return MB_L4_UNKNOWN;
			off += nh == MB_IPV6_AUTH ? (ext[1] + 2) * 4 : (ext[1] + 1) * 8;
			nh = ext[0];
		}
		if (nh != MB_IPPROTO_TCP)
			return MB_L4_UNKNOWN;
	} else {
		return MB_L4_OTHER;
	}
	if (load_net(skb, off, tcp, sizeof(*tcp)))
		return MB_L4_UNKNOWN;
	*tcp_off = off;
	if (*tuple_size == sizeof(t->ipv4)) {
		t->ipv4.sport = tcp->source;
		t->ipv4.dport = tcp->dest;
	} else {
		t->ipv6.sport = tcp->source;
		t->ipv6.dport = tcp->dest;
	}
	return MB_L4_TCP;
}

/* Whether dst is this namespace's own, as routing will find it: a local route (NOT_FWDED), or,
 * where the namespace does not forward (FWD_DISABLED), what the kernel drops anyway. A
 * destination it forwards (a router's, a virtual machine's traffic) is not handed over. */
static __always_inline int arrives_here(struct __sk_buff *skb, const struct bpf_sock_tuple *t, __u32 tuple_size)
{
	struct bpf_fib_lookup fib = {};
	long r;

	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = MB_IPPROTO_TCP;
	if (tuple_size == sizeof(t->ipv4)) {
		fib.family = MB_AF_INET;
		fib.ipv4_src = t->ipv4.saddr;
		fib.ipv4_dst = t->ipv4.daddr;
	} else {
		fib.family = MB_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, t->ipv6.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, t->ipv6.daddr, 16);
	}
	r = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	return r == BPF_FIB_LKUP_RET_NOT_FWDED || r == BPF_FIB_LKUP_RET_FWD_DISABLED;
}

static __always_inline void set_dport(struct bpf_sock_tuple *t, __u32 tuple_size, __u16 port)
{
	if (tuple_size == sizeof(t->ipv4))
		t->ipv4.dport = bpf_htons(port);
	else
		t->ipv6.dport = bpf_htons(port);
}

/* The network namespace cookie of a socket, read through its BTF pointer: bpf_get_netns_cookie
 * takes an skb only in recent kernels. */
static __always_inline __u64 sock_netns(struct bpf_sock *sk)
{
	struct sock *s = (struct sock *)bpf_skc_to_tcp_sock(sk);

	return s ? s->__sk_common.skc_net.net->net_cookie : 0;
}

/* Whether the registered pod whose namespace holds this socket captures port inbound (1 when the
 * namespace is no registered pod's: fail closed). */
static __always_inline int netns_captures(struct bpf_sock *sk, __u16 port)
{
	__u64 netns = sock_netns(sk);
	struct mb_pod_id *id = bpf_map_lookup_elem(&netns_pod_ips, &netns);
	struct mb_pod_config *pod = id ? bpf_map_lookup_elem(&local_pod_ips, &id->ip) : NULL;

	return pod ? inbound_captured(pod, port) : 1;
}

/*
 * An ACK on a captured port that may complete a handshake the inbound listener answered with a SYN
 * cookie: it keeps no request socket for one (net.ipv4.tcp_syncookies=2, or while a SYN flood fills
 * its queue), so the ACK finds no socket under its tuple but the app's listener, which would take a
 * valid cookie too (the connection then goes around the sidecar). netfilter's NAT sends it to the
 * inbound listener, so does this, when it is a valid cookie of that listener's. A segment of any
 * other connection is left to the normal lookup: one handed over finds its accepted socket under the
 * original tuple; one Istio's REDIRECT made (rules installed too, or before) is under the address
 * and port REDIRECT chose, and its ACKs are no cookie of the tuple they carry.
 */
static __always_inline int cookie_ack(struct __sk_buff *skb, const struct mb_settings *cfg, const struct mb_pod_config *pod,
                                      struct bpf_sock_tuple *t, __u32 tuple_size, union mb_nethdr *nh, struct tcphdr *tcp)
{
	struct bpf_sock *sk;
	long err = -1;

	sk = bpf_skc_lookup_tcp(skb, t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		int known = sk->state != BPF_TCP_LISTEN;

		bpf_sk_release(sk);
		if (known)
			return TC_ACT_OK; /* the connection's own socket (the common case: one lookup) */
	}
	set_dport(t, tuple_size, cfg->inbound_port);
	sk = bpf_sk_lookup_tcp(skb, t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	/* cheap unless the listener sent cookies lately: the kernel checks that first; an address of
	 * no single registered pod is under the rules of the pod whose namespace this is (as SYNs) */
	if (sk->state == BPF_TCP_LISTEN && (pod || netns_captures(sk, bpf_ntohs(tcp->dest))) &&
	    !bpf_tcp_check_syncookie(sk, nh, tuple_size == sizeof(t->ipv4) ? sizeof(nh->v4) : sizeof(nh->v6), tcp, sizeof(*tcp)))
		err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (!err)
		count(MB_CNT_INBOUND_ASSIGNED, 1);
	return TC_ACT_OK;
}

/* The rules of the pod an address of a registered pod's namespace belongs to, other than a pod's
 * own (pod_other_ips): its owner's, or NULL where pods of separate networks share it or the
 * namespace gained it since the last sync (*unregistered): then the rules are those of the pod
 * whose namespace it arrives in, known once its inbound listener is (Istio's PREROUTING applies
 * the pod's rules to whatever arrives for it). */
static __always_inline struct mb_pod_config *other_address_rules(const union mb_ip *dst, int *unregistered)
{
	const union mb_ip *owner = bpf_map_lookup_elem(&pod_other_ips, dst);

	*unregistered = !owner;
	return !owner || ip_is_zero(owner) ? NULL : bpf_map_lookup_elem(&local_pod_ips, (void *)owner);
}

/* Whether a connection to dport is for the inbound listener, under these rules (NULL: all ports
 * but the tunnel's); the inbound port itself is already on its way there. */
static __always_inline int inbound_port_captured(const struct mb_settings *cfg, const struct mb_pod_config *pod, __u16 dport)
{
	if (dport == cfg->inbound_port)
		return 0;
	return pod ? inbound_captured(pod, dport) : dport != MB_HBONE_PORT;
}

/* Whether the namespace has an inbound listener for this destination (lookup by the packet's
 * addresses, the inbound port in place of its own). */
static __always_inline int inbound_listener(void *ctx, struct bpf_sock_tuple *t, __u32 tuple_size, __u16 port)
{
	struct bpf_sock *sk;
	int found;

	set_dport(t, tuple_size, port);
	sk = bpf_sk_lookup_tcp(ctx, t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	found = sk->state == BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return found;
}

/*
 * Where the kernel cannot hand a packet to a listener (bpf_sk_assign refuses SO_REUSEPORT listeners
 * before Linux 6.6, and proxies listen with it), a connection goes to the inbound listener the way
 * netfilter's REDIRECT sends it: its destination port is rewritten to the inbound port on the way
 * in, for every packet of it, and its replies' source port back on the way out, so the wire and the
 * client see the original port. inbound_nat keeps the original destination (getsockopt answers from
 * it); a connection's key is the pod's address and the client's address and port.
 */

/* The network header's offset from the start of the packet: behind an Ethernet header, or at the
 * start on an interface without one (a tun, a WireGuard device). Each is believed only when the
 * header's first bytes are there; -1 when neither is (a VLAN tag in the frame, say). */
static __always_inline int net_offset(struct __sk_buff *skb)
{
	__u32 net = 0, at = 0;
	__u16 proto = 0;

	if (load_net(skb, 0, &net, sizeof(net)))
		return -1;
	if (!bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) && proto == skb->protocol &&
	    !bpf_skb_load_bytes(skb, MB_ETH_HLEN, &at, sizeof(at)) && at == net)
		return MB_ETH_HLEN;
	if (!bpf_skb_load_bytes(skb, 0, &at, sizeof(at)) && at == net)
		return 0;
	return -1;
}

/* Rewrite a TCP port of the packet (which: offsetof(struct tcphdr, source) or dest) and its checksum. */
static __always_inline int rewrite_port(struct __sk_buff *skb, __u32 tcp_off, __u32 which, __be16 from, __be16 to)
{
	int l3 = net_offset(skb);

	if (l3 < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, l3 + tcp_off + offsetof(struct tcphdr, check), from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, l3 + tcp_off + which, &to, sizeof(to), 0) ? -1 : 0;
}

static __always_inline void nat_key(struct mb_pair *key, const struct bpf_sock_tuple *t, __u32 tuple_size, int pod_is_src)
{
	union mb_ip src, dst;

	if (tuple_size == sizeof(t->ipv4)) {
		ip_from_v4(&src, t->ipv4.saddr);
		ip_from_v4(&dst, t->ipv4.daddr);
		pair_from_ips(key, 0, pod_is_src ? &src : &dst, 0, pod_is_src ? &dst : &src, pod_is_src ? t->ipv4.dport : t->ipv4.sport);
	} else {
		__builtin_memcpy(&src, t->ipv6.saddr, 16);
		__builtin_memcpy(&dst, t->ipv6.daddr, 16);
		pair_from_ips(key, 0, pod_is_src ? &src : &dst, 0, pod_is_src ? &dst : &src, pod_is_src ? t->ipv6.dport : t->ipv6.sport);
	}
}

/* A packet of a connection sent to the inbound listener by rewriting: its port rewritten (1), or
 * not one of them (0). One that cannot be rewritten is dropped by the caller (fail closed). */
static __always_inline int nat_in(struct __sk_buff *skb, const struct mb_settings *cfg, const struct bpf_sock_tuple *t, __u32 tuple_size,
                                  __u32 tcp_off, const struct tcphdr *tcp)
{
	struct mb_origin *o;
	struct mb_pair key;

	nat_key(&key, t, tuple_size, 0);
	o = nat_find(&key);
	if (!o || o->port != tcp->dest)
		return 0;
	return rewrite_port(skb, tcp_off, offsetof(struct tcphdr, dest), tcp->dest, bpf_htons(cfg->inbound_port)) ? -1 : 1;
}

/* A new connection to the inbound listener by rewriting: remember where it was going, rewrite. */
static __always_inline int nat_start(struct __sk_buff *skb, const struct mb_settings *cfg, const struct bpf_sock_tuple *t, __u32 tuple_size,
                                     __u32 tcp_off, const struct tcphdr *tcp, const union mb_ip *dst)
{
	struct mb_origin o = {.ip = *dst, .port = tcp->dest, .flags = MB_ORIGIN_INBOUND};
	struct mb_pair key;

	nat_key(&key, t, tuple_size, 0);
	if (bpf_map_update_elem(&inbound_nat, &key, &o, BPF_ANY))
		return -1;
	if (rewrite_port(skb, tcp_off, offsetof(struct tcphdr, dest), tcp->dest, bpf_htons(cfg->inbound_port)))
		return -1;
	return 0;
}

/* On the way out: a reply of a rewritten connection leaves from the port the client called. Cheap
 * for everything else: the sending socket's port says it is none of them. */
static __always_inline int nat_out(struct __sk_buff *skb)
{
	const struct mb_settings *cfg = active_settings();
	struct bpf_sock *sk = skb->sk;
	struct bpf_sock_tuple t = {};
	union mb_nethdr nh;
	struct tcphdr tcp;
	struct mb_origin *o;
	struct mb_pair key;
	union mb_ip src = {};
	__u32 tuple_size = 0, tcp_off = 0;

	if (!cfg || (sk && sk->src_port != cfg->inbound_port))
		return TC_ACT_OK;
	if (find_tcp(skb, &t, &tuple_size, &src, &tcp, &nh, &tcp_off) != MB_L4_TCP || tcp.source != bpf_htons(cfg->inbound_port))
		return TC_ACT_OK;
	nat_key(&key, &t, tuple_size, 1);
	o = nat_find(&key);
	if (!o)
		return TC_ACT_OK;
	return rewrite_port(skb, tcp_off, offsetof(struct tcphdr, source), tcp.source, o->port) ? TC_ACT_SHOT : TC_ACT_OK;
}
