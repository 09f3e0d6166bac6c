/* connect.h: cgroup/connect4, where interception is decided (the iptables OUTPUT chain's job). */
#pragma once
#include "helpers.h"

/* Is the pod's sidecar listening on its outbound port in the caller's netns? Asked afresh on
 * every connect of an unregistered pod: an answer is never cached, so an app that started
 * before its sidecar is intercepted as soon as the sidecar listens. */
static __always_inline int sidecar_listening(struct bpf_sock_addr *ctx, const struct mb_settings *cfg)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.daddr = bpf_htonl(0x7f000001);
	t.ipv4.dport = bpf_htons(cfg->outbound_port);
	sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline int remember_origin(struct bpf_sock_addr *ctx, __be32 dst4, __be16 dport, __u16 flags)
{
	struct mb_origin *o;

	if (!ctx->sk)
		return 0;
	o = bpf_sk_storage_get(&origin_store, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o) {
		count(MB_CNT_ORIGIN_LOST, 1);
		return 0;
	}
	ip_from_v4(&o->ip, dst4);
	o->port = dport;
	o->flags = flags;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	return 1;
}

/* An app's connect: to its sidecar's outbound listener, unless the pod's rules exempt it. */
static __always_inline int app_connect(struct bpf_sock_addr *ctx, const struct mb_settings *cfg,
				       const union mb_ip *self, __u64 netns, __be32 dst4, __be16 dport)
{
	union mb_ip dst;
	__u16 flags = MB_ORIGIN_OUTBOUND;

	ip_from_v4(&dst, dst4);
	if (self) {
		struct mb_pod_config *pod = bpf_map_lookup_elem(&local_pod_ips, self);

		if (!pod || !outbound_captured(pod, &dst, bpf_ntohs(dport)))
			return 1;
	} else {
		/* Not registered (yet): act only where a sidecar is listening, never in the node's
		 * own netns, and with the default rules (capture all). */
		if (netns == cfg->host_netns || !sidecar_listening(ctx, cfg))
			return 1;
		flags |= MB_ORIGIN_UNREGISTERED;
	}
	if (!remember_origin(ctx, dst4, dport, flags))
		return 1; /* without the original destination the sidecar could not forward: leave it */
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	count(MB_CNT_CONN_OUTBOUND, 1);
	if (flags & MB_ORIGIN_UNREGISTERED)
		count(MB_CNT_CONN_UNREGISTERED, 1);
	return 1;
}

/* A sidecar's connect: to another meshed pod on this node goes to that pod's inbound listener
 * (PREROUTING's job under iptables); calls to its own pod and off the node are left alone. */
static __always_inline int sidecar_connect(struct bpf_sock_addr *ctx, const struct mb_settings *cfg,
					   const union mb_ip *self, __u64 netns, __be32 dst4, __be16 dport)
{
	struct mb_pod_config *peer;
	struct mb_process proc = {};
	union mb_ip dst;
	__u32 tgid;

	/* Unregistered: its own IP is unknown, so any local pod might be its own: do nothing. */
	if (!self)
		return 1;
	tgid = bpf_get_current_pid_tgid() >> 32;
	proc.pod_ip = *self;
	proc.netns = netns;
	bpf_map_update_elem(&process_ip, &tgid, &proc, BPF_ANY);

	ip_from_v4(&dst, dst4);
	if (ip_equal(self, &dst) || bpf_ntohs(dport) == cfg->inbound_port)
		return 1;
	peer = bpf_map_lookup_elem(&local_pod_ips, &dst);
	if (!peer || !inbound_captured(peer, bpf_ntohs(dport)))
		return 1;
	if (!remember_origin(ctx, dst4, dport, MB_ORIGIN_INBOUND))
		return 1;
	ctx->user_port = bpf_htons(cfg->inbound_port);
	count(MB_CNT_CONN_INBOUND, 1);
	return 1;
}

SEC("cgroup/connect4")
int mb_connect4(struct bpf_sock_addr *ctx)
{
	struct mb_settings *cfg;
	union mb_ip *self;
	__be32 dst4 = ctx->user_ip4;
	__be16 dport = (__be16)ctx->user_port;
	__u64 ugid, netns;

	if (ctx->protocol != MB_IPPROTO_TCP || is_loopback4(dst4))
		return 1;
	cfg = active_settings();
	if (!cfg)
		return 1;
	netns = bpf_get_netns_cookie(ctx);
	self = bpf_map_lookup_elem(&netns_pod_ips, &netns);
	ugid = bpf_get_current_uid_gid();
	if ((__u32)ugid == cfg->sidecar_uid || (__u32)(ugid >> 32) == cfg->sidecar_gid)
		return sidecar_connect(ctx, cfg, self, netns, dst4, dport);
	return app_connect(ctx, cfg, self, netns, dst4, dport);
}
