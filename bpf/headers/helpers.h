/* helpers.h: small inline helpers shared by the programs. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"

static __always_inline void count(enum mb_counter which, __u64 n)
{
	__u32 key = which;
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		*v += n; /* per-CPU slot: no atomics needed */
}

/* The settings, or NULL while the CLI has not configured the datapath or is draining it. */
static __always_inline struct mb_settings *active_settings(void)
{
	__u32 key = 0;
	struct mb_settings *s = bpf_map_lookup_elem(&settings, &key);

	if (!s || !s->outbound_port || (s->flags & MB_SETTINGS_DRAINING))
		return NULL;
	return s;
}

static __always_inline void ip_from_v4(union mb_ip *ip, __be32 v4)
{
	ip->u32[0] = 0;
	ip->u32[1] = 0;
	ip->u32[2] = bpf_htonl(0x0000ffff);
	ip->u32[3] = v4;
}

static __always_inline int ip_equal(const union mb_ip *a, const union mb_ip *b)
{
	return a->u32[0] == b->u32[0] && a->u32[1] == b->u32[1] && a->u32[2] == b->u32[2] && a->u32[3] == b->u32[3];
}

static __always_inline int is_loopback4(__be32 v4)
{
	return (bpf_ntohl(v4) >> 24) == 127;
}

static __always_inline int ip_is_v4(const union mb_ip *ip)
{
	return ip->u32[0] == 0 && ip->u32[1] == 0 && ip->u32[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int cidr_contains(const struct mb_cidr *c, const union mb_ip *ip)
{
	int i;

	/* ip6tables rules never see IPv4 traffic: an IPv6 range such as ::/0 must not match the
	 * v4-mapped form IPv4 addresses take in the slot, nor an IPv4 range an IPv6 address */
	if (ip_is_v4(&c->ip) != ip_is_v4(ip))
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		int bits = (int)c->prefix - 32 * i;
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~0u << (32 - bits));
		if ((ip->u32[i] ^ c->ip.u32[i]) & mask)
			return 0;
	}
	return 1;
}

static __always_inline int port_listed(const __u16 *ports, __u8 n, __u16 port)
{
	int i;

	for (i = 0; i < MB_MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (ports[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int cidr_listed(const struct mb_cidr *cidrs, __u8 n, const union mb_ip *ip)
{
	int i;

	for (i = 0; i < MB_MAX_CIDRS; i++) {
		if (i >= n)
			break;
		if (cidr_contains(&cidrs[i], ip))
			return 1;
	}
	return 0;
}

/* Istio's outbound order: excluded ports, excluded CIDRs, included ports, included CIDRs. */
static __always_inline int outbound_captured(const struct mb_pod_config *pod, const union mb_ip *dst, __u16 port)
{
	if (port_listed(pod->out_exclude_ports, pod->n_out_exclude_ports, port))
		return 0;
	if (cidr_listed(pod->out_exclude_cidrs, pod->n_out_exclude_cidrs, dst))
		return 0;
	if (port_listed(pod->out_include_ports, pod->n_out_include_ports, port))
		return 1;
	if (pod->flags & MB_POD_OUT_ALL_CIDRS)
		return 1;
	return cidr_listed(pod->out_include_cidrs, pod->n_out_include_cidrs, dst);
}

/* istio-init's owner-group rule (-m owner [!] --gid-owner G -j RETURN), after the proxy's own:
 * whether a process of this group has its outbound captured at all */
static __always_inline int group_captured(const struct mb_pod_config *pod, __u32 gid)
{
	int i, listed = 0;

	for (i = 0; i < MB_MAX_GROUPS; i++) {
		if (i >= pod->n_owner_groups)
			break;
		if (pod->owner_groups[i] == gid) {
			listed = 1;
			break;
		}
	}
	return (pod->flags & MB_POD_GROUPS_ONLY) ? listed : !listed;
}

static __always_inline int inbound_captured(const struct mb_pod_config *pod, __u16 port)
{
	if (port_listed(pod->in_exclude_ports, pod->n_in_exclude_ports, port))
		return 0;
	if (pod->flags & MB_POD_IN_ALL_PORTS)
		return 1;
	return port_listed(pod->in_include_ports, pod->n_in_include_ports, port);
}

/* An AF_INET socket, or an AF_INET6 one whose peer is v4-mapped (IPv4 on the wire). */
static __always_inline int talks_ipv4(__u32 family, const __u32 *remote_ip6)
{
	return family == MB_AF_INET ||
	       (family == MB_AF_INET6 && remote_ip6[0] == 0 && remote_ip6[1] == 0 && remote_ip6[2] == bpf_htonl(0x0000ffff));
}

static __always_inline void ip_from_v6(union mb_ip *ip, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	ip->u32[0] = w0;
	ip->u32[1] = w1;
	ip->u32[2] = w2;
	ip->u32[3] = w3;
}

static __always_inline int ip_is_zero(const union mb_ip *ip)
{
	return !(ip->u32[0] | ip->u32[1] | ip->u32[2] | ip->u32[3]);
}

/* 127/8 or ::1: where iptables and ip6tables see a packet leave on lo (with the pod's own IPs) */
static __always_inline int ip_is_loopback(const union mb_ip *ip)
{
	if (ip_is_v4(ip))
		return is_loopback4(ip->u32[3]);
	return ip->u32[0] == 0 && ip->u32[1] == 0 && ip->u32[2] == 0 && ip->u32[3] == bpf_htonl(1);
}

/* 127.0.0.1 or ::1, in the family of `like` */
static __always_inline void ip_localhost(union mb_ip *ip, const union mb_ip *like)
{
	if (ip_is_v4(like))
		ip_from_v4(ip, bpf_htonl(0x7f000001));
	else
		ip_from_v6(ip, 0, 0, 0, bpf_htonl(1));
}

/*
 * A socket's two addresses from a sockops or sk_msg context (the same field names): IPv4 fields for
 * AF_INET and v4-mapped AF_INET6 sockets (they hold the mapped addresses), IPv6 ones otherwise.
 * Every field is read up front: the verifier refuses a context pointer chosen by a branch.
 */
#define MB_CTX_ADDRESSES(ctx, local, remote)                                                                                               \
	do {                                                                                                                               \
		__u32 l4_ = (ctx)->local_ip4, r4_ = (ctx)->remote_ip4;                                                                     \
		__u32 l6_[4] = {(ctx)->local_ip6[0], (ctx)->local_ip6[1], (ctx)->local_ip6[2], (ctx)->local_ip6[3]};                       \
		__u32 r6_[4] = {(ctx)->remote_ip6[0], (ctx)->remote_ip6[1], (ctx)->remote_ip6[2], (ctx)->remote_ip6[3]};                   \
		if (talks_ipv4((ctx)->family, r6_)) {                                                                                      \
			ip_from_v4(local, l4_);                                                                                            \
			ip_from_v4(remote, r4_);                                                                                           \
		} else {                                                                                                                   \
			ip_from_v6(local, l6_[0], l6_[1], l6_[2], l6_[3]);                                                                 \
			ip_from_v6(remote, r6_[0], r6_[1], r6_[2], r6_[3]);                                                                \
		}                                                                                                                          \
	} while (0)

static __always_inline void pair_from_ips(struct mb_pair *p, __u64 netns, const union mb_ip *local, __be16 lport, const union mb_ip *remote,
                                          __be16 rport)
{
	p->netns = netns;
	p->local_ip = *local;
	p->remote_ip = *remote;
	p->local_port = lport;
	p->remote_port = rport;
	p->pad = 0;
}

/*
 * The namespace whose sockets may hold `ip` as their local address in a key: the caller's own for
 * loopback, else the registered pod that has the address; 0 (matching no key) for anyone else.
 * A socket in another namespace that puts a pod's address on its own interface never meets that
 * pod's connections in the maps.
 */
static __always_inline __u64 owner_netns(const union mb_ip *ip, void *ctx)
{
	struct mb_pod_config *pod;

	if (ip_is_loopback(ip))
		return bpf_get_netns_cookie(ctx);
	pod = bpf_map_lookup_elem(&local_pod_ips, (void *)ip);
	return pod ? pod->netns : 0;
}

/* A connection's original destination where tc rewrote its port: from inbound_nat, or from the
 * replaced datapath's map (inbound_nat_prev), adopted into ours on first use. */
static __always_inline struct mb_origin *nat_find(const struct mb_pair *key)
{
	struct mb_origin *o = bpf_map_lookup_elem(&inbound_nat, key);
	__u32 zero = 0;
	void *prev;

	if (o)
		return o;
	prev = bpf_map_lookup_elem(&inbound_nat_prev, &zero);
	o = prev ? bpf_map_lookup_elem(prev, key) : NULL;
	if (o)
		bpf_map_update_elem(&inbound_nat, key, o, BPF_NOEXIST);
	return o;
}

/* Write an address into an IPv6 context: the verifier allows only 4-byte stores into user_ip6. */
static __always_inline void set_user_ip6(struct bpf_sock_addr *ctx, const union mb_ip *ip, __be16 port)
{
	ctx->user_ip6[0] = ip->u32[0];
	ctx->user_ip6[1] = ip->u32[1];
	ctx->user_ip6[2] = ip->u32[2];
	ctx->user_ip6[3] = ip->u32[3];
	ctx->user_port = port;
}
