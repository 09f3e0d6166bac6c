/* inbound.h: tc ingress on a meshed pod's interfaces: the job of Istio's PREROUTING chain. Every
 * TCP connection that reaches the pod from elsewhere (another node, an unmeshed pod, the host) on
 * a port the pod captures inbound is handed to its sidecar's inbound listener. Nothing is
 * rewritten: bpf_sk_assign delivers the SYN to the listener as TPROXY would, so the accepted
 * socket keeps the original destination as its own address (sockopt.h answers SO_ORIGINAL_DST
 * from it) and replies leave from the address the client called. */
#pragma once
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include "helpers.h"

SEC("tc")
int mb_tc_inbound(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	const struct mb_settings *cfg;
	struct mb_pod_config *pod;
	struct bpf_sock_tuple t = {};
	struct ethhdr *eth = data;
	struct bpf_sock *sk;
	struct tcphdr *tcp;
	union mb_ip dst;
	__u32 tuple_size;
	__u16 dport;
	long err;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(MB_ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->protocol != MB_IPPROTO_TCP || ip->ihl < 5)
			return TC_ACT_OK;
		tcp = (void *)ip + ip->ihl * 4;
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = tcp->source;
		t.ipv4.dport = tcp->dest;
		tuple_size = sizeof(t.ipv4);
		ip_from_v4(&dst, ip->daddr);
	} else if (eth->h_proto == bpf_htons(MB_ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		/* TCP right after the fixed header; extension headers are left alone */
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != MB_IPPROTO_TCP)
			return TC_ACT_OK;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		t.ipv6.sport = tcp->source;
		t.ipv6.dport = tcp->dest;
		tuple_size = sizeof(t.ipv6);
		__builtin_memcpy(&dst, &ip6->daddr, 16);
	} else {
		return TC_ACT_OK;
	}
	cfg = active_settings();
	if (!cfg)
		return TC_ACT_OK;
	dport = bpf_ntohs(tcp->dest);
	if (dport == cfg->inbound_port)
		return TC_ACT_OK; /* already on its way to the sidecar (a local sidecar's rewrite) */
	pod = bpf_map_lookup_elem(&local_pod_ips, &dst);
	if (!pod || !inbound_captured(pod, dport))
		return TC_ACT_OK;
	/* Only a new connection is handed over. Every later packet finds its socket by the normal
	 * lookup: the accepted socket under the original tuple, or (where Istio's PREROUTING REDIRECT
	 * is installed too and rewrites the port) under the NATed one. */
	if (!tcp->syn || tcp->ack)
		return TC_ACT_OK;
	sk = bpf_skc_lookup_tcp(skb, &t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* a retransmitted SYN of a handshake under way keeps its request socket; a SYN that
		 * would reopen a TIME_WAIT tuple is a new connection (the kernel would give it to the
		 * app's own listener) */
		int handshaking = sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT;

		bpf_sk_release(sk);
		if (handshaking)
			return TC_ACT_OK;
	}
	/* a new connection: to the inbound listener, or nowhere (fail closed, as a REDIRECT to a
	 * port nothing listens on would be: the client retries until the sidecar is up) */
	if (tuple_size == sizeof(t.ipv4))
		t.ipv4.dport = bpf_htons(cfg->inbound_port);
	else
		t.ipv6.dport = bpf_htons(cfg->inbound_port);
	sk = bpf_sk_lookup_tcp(skb, &t, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		count(MB_CNT_INBOUND_NO_LISTENER, 1);
		return TC_ACT_SHOT;
	}
	err = sk->state == BPF_TCP_LISTEN ? bpf_sk_assign(skb, sk, 0) : -1;
	bpf_sk_release(sk);
	if (err) {
		count(MB_CNT_INBOUND_NO_LISTENER, 1);
		return TC_ACT_SHOT;
	}
	count(MB_CNT_INBOUND_ASSIGNED, 1);
	return TC_ACT_OK;
}
