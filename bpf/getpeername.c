/* getpeername.c: cgroup/getpeername4|6 and cgroup/recvmsg4|6 undo connect.c's rewrite where the
 * app looks (its peer's address, a DNS reply's source), as conntrack's reverse NAT would. */
#include "headers/helpers.h"

/*
 * Where netfilter's reverse NAT would make a socket's peer look like the original destination:
 * a reply from the proxy's DNS port (recvmsg) and getpeername() of a rewritten socket. `from` is
 * the address the kernel reports; on success `orig`/`oport` replace it. Settings are read even
 * while draining: sockets rewritten before keep their story until they close.
 */
static __always_inline int original_peer(struct bpf_sock_addr *ctx, const union mb_ip *from, int reply, union mb_ip *orig, __be16 *oport)
{
	struct mb_settings *cfg;
	struct mb_origin *o;
	union mb_ip localhost;
	__u32 key = 0;
	__u16 port = bpf_ntohs((__be16)ctx->user_port), to_port;

	if (!ctx->sk)
		return 0;
	cfg = bpf_map_lookup_elem(&settings, &key);
	o = bpf_sk_storage_get(&origin_store, ctx->sk, 0, 0);
	if (!cfg || !o)
		return 0;
	if (reply && !(o->flags & MB_ORIGIN_DNS))
		return 0;
	/* only the address merbridge put there: a UDP socket also talks to others */
	to_port = o->flags & MB_ORIGIN_DNS ? cfg->dns_port : o->flags & MB_ORIGIN_OUTBOUND ? cfg->outbound_port : cfg->inbound_port;
	ip_localhost(&localhost, from);
	if (port != to_port)
		return 0;
	/* a UDP socket (DNS) may be connected again or send elsewhere: only the agent's address counts */
	if ((o->flags & MB_ORIGIN_DNS) && !ip_equal(from, &localhost))
		return 0;
	*orig = o->ip;
	*oport = o->port;
	if (reply)
		count(MB_CNT_DNS_REPLY_RESTORED, 1);
	return 1;
}

static __always_inline int restore4(struct bpf_sock_addr *ctx, int reply)
{
	union mb_ip from, orig;
	__be16 oport;

	ip_from_v4(&from, ctx->user_ip4);
	if (original_peer(ctx, &from, reply, &orig, &oport) && ip_is_v4(&orig)) {
		ctx->user_ip4 = orig.u32[3];
		ctx->user_port = oport;
	}
	return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx, int reply)
{
	union mb_ip from, orig;
	__be16 oport;

	ip_from_v6(&from, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	if (original_peer(ctx, &from, reply, &orig, &oport))
		set_user_ip6(ctx, &orig, oport);
	return 1;
}

/* glibc drops a DNS reply whose source is not the server it asked: show the resolver's address */
SEC("cgroup/recvmsg4")
int mb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx, 1);
}

SEC("cgroup/recvmsg6")
int mb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx, 1);
}

SEC("cgroup/getpeername4")
int mb_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx, 0);
}

SEC("cgroup/getpeername6")
int mb_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx, 0);
}
