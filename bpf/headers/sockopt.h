/* sockopt.h: answer getsockopt(SOL_IP, SO_ORIGINAL_DST) as netfilter would for rewritten
 * connections. Runs after the kernel's handler; anything else passes through untouched. */
#pragma once
#include "helpers.h"

/*
 * A connection mb_tc_inbound handed to the inbound listener was not rewritten: like TPROXY, the
 * accepted socket's own address is the original destination. Answered only where the kernel had
 * no answer, for a registered pod's proxy asking about a port its pod captures inbound (the only
 * sockets mb_tc_inbound hands over), so nothing else changes.
 */
static __always_inline struct mb_origin *handed_over(struct bpf_sockopt *ctx, struct bpf_sock *sk, struct mb_origin *out)
{
	const struct mb_settings *cfg = active_settings();
	struct mb_pod_config *pod;
	union mb_ip self;
	__u16 port = sk->src_port;

	if (!cfg || ctx->retval == 0 || port == cfg->inbound_port || port == cfg->outbound_port)
		return NULL;
	ip_from_v4(&self, sk->src_ip4);
	pod = bpf_map_lookup_elem(&local_pod_ips, &self);
	if (!pod || !inbound_captured(pod, port) || (__u32)bpf_get_current_uid_gid() != pod->proxy_uid)
		return NULL;
	out->ip = self;
	out->port = bpf_htons(port);
	out->flags = MB_ORIGIN_INBOUND;
	out->pid = 0;
	return out;
}

SEC("cgroup/getsockopt")
int mb_getsockopt(struct bpf_sockopt *ctx)
{
	struct mb_sockaddr_in *sa = ctx->optval;
	struct bpf_sock *sk = ctx->sk;
	struct mb_origin *o, local;
	struct mb_pair key;

	if (ctx->level != MB_SOL_IP || ctx->optname != MB_SO_ORIGINAL_DST || !sk)
		return 1;
	if (sk->family != MB_AF_INET || sk->protocol != MB_IPPROTO_TCP)
		return 1;
	/* the listener's accepted socket: its remote end is the connecting end of the key */
	pair_from_v4(&key, sk->dst_ip4, sk->dst_port, sk->src_ip4, bpf_htons((__u16)sk->src_port), ctx);
	o = bpf_map_lookup_elem(&pair_original_dst, &key);
	if (!o)
		o = handed_over(ctx, sk, &local);
	if (!o)
		return 1;
	/* a caller buffer too small is the kernel's EINVAL to report, as without us */
	if (ctx->optlen < (int)sizeof(*sa) || (void *)(sa + 1) > ctx->optval_end)
		return 1;
	sa->family = MB_AF_INET;
	sa->port = o->port;
	sa->addr = o->ip.u32[3];
	__builtin_memset(sa->zero, 0, sizeof(sa->zero));
	ctx->optlen = sizeof(*sa);
	/* keep clang from merging the two 4-byte stores: the verifier allows only 4-byte ctx writes */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	count(MB_CNT_GETSOCKOPT_ANSWERED, 1);
	return 1;
}
