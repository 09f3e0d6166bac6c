/* getsockopt.c: answer getsockopt(SOL_IP, SO_ORIGINAL_DST) and getsockopt(SOL_IPV6,
 * IP6T_SO_ORIGINAL_DST) as netfilter would for intercepted connections. Runs after the kernel's
 * handler; anything else passes through untouched. */
#include "headers/helpers.h"

/*
 * A connection mb_tc_inbound handed to the inbound listener was not rewritten: like TPROXY, the
 * accepted socket's own address is the original destination. Answered only where the kernel had
 * no answer, for a registered pod's proxy asking about a port its pod captures inbound (the only
 * sockets mb_tc_inbound hands over), so nothing else changes.
 */
static __always_inline struct mb_origin *handed_over(struct bpf_sockopt *ctx, const union mb_ip *self, __u16 port, struct mb_origin *out)
{
	const struct mb_settings *cfg = active_settings();
	struct mb_pod_config *pod;
	const union mb_ip *owner;
	__u32 uid = bpf_get_current_uid_gid();

	if (!cfg || ctx->retval == 0 || port == cfg->inbound_port || port == cfg->outbound_port)
		return NULL;
	pod = bpf_map_lookup_elem(&local_pod_ips, (void *)self);
	if (!pod) {
		/* handed over at another address of the pod's own, as mb_tc_inbound decides */
		owner = bpf_map_lookup_elem(&pod_other_ips, (void *)self);
		if (!owner)
			return NULL;
		pod = ip_is_zero(owner) ? NULL : bpf_map_lookup_elem(&local_pod_ips, (void *)owner);
		if (!pod && (port == MB_HBONE_PORT || uid != cfg->sidecar_uid))
			return NULL;
	}
	if (pod && (!inbound_captured(pod, port) || uid != pod->proxy_uid))
		return NULL;
	out->ip = *self;
	out->port = bpf_htons(port);
	out->flags = MB_ORIGIN_INBOUND;
	out->pid = 0;
	return out;
}

/* The original destination of an accepted socket (its remote end is the connecting end of the
 * key), from pair_original_dst or as handed over by tc; NULL when merbridge has no answer. */
static __always_inline struct mb_origin *origin_of(struct bpf_sockopt *ctx, const union mb_ip *local, __u16 lport,
                                                   const union mb_ip *remote, __be16 rport, struct mb_origin *scratch)
{
	struct mb_origin *o;
	struct mb_pair key;

	/* the connecting end's key: its namespace, its view */
	pair_from_ips(&key, owner_netns(remote, ctx), remote, rport, local, bpf_htons(lport));
	o = bpf_map_lookup_elem(&pair_original_dst, &key);
	if (o)
		return o;
	/* sent to the inbound listener by rewriting its port (tc_inbound.c): the pod's view, no local port */
	pair_from_ips(&key, 0, local, 0, remote, rport);
	o = nat_find(&key);
	return o ? o : handed_over(ctx, local, lport, scratch);
}

static __always_inline void answered(struct bpf_sockopt *ctx, int len)
{
	ctx->optlen = len;
	/* keep clang from merging the two 4-byte stores: the verifier allows only 4-byte ctx writes */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	count(MB_CNT_GETSOCKOPT_ANSWERED, 1);
}

SEC("cgroup/getsockopt")
int mb_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct mb_origin *o, scratch;
	union mb_ip local, remote;

	if (!sk || sk->protocol != MB_IPPROTO_TCP)
		return 1;
	if (ctx->level == MB_SOL_IP && ctx->optname == MB_SO_ORIGINAL_DST && sk->family == MB_AF_INET) {
		struct mb_sockaddr_in *sa = ctx->optval;

		ip_from_v4(&local, sk->src_ip4);
		ip_from_v4(&remote, sk->dst_ip4);
		o = origin_of(ctx, &local, sk->src_port, &remote, sk->dst_port, &scratch);
		/* a caller buffer too small is the kernel's EINVAL to report, as without us */
		if (!o || !ip_is_v4(&o->ip) || ctx->optlen < (int)sizeof(*sa) || (void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = MB_AF_INET;
		sa->port = o->port;
		sa->addr = o->ip.u32[3];
		__builtin_memset(sa->zero, 0, sizeof(sa->zero));
		answered(ctx, sizeof(*sa));
		return 1;
	}
	if (ctx->level == MB_SOL_IPV6 && ctx->optname == MB_IP6T_SO_ORIGINAL_DST && sk->family == MB_AF_INET6) {
		struct mb_sockaddr_in6 *sa6 = ctx->optval;

		ip_from_v6(&local, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
		ip_from_v6(&remote, sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]);
		o = origin_of(ctx, &local, sk->src_port, &remote, sk->dst_port, &scratch);
		if (!o || ip_is_v4(&o->ip) || ctx->optlen < (int)sizeof(*sa6) || (void *)(sa6 + 1) > ctx->optval_end)
			return 1;
		sa6->family = MB_AF_INET6;
		sa6->port = o->port;
		sa6->flowinfo = 0;
		sa6->addr[0] = o->ip.u32[0];
		sa6->addr[1] = o->ip.u32[1];
		sa6->addr[2] = o->ip.u32[2];
		sa6->addr[3] = o->ip.u32[3];
		sa6->scope_id = 0;
		answered(ctx, sizeof(*sa6));
	}
	return 1;
}
