/* consts.h: numbers the datapath shares with user space (src/bpf/layout.ts mirrors them). */
#pragma once

/* A table: its columns (values, comments) are the point. */
/* clang-format off */
/* Map capacities. */
#define MB_MAX_PODS          4096   /* pods on one node (kubelet's default maximum is 110) */
#ifndef MB_MAX_CONNS   /* enable --max-connections builds with -DMB_MAX_CONNS=N */
#define MB_MAX_CONNS        65535   /* concurrently tracked local sockets and connections */
#endif
#define MB_MAX_PROCESSES     4096   /* sidecar processes remembered in process_ip */
/* Past this many entries in a connection map, a pod takes more only within its pod_share: a
 * quarter of each map is kept for pods under their share (sync divides it among the pods) */
#define MB_SHARED_CONNS   (MB_MAX_CONNS - MB_MAX_CONNS / 4)

/* Per-pod rule lists; the CLI refuses (with a warning) annotations with more entries. */
#define MB_MAX_PORTS   16
#define MB_MAX_CIDRS    8
#define MB_MAX_DNS      4   /* resolv.conf nameservers (glibc reads 3) */
#define MB_MAX_GROUPS  16   /* istio-init's owner groups (Istio takes up to 64 included) */

/* struct mb_pod_config.flags */
#define MB_POD_OUT_ALL_CIDRS  (1u << 0)  /* includeOutboundIPRanges is '*' */
#define MB_POD_IN_ALL_PORTS   (1u << 1)  /* includeInboundPorts is '*' */
#define MB_POD_DNS_CAPTURE    (1u << 2)  /* the proxy captures DNS (ISTIO_META_DNS_CAPTURE) */
#define MB_POD_DNS_ALL        (1u << 3)  /* ... to any address: the pod's resolvers are unknown (fail closed) */
#define MB_POD_OUT_LOOPBACK   (1u << 4)  /* includeOutboundIPRanges names a loopback range: Istio then
                                          * drops its "app over lo goes direct" rules */
#define MB_POD_NO_IPV6        (1u << 5)  /* Istio installed no ip6tables rules (a dual-stack pod without
                                          * ISTIO_DUAL_STACK): its native IPv6 is not captured */
#define MB_POD_GROUPS_ONLY    (1u << 6)  /* owner_groups lists the only groups whose outbound is
                                          * captured (without it, the groups whose is not) */

/* struct mb_settings.flags */
#define MB_SETTINGS_DRAINING  (1u << 0)  /* disable in progress: stop rewriting and redirecting */
#define MB_SETTINGS_INBOUND_REWRITE (1u << 1) /* tc rewrites ports for every connection it hands over, as
                                               * it does where the kernel cannot hand one to a listener
                                               * (MERBRIDGE_WITHOUT=reuseport-assign: the tests' switch) */
#define MB_SETTINGS_CNI       (1u << 2)  /* CNI mode: the runtime registers every meshed pod before it
                                          * starts, so a namespace not registered is no pod's: no
                                          * guess from what listens in it */

/* struct mb_charge bits: what a socket holds entries of, so they are given back when it closes */
#define MB_CHARGE_SOCKET      (1u << 0)
#define MB_CHARGE_ORIGIN      (1u << 1)

/* mb_sock_state.has_peer: whether sk_msg may move this socket's data to its peer */
#define MB_PEER_NONE     0 /* no: no peer key, or some of its data already took TCP */
#define MB_PEER_UNSEEN   1 /* yes, if nothing went over TCP before its first message */
#define MB_PEER_MOVING   2 /* yes: its data so far was all moved */

/* struct mb_origin.flags: why a connection was rewritten */
#define MB_ORIGIN_OUTBOUND    (1u << 0)  /* app -> its sidecar's outbound port */
#define MB_ORIGIN_INBOUND     (1u << 1)  /* sidecar -> another local pod's inbound port */
#define MB_ORIGIN_UNREGISTERED (1u << 2) /* pod not registered yet; a sidecar was found listening */
#define MB_ORIGIN_OWN_POD     (1u << 3)  /* sidecar -> its own pod, sent to its own inbound port */
#define MB_ORIGIN_DNS         (1u << 4)  /* app -> a resolver, sent to its proxy's DNS port */

/* Indexes of the per-CPU counters array. */
enum mb_counter {
	MB_CNT_CONN_OUTBOUND = 0,     /* connects sent to the local sidecar's outbound port */
	MB_CNT_CONN_INBOUND,          /* sidecar connects sent to the inbound port of a local pod not registered yet */
	MB_CNT_CONN_UNREGISTERED,     /* of the outbound ones, from pods not registered yet */
	MB_CNT_MSG_REDIRECTED,        /* sendmsg calls moved socket to socket */
	MB_CNT_BYTES_REDIRECTED,      /* bytes of those */
	MB_CNT_REDIRECT_MISS,         /* tracked sockets left on TCP: peer not tracked at a send, or TCP used first */
	MB_CNT_GETSOCKOPT_ANSWERED,   /* SO_ORIGINAL_DST answered from pair_original_dst */
	MB_CNT_SOCKHASH_FULL,         /* sockets left on TCP because sock_pair_map refused them */
	MB_CNT_ORIGIN_LOST,           /* rewrites whose original destination could not be stored */
	MB_CNT_CONN_OWN_INBOUND,      /* sidecar connects to its own pod sent to its inbound port */
	MB_CNT_INBOUND_ASSIGNED,      /* packets from elsewhere handed to the pod's inbound listener */
	MB_CNT_INBOUND_NO_LISTENER,   /* packets to a captured port dropped: no inbound listener (fail closed) */
	MB_CNT_DNS_REDIRECTED,        /* DNS connects and datagrams sent to the proxy's DNS port */
	MB_CNT_DNS_REPLY_RESTORED,    /* replies from the DNS port shown as coming from the resolver */
	MB_CNT_INBOUND_UNPARSED,      /* TCP to a meshed pod's listener dropped: its header not found (fail closed) */
	MB_CNT_SOCKET_OVER_SHARE,     /* sockets left on TCP: their pod was over its share of a busy sock_pair_map */
	MB_CNT_ORIGIN_OVER_SHARE,     /* original destinations refused: their pod was over its share of a busy pair_original_dst */
	MB_CNT_INBOUND_UNCOVERED,     /* SYNs to a captured port dropped at an app's listener: they came in where
	                               * tc is not, or in fragments (fail closed) */
	MB_CNT_INBOUND_REWRITTEN,     /* connections from elsewhere sent to the inbound listener by rewriting their
	                               * port (the kernel refused to hand them to a reuseport listener: before 6.6) */
	MB_CNT_INBOUND_REOPENED,      /* SYNs reopening a 4-tuple still in TIME_WAIT, sent to the inbound listener
	                               * by rewriting their port */
	MB_CNT__COUNT,
};

/* Kernel numbers not worth pulling libc headers into a BPF build for. */
#define MB_AF_INET          2
#define MB_AF_INET6        10
#define MB_IPPROTO_TCP      6
#define MB_IPPROTO_UDP     17
#define MB_DNS_SERVER_PORT 53
#define MB_ETH_P_IP    0x0800
#define MB_ETH_HLEN    14
#define MB_ESOCKTNOSUPPORT 94
#define MB_HBONE_PORT   15008  /* Istio's tunnel port: never sent back to the inbound listener */
#define MB_INBOUND_SOURCE 0x7f000006  /* 127.0.0.6: the inbound sidecar's upstream source (::6 in IPv6) */
#define MB_ETH_P_IPV6  0x86DD
#define MB_IPV6_HOPOPTS     0  /* IPv6 extension headers walked on the way to TCP */
#define MB_IPV6_ROUTING    43
#define MB_IPV6_FRAGMENT   44
#define MB_IPV6_AUTH       51
#define MB_IPV6_DSTOPTS    60
#define MB_SOL_IPV6        41
#define MB_IP6T_SO_ORIGINAL_DST 80
#define MB_SOL_IP           0
#define MB_SO_ORIGINAL_DST 80
#define MB_TCP_CLOSE        7
#define MB_LOOPBACK_IFINDEX 1  /* lo, the first device of every network namespace */
/* clang-format on */
