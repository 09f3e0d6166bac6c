/* connect.h: cgroup/connect4 and connect6, where interception is decided at connect() time: the
 * job of Istio's nat OUTPUT chain, rule for rule (docs/datapath.md lists them), plus sending a
 * sidecar's connection to another local pod straight to that pod's inbound listener. */
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

static __always_inline int remember_origin(struct bpf_sock_addr *ctx, const union mb_ip *dst, __be16 dport, __u16 flags)
{
	struct mb_origin *o;

	if (!ctx->sk)
		return 0;
	o = bpf_sk_storage_get(&origin_store, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o) {
		count(MB_CNT_ORIGIN_LOST, 1);
		return 0;
	}
	o->ip = *dst;
	o->port = dport;
	o->flags = flags;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	return 1;
}

/* What to do with a connect(). */
enum mb_action {
	MB_LEAVE = 0,
	MB_TO_OUTBOUND,      /* 127.0.0.1:outbound port: the pod's own sidecar, outbound */
	MB_TO_OWN_INBOUND,   /* 127.0.0.1:inbound port: the pod's own sidecar, inbound */
	MB_TO_PEER_INBOUND,  /* same address, inbound port: another local pod's sidecar */
};

/* Who is connecting: gathered once per connect() from the netns and the current task. */
struct mb_caller {
	const struct mb_pod_id *self; /* the calling pod's IPs; NULL while its netns is not registered */
	struct mb_pod_config *pod;    /* its rules (NULL with self, or when the pod list lost it) */
	__u64 netns;
	int proxy_uid;                /* runs as the pod's proxy user (--uid-owner) */
	int proxy;                    /* ... or its group (--gid-owner) */
};

static __always_inline void identify(void *ctx, const struct mb_settings *cfg, struct mb_caller *c)
{
	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = ugid, gid = ugid >> 32;
	__u32 puid = cfg->sidecar_uid, pgid = cfg->sidecar_gid;

	c->netns = bpf_get_netns_cookie(ctx);
	c->self = bpf_map_lookup_elem(&netns_pod_ips, &c->netns);
	c->pod = c->self ? bpf_map_lookup_elem(&local_pod_ips, (void *)&c->self->ip) : NULL;
	if (c->pod) {
		puid = c->pod->proxy_uid;
		pgid = c->pod->proxy_gid;
	}
	c->proxy_uid = uid == puid;
	c->proxy = c->proxy_uid || gid == pgid;
}

static __always_inline int own_ip(const struct mb_caller *c, const union mb_ip *dst)
{
	return c->self && (ip_equal(&c->self->ip, dst) || (!ip_is_zero(&c->self->ip6) && ip_equal(&c->self->ip6, dst)));
}

/* 127.0.0.6 or ::6: the address Istio's inbound passthrough binds its upstream to */
static __always_inline int inbound_source(const union mb_ip *src)
{
	if (ip_is_v4(src))
		return src->u32[3] == bpf_htonl(MB_INBOUND_SOURCE);
	return src->u32[0] == 0 && src->u32[1] == 0 && src->u32[2] == 0 && src->u32[3] == bpf_htonl(6);
}

/*
 * Istio's OUTPUT chain for a TCP connect to dst:dport from a process in a pod (src is the
 * address the socket is bound to, zeros if none). "Over lo" is any destination inside the pod:
 * 127/8 or its own IP.
 *   -p tcp --dports <excludeOutboundPorts>              RETURN
 *   -o lo -s 127.0.0.6                                  RETURN (the inbound sidecar's upstream)
 *   -o lo ! -d 127.0.0.1 ! --dport 15008 --uid-owner P   to the inbound listener
 *   -o lo ! --uid-owner P                               RETURN
 *   --uid-owner P / --gid-owner P                       RETURN
 *   -d 127.0.0.1                                        RETURN
 *   the pod's include/exclude ports and ranges          to the outbound listener
 * A proxy's connect to another meshed pod on this node goes to that pod's inbound listener,
 * which that pod's PREROUTING would have done on arrival.
 */
static __always_inline enum mb_action decide(struct bpf_sock_addr *ctx, const struct mb_settings *cfg,
					     const struct mb_caller *c, const union mb_ip *dst, __u16 dport,
					     const union mb_ip *src)
{
	struct mb_pod_config *peer;
	union mb_ip localhost;

	/* -p tcp --dports <excludeOutboundPorts> RETURN comes first in Istio's chain, for everyone */
	if (c->pod && port_listed(c->pod->out_exclude_ports, c->pod->n_out_exclude_ports, dport))
		return MB_LEAVE;
	if (ip_is_loopback(dst) || own_ip(c, dst)) {
		if (inbound_source(src))
			return MB_LEAVE;
		ip_localhost(&localhost, dst);
		/* c->self: only a registered pod's proxy (an unmeshed process may share the uid) */
		if (c->proxy_uid && c->self && !ip_equal(dst, &localhost) && dport != MB_HBONE_PORT)
			return MB_TO_OWN_INBOUND;
		return MB_LEAVE;
	}
	if (c->proxy) {
		if (!c->self || dport == cfg->inbound_port)
			return MB_LEAVE;
		peer = bpf_map_lookup_elem(&local_pod_ips, (void *)dst);
		return peer && inbound_captured(peer, dport) ? MB_TO_PEER_INBOUND : MB_LEAVE;
	}
	if (c->pod)
		return outbound_captured(c->pod, dst, dport) ? MB_TO_OUTBOUND : MB_LEAVE;
	/* Registered but without rules (the pod list lost it): capture, as the default rules would.
	 * Not registered (yet): only where a sidecar listens, never in the node's own netns. */
	if (c->self)
		return MB_TO_OUTBOUND;
	if (c->netns == cfg->host_netns || !sidecar_listening(ctx, cfg))
		return MB_LEAVE;
	return MB_TO_OUTBOUND;
}

/* Store the original destination, then set where the connect goes instead (`to`, the port in
 * network order). Returns 0 to leave the connect alone. */
static __always_inline int apply(struct bpf_sock_addr *ctx, const struct mb_settings *cfg, const struct mb_caller *c,
				 enum mb_action action, const union mb_ip *dst, __be16 dport, union mb_ip *to, __be16 *port)
{
	__u16 flags;

	switch (action) {
	case MB_TO_OUTBOUND:
		flags = MB_ORIGIN_OUTBOUND | (c->self ? 0 : MB_ORIGIN_UNREGISTERED);
		ip_localhost(to, dst);
		*port = bpf_htons(cfg->outbound_port);
		break;
	case MB_TO_OWN_INBOUND:
		flags = MB_ORIGIN_INBOUND | MB_ORIGIN_OWN_POD;
		ip_localhost(to, dst);
		*port = bpf_htons(cfg->inbound_port);
		break;
	case MB_TO_PEER_INBOUND:
		flags = MB_ORIGIN_INBOUND;
		*to = *dst;
		*port = bpf_htons(cfg->inbound_port);
		break;
	default:
		return 0;
	}
	/* without the original destination the sidecar could not forward: leave it */
	if (!remember_origin(ctx, dst, dport, flags))
		return 0;
	if (c->proxy && c->self) {
		struct mb_process proc = {.pod_ip = c->self->ip, .netns = c->netns};
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		bpf_map_update_elem(&process_ip, &tgid, &proc, BPF_ANY);
	}
	count(action == MB_TO_OUTBOUND ? MB_CNT_CONN_OUTBOUND : action == MB_TO_OWN_INBOUND ? MB_CNT_CONN_OWN_INBOUND : MB_CNT_CONN_INBOUND, 1);
	if (flags & MB_ORIGIN_UNREGISTERED)
		count(MB_CNT_CONN_UNREGISTERED, 1);
	return 1;
}

/* The whole decision for a connect to dst from a socket bound to src (zeros when unbound): 1 when
 * it is to go to `to`:`port` instead. */
static __always_inline int intercept(struct bpf_sock_addr *ctx, const union mb_ip *dst, const union mb_ip *src,
				     union mb_ip *to, __be16 *port)
{
	const struct mb_settings *cfg;
	struct mb_caller c;
	__be16 dport = (__be16)ctx->user_port;

	if (ctx->protocol != MB_IPPROTO_TCP)
		return 0;
	cfg = active_settings();
	if (!cfg)
		return 0;
	identify(ctx, cfg, &c);
	return apply(ctx, cfg, &c, decide(ctx, cfg, &c, dst, bpf_ntohs(dport), src), dst, dport, to, port);
}

SEC("cgroup/connect4")
int mb_connect4(struct bpf_sock_addr *ctx)
{
	union mb_ip dst, src, to;
	__be16 port;

	ip_from_v4(&dst, ctx->user_ip4);
	ip_from_v4(&src, ctx->sk ? ctx->sk->src_ip4 : 0);
	if (!intercept(ctx, &dst, &src, &to, &port))
		return 1;
	ctx->user_ip4 = to.u32[3];
	ctx->user_port = port;
	return 1;
}

/* AF_INET6 sockets: native IPv6 destinations, decided as ip6tables' copy of the rules would,
 * and v4-mapped ones (::ffff:a.b.c.d, Java's and .NET's default), which are IPv4 on the wire and
 * run only this hook, decided exactly as connect4 decides. */
SEC("cgroup/connect6")
int mb_connect6(struct bpf_sock_addr *ctx)
{
	union mb_ip dst, src, to;
	struct bpf_sock *sk = ctx->sk;
	__be16 port;

	ip_from_v6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	if (sk)
		ip_from_v6(&src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	else
		ip_from_v6(&src, 0, 0, 0, 0);
	if (!intercept(ctx, &dst, &src, &to, &port))
		return 1;
	ctx->user_ip6[0] = to.u32[0];
	ctx->user_ip6[1] = to.u32[1];
	ctx->user_ip6[2] = to.u32[2];
	ctx->user_ip6[3] = to.u32[3];
	ctx->user_port = port;
	return 1;
}
