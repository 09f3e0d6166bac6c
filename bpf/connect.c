/* connect.c: cgroup/connect4|6 and cgroup/sendmsg4|6, where interception is decided at connect()
 * (or sendto()) time: the job of Istio's nat OUTPUT chain, rule for rule (docs/datapath.md lists
 * them), plus sending a sidecar's connection to another local pod straight to that pod's inbound
 * listener. getpeername.c undoes the rewrite where the app looks. */
#include "headers/helpers.h"
#include "headers/kernel.h"

/* Is the pod's sidecar listening on its outbound port in the caller's netns? Asked afresh on
 * every connect of an unregistered pod: an answer is never cached, so an app that started
 * before its sidecar is intercepted as soon as the sidecar listens. Only a listener of the mesh's
 * proxy user counts: ztunnel's in-pod listener (Istio's ambient mode) and an app's own are on
 * that port too, and sending their pod's connects there would loop or break them. */
static __always_inline int sidecar_listening(struct bpf_sock_addr *ctx, const struct mb_settings *cfg)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	struct sock *s;
	int proxy;

	t.ipv4.daddr = bpf_htonl(0x7f000001);
	t.ipv4.dport = bpf_htons(cfg->outbound_port);
	sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	s = (struct sock *)bpf_skc_to_tcp_sock(sk);
	proxy = s && s->sk_uid.val == cfg->sidecar_uid;
	bpf_sk_release(sk);
	return proxy;
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

/* What to do with a connect() or a datagram. */
enum mb_action {
	MB_LEAVE = 0,
	MB_TO_OUTBOUND,     /* 127.0.0.1:outbound port: the pod's own sidecar, outbound */
	MB_TO_OWN_INBOUND,  /* 127.0.0.1:inbound port: the pod's own sidecar, inbound */
	MB_TO_PEER_INBOUND, /* same address, inbound port: a local pod not registered yet */
	MB_TO_DNS,          /* 127.0.0.1:DNS port: the pod's proxy answers DNS */
};

/* Who is connecting: gathered once per connect() from the netns and the current task. */
struct mb_caller {
	const struct mb_pod_id *self; /* the calling pod's IPs; NULL while its netns is not registered */
	struct mb_pod_config *pod;    /* its rules (NULL with self, or when the pod list lost it) */
	__u64 netns;
	int proxy_uid; /* runs as the pod's proxy user (--uid-owner) */
	int proxy;     /* ... or its group (--gid-owner) */
	__u32 gid;     /* its group, for the pod's owner-group rule */
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
	c->gid = gid;
}

/* Istio's "-d 127.0.0.1/32" (IPv4: istio-init's ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR) or "-d ::1/128" */
static __always_inline int localhost_dst(const struct mb_caller *c, const union mb_ip *dst)
{
	union mb_ip localhost;

	if (c->pod && c->pod->loopback.prefix && ip_is_v4(dst))
		return cidr_contains(&c->pod->loopback, dst);
	ip_localhost(&localhost, dst);
	return ip_equal(dst, &localhost);
}

/* One of the calling pod's addresses: its IPs, or another address of its namespace's own */
static __always_inline int own_ip(const struct mb_caller *c, const union mb_ip *dst)
{
	const union mb_ip *owner;

	if (!c->self)
		return 0;
	if (ip_equal(&c->self->ip, dst) || (!ip_is_zero(&c->self->ip6) && ip_equal(&c->self->ip6, dst)))
		return 1;
	owner = bpf_map_lookup_elem(&pod_other_ips, (void *)dst);
	return owner && ip_equal(owner, &c->self->ip);
}

/* 127.0.0.6 or ::6: the address Istio's inbound passthrough binds its upstream to */
static __always_inline int inbound_source(const union mb_ip *src)
{
	if (ip_is_v4(src))
		return src->u32[3] == bpf_htonl(MB_INBOUND_SOURCE);
	return src->u32[0] == 0 && src->u32[1] == 0 && src->u32[2] == 0 && src->u32[3] == bpf_htonl(6);
}

/* Istio's ISTIO_OUTPUT_DNS: port 53 to one of the pod's resolvers (any address when they are unknown) */
static __always_inline int dns_captured(const struct mb_settings *cfg, const struct mb_pod_config *pod, const union mb_ip *dst, __u16 dport)
{
	int i;

	if (!cfg->dns_port || !(pod->flags & MB_POD_DNS_CAPTURE) || dport != MB_DNS_SERVER_PORT)
		return 0;
	if (pod->flags & MB_POD_DNS_ALL)
		return 1;
	for (i = 0; i < MB_MAX_DNS; i++) {
		if (i >= pod->n_dns)
			break;
		if (ip_equal(&pod->dns[i], dst))
			return 1;
	}
	return 0;
}

/* Where the kernel refuses a TCP connect (ENETUNREACH), so no packet leaves for Istio's rules to
 * see: multicast, and IPv4's limited broadcast. Sent to the sidecar, it would be accepted and then
 * closed. (A subnet's broadcast address is known to routing only: there the sidecar fails it.) */
static __always_inline int tcp_refused(const union mb_ip *dst)
{
	if (ip_is_v4(dst))
		return (dst->u32[3] & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) || dst->u32[3] == 0xffffffff;
	return (dst->u32[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000);
}

/*
 * Istio's OUTPUT chain for a connect (TCP or UDP) or a datagram (UDP) to dst:dport from a
 * process in a pod (src is the address the socket is bound to, zeros if none). "Over lo" is any
 * destination inside the pod: 127/8, ::1 or its own IPs. D marks what only a pod whose proxy
 * captures DNS has.
 *   --dport <excludeOutboundPorts> (tcp and udp)                  RETURN
 *   -o lo -s 127.0.0.6                                            RETURN (the inbound sidecar's upstream)
 *   -o lo ! -d 127.0.0.1 -p tcp ! --dports 15008[,53 D] --uid-owner P  to the inbound listener
 *                                                                 (127.0.0.1: as below)
 *   -o lo [-p tcp ! --dport 53 D] ! --uid-owner P                 RETURN (not if the include
 *                                                                 ranges name a loopback range)
 *   --uid-owner P                                                 RETURN
 *   the same three for --gid-owner G (the first never exempts 53)
 *   [!] --gid-owner <owner groups>                                RETURN (istio-init's environment)
 *   D: -p tcp|udp --dport 53 -d <resolv.conf servers>            to the DNS port
 *   -d 127.0.0.1 (its ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR)          RETURN
 *   the pod's exclude ranges, include ports and ranges (tcp)      to the outbound listener
 * A proxy's TCP connect to another meshed pod on this node leaves as it is, as under Istio: that
 * pod's own capture (mb_tc_inbound at its interfaces, its PREROUTING) hands it over on arrival, so
 * the wire carries the app's port, which port-based NetworkPolicies match. Only a pod listed but
 * not registered yet has no capture of its own: there the connect goes to its inbound listener
 * from here (fail closed).
 */
static __always_inline enum mb_action decide(struct bpf_sock_addr *ctx, const struct mb_settings *cfg, const struct mb_caller *c,
                                             const union mb_ip *dst, __u16 dport, const union mb_ip *src, int udp)
{
	struct mb_pod_config *peer;
	int to_localhost, dns53, on_lo;

	if (!udp && tcp_refused(dst))
		return MB_LEAVE;
	/* no ip6tables rules at all: its native IPv6 goes out as it is (its proxy listens on IPv4 only) */
	if (c->pod && (c->pod->flags & MB_POD_NO_IPV6) && !ip_is_v4(dst))
		return MB_LEAVE;
	if (c->pod && port_listed(c->pod->out_exclude_ports, c->pod->n_out_exclude_ports, dport))
		return MB_LEAVE;
	to_localhost = localhost_dst(c, dst);
	on_lo = ip_is_loopback(dst) || own_ip(c, dst);
	if (on_lo && inbound_source(src))
		return MB_LEAVE;
	if (udp) /* only ever sent to the DNS port, and never the proxy's own queries */
		return c->pod && !c->proxy && group_captured(c->pod, c->gid) && dns_captured(cfg, c->pod, dst, dport) ? MB_TO_DNS
		                                                                                                      : MB_LEAVE;
	if (on_lo) {
		dns53 = c->pod && (c->pod->flags & MB_POD_DNS_CAPTURE) && dport == MB_DNS_SERVER_PORT;
		/* c->self: only a registered pod's proxy (an unmeshed process may share the uid) */
		if (c->proxy_uid)
			return c->self && !to_localhost && dport != MB_HBONE_PORT && !dns53 ? MB_TO_OWN_INBOUND : MB_LEAVE;
		if (!dns53 && !(c->pod && (c->pod->flags & MB_POD_OUT_LOOPBACK)))
			return MB_LEAVE;
		if (c->proxy)
			return c->self && !to_localhost && dport != MB_HBONE_PORT ? MB_TO_OWN_INBOUND : MB_LEAVE;
		/* an app: on down the chain, as any other destination */
	} else if (c->proxy) {
		if (!c->self || dport == cfg->inbound_port)
			return MB_LEAVE;
		peer = bpf_map_lookup_elem(&local_pod_ips, (void *)dst);
		return peer && !peer->netns && inbound_captured(peer, dport) ? MB_TO_PEER_INBOUND : MB_LEAVE;
	}
	if (c->pod) {
		if (!group_captured(c->pod, c->gid))
			return MB_LEAVE;
		if (dns_captured(cfg, c->pod, dst, dport))
			return MB_TO_DNS;
		if (to_localhost)
			return MB_LEAVE;
		return outbound_captured(c->pod, dst, dport) ? MB_TO_OUTBOUND : MB_LEAVE;
	}
	/* Registered but without rules (the pod list lost it): capture, as the default rules would.
	 * Not registered (yet): only where a sidecar listens, never in the node's own netns, and
	 * never in CNI mode, where every meshed pod is registered before its first container. */
	if (on_lo)
		return MB_LEAVE;
	if (c->self)
		return MB_TO_OUTBOUND;
	if (c->netns == cfg->host_netns || (cfg->flags & MB_SETTINGS_CNI) || !sidecar_listening(ctx, cfg))
		return MB_LEAVE;
	return MB_TO_OUTBOUND;
}

/*
 * Keep the source address Istio's REDIRECT would leave: REDIRECT changes only the destination, after
 * routing chose the source for the original one (the pod's IP for anything outside the pod or its
 * own IP). The connect still goes to localhost, as REDIRECT sends it; an unbound socket is bound
 * to the pod's address first (port 0: the port is picked at connect, as usual). Sockets already
 * bound, loopback destinations and unregistered pods keep what the kernel picks.
 */
static __always_inline void keep_source(struct bpf_sock_addr *ctx, const struct mb_caller *c, const union mb_ip *dst,
                                        const union mb_ip *src)
{
	if (!c->self || !(ip_is_zero(src) || (ip_is_v4(src) && !src->u32[3])) || ip_is_loopback(dst))
		return;
	/* fields set one by one: an initialised struct would become a .rodata map */
	if (ctx->user_family == MB_AF_INET) {
		struct mb_sockaddr_in sa;

		if (!ip_is_v4(&c->self->ip))
			return;
		__builtin_memset(&sa, 0, sizeof(sa));
		sa.family = MB_AF_INET;
		sa.addr = c->self->ip.u32[3];
		bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	} else {
		struct mb_sockaddr_in6 sa6;
		const union mb_ip *own = ip_is_v4(dst) ? &c->self->ip : !ip_is_zero(&c->self->ip6) ? &c->self->ip6 : &c->self->ip;

		/* a v4-mapped destination binds the v4-mapped pod address; native IPv6 the IPv6 one */
		if (ip_is_v4(dst) != ip_is_v4(own))
			return;
		__builtin_memset(&sa6, 0, sizeof(sa6));
		sa6.family = MB_AF_INET6;
		sa6.addr[0] = own->u32[0];
		sa6.addr[1] = own->u32[1];
		sa6.addr[2] = own->u32[2];
		sa6.addr[3] = own->u32[3];
		bpf_bind(ctx, (struct sockaddr *)&sa6, sizeof(sa6));
	}
}

/* Store the original destination, then set where the connect goes instead (`to`, the port in
 * network order). Returns 0 to leave the connect alone, -1 to refuse it. */
static __always_inline int apply(struct bpf_sock_addr *ctx, const struct mb_settings *cfg, const struct mb_caller *c, enum mb_action action,
                                 const union mb_ip *dst, __be16 dport, union mb_ip *to, __be16 *port)
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
	case MB_TO_DNS:
		flags = MB_ORIGIN_DNS;
		ip_localhost(to, dst);
		*port = bpf_htons(cfg->dns_port);
		break;
	default:
		return 0;
	}
	/* without the original destination the sidecar could not forward it, and going direct would
	 * skip the sidecar: the storage is charged to the socket's option memory, which an app can fill
	 * first on purpose. Refused (fail closed), and counted. */
	if (!remember_origin(ctx, dst, dport, flags))
		return -1;
	count(action == MB_TO_OUTBOUND      ? MB_CNT_CONN_OUTBOUND
	      : action == MB_TO_OWN_INBOUND ? MB_CNT_CONN_OWN_INBOUND
	      : action == MB_TO_DNS         ? MB_CNT_DNS_REDIRECTED
	                                    : MB_CNT_CONN_INBOUND,
	      1);
	if (flags & MB_ORIGIN_UNREGISTERED)
		count(MB_CNT_CONN_UNREGISTERED, 1);
	return 1;
}

/*
 * Where the kernel sends a connect() or datagram to the unspecified address: this host. IPv4 (and
 * v4-mapped) goes to the address the socket is bound to, else to 127.0.0.1; native IPv6 to ::1,
 * or to ::ffff:127.0.0.1 from a socket bound to a v4-mapped address. Istio's rules only ever see
 * that packet, so it is decided (and remembered as the original destination) as that address:
 * "0.0.0.0:8080" is the app's own port, not a destination for its outbound sidecar.
 */
static __always_inline void unspecified_to_local(union mb_ip *dst, const union mb_ip *src)
{
	if (ip_is_v4(dst)) {
		if (dst->u32[3])
			return;
		if (ip_is_v4(src) && src->u32[3])
			*dst = *src;
		else
			ip_localhost(dst, dst);
	} else if (ip_is_zero(dst)) {
		if (ip_is_v4(src))
			ip_from_v4(dst, bpf_htonl(0x7f000001));
		else
			ip_localhost(dst, dst);
	}
}

/* Which pod a registered pod's proxy serves, by process, at each of its connects (rewritten or
 * not): written only when it changes, as an LRU update takes a lock and a fresh element on every
 * connect of a busy sidecar, where the lookup alone keeps the entry recent. */
static __always_inline void note_process(const struct mb_caller *c)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct mb_process *known = bpf_map_lookup_elem(&process_ip, &tgid);

	if (!known || known->netns != c->netns || !ip_equal(&known->pod_ip, &c->self->ip)) {
		struct mb_process proc = {.pod_ip = c->self->ip, .netns = c->netns};

		bpf_map_update_elem(&process_ip, &tgid, &proc, BPF_ANY);
	}
}

/* The whole decision for a connect (or, `datagram`, a sendmsg) to dst from a socket bound to src
 * (zeros when unbound): 1 when it is to go to `to`:`port` instead. */
/* 1: send it to `to`:`port`; 0: leave it alone; -1: refuse it (the hook returns 0: EPERM). */
static __always_inline int intercept(struct bpf_sock_addr *ctx, union mb_ip *dst, const union mb_ip *src, union mb_ip *to, __be16 *port,
                                     int datagram)
{
	const struct mb_settings *cfg;
	struct mb_caller c;
	__be16 dport = (__be16)ctx->user_port;
	int udp = ctx->protocol == MB_IPPROTO_UDP;
	enum mb_action action;
	int applied;

	if (ctx->protocol != MB_IPPROTO_TCP && !udp)
		return 0;
	/* a UDP socket connected again elsewhere must not keep answering for its last resolver */
	if (udp && !datagram && ctx->sk)
		bpf_sk_storage_delete(&origin_store, ctx->sk);
	cfg = active_settings();
	if (!cfg)
		return 0;
	unspecified_to_local(dst, src);
	identify(ctx, cfg, &c);
	action = decide(ctx, cfg, &c, dst, bpf_ntohs(dport), src, udp);
	if (!udp && c.proxy && c.self)
		note_process(&c);
	applied = apply(ctx, cfg, &c, action, dst, dport, to, port);
	if (applied <= 0)
		return applied;
	/* bpf_bind exists in connect hooks only: `datagram` is a constant in each program */
	if (!datagram && (action == MB_TO_OUTBOUND || action == MB_TO_OWN_INBOUND))
		keep_source(ctx, &c, dst, src);
	return 1;
}

static __always_inline int intercept4(struct bpf_sock_addr *ctx, int datagram)
{
	union mb_ip dst, src, to;
	__be16 port;
	int verdict;

	ip_from_v4(&dst, ctx->user_ip4);
	ip_from_v4(&src, ctx->sk ? ctx->sk->src_ip4 : 0);
	verdict = intercept(ctx, &dst, &src, &to, &port, datagram);
	if (verdict > 0) {
		ctx->user_ip4 = to.u32[3];
		ctx->user_port = port;
	}
	return verdict >= 0;
}

/* AF_INET6 sockets: native IPv6 destinations, decided as ip6tables' copy of the rules would,
 * and v4-mapped ones (::ffff:a.b.c.d, Java's and .NET's default), which are IPv4 on the wire and
 * run only the IPv6 hooks, decided exactly as IPv4 is. */
static __always_inline int intercept6(struct bpf_sock_addr *ctx, int datagram)
{
	union mb_ip dst, src, to;
	struct bpf_sock *sk = ctx->sk;
	__be16 port;
	int verdict;

	ip_from_v6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	if (sk)
		ip_from_v6(&src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	else
		ip_from_v6(&src, 0, 0, 0, 0);
	verdict = intercept(ctx, &dst, &src, &to, &port, datagram);
	if (verdict > 0)
		set_user_ip6(ctx, &to, port);
	return verdict >= 0;
}

SEC("cgroup/connect4")
int mb_connect4(struct bpf_sock_addr *ctx)
{
	return intercept4(ctx, 0);
}

SEC("cgroup/connect6")
int mb_connect6(struct bpf_sock_addr *ctx)
{
	return intercept6(ctx, 0);
}

/* sendto() on an unconnected UDP socket: glibc's resolver and most stub resolvers use connect(),
 * others (dig, Go's resolver in some modes) send each query with an address. */
SEC("cgroup/sendmsg4")
int mb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return intercept4(ctx, 1);
}

SEC("cgroup/sendmsg6")
int mb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return intercept6(ctx, 1);
}
