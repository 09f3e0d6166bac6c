/* types.h: every struct that crosses the kernel/user boundary. An ABI: src/bpf/layout.ts mirrors
 * each one field by field and test/unit/layout.test.ts checks both against this object's BTF.
 * Never reorder fields; add new ones at the end. */
#pragma once
#include <linux/types.h>
#include "consts.h"

/* A table: its columns (values, comments) are the point. */
/* clang-format off */
/* An address in a 16-byte slot: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), network order. */
union mb_ip {
	__u8 u8[16];
	__u32 u32[4];
};

/* One end's view of a TCP connection: key of sock_pair_map and pair_original_dst. */
struct mb_pair {
	__u64 netns;          /* netns cookie of the socket whose view this is: a 4-tuple may repeat
	                       * across namespaces (loopback, NAT, a pod with NET_ADMIN), a
	                       * (netns, 4-tuple) cannot */
	union mb_ip local_ip;
	union mb_ip remote_ip;
	__be16 local_port;
	__be16 remote_port;
	__u32 pad;
};

/* Where a rewritten connect() was going. */
struct mb_origin {
	union mb_ip ip;
	__be16 port;
	__u16 flags;          /* MB_ORIGIN_* */
	__u32 pid;            /* thread group id that called connect() */
};

struct mb_cidr {
	union mb_ip ip;
	__u8 prefix;          /* over the 128-bit slot: an IPv4 /24 is stored as /120 */
	__u8 pad[3];
};

/* A meshed pod on this node and its interception rules (value of local_pod_ips). Ports host order. */
struct mb_pod_config {
	__u32 flags;          /* MB_POD_* */
	__u8 n_out_include_ports;
	__u8 n_out_exclude_ports;
	__u8 n_in_include_ports;
	__u8 n_in_exclude_ports;
	__u8 n_out_include_cidrs;
	__u8 n_out_exclude_cidrs;
	__u16 pad;
	__u16 out_include_ports[MB_MAX_PORTS];
	__u16 out_exclude_ports[MB_MAX_PORTS];
	__u16 in_include_ports[MB_MAX_PORTS];
	__u16 in_exclude_ports[MB_MAX_PORTS];
	struct mb_cidr out_include_cidrs[MB_MAX_CIDRS];
	struct mb_cidr out_exclude_cidrs[MB_MAX_CIDRS];
	__u32 proxy_uid;      /* the pod's proxy runs as this user and group (its spec, default */
	__u32 proxy_gid;      /* the mesh's 1337): Istio's --uid-owner / --gid-owner */
	__u8 n_dns;
	__u8 pad2[3];
	union mb_ip dns[MB_MAX_DNS]; /* the pod's resolv.conf nameservers, when MB_POD_DNS_CAPTURE */
	__u64 netns;          /* the pod's netns cookie once registered, else 0: whose sockets may
	                       * use its addresses in pair keys */
	struct mb_cidr loopback; /* istio-init's ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (prefix 0: 127.0.0.1/32):
	                          * the IPv4 destinations its "-d <it> -j RETURN" rules name */
	__u8 n_owner_groups;
	__u8 pad3[3];
	__u32 owner_groups[MB_MAX_GROUPS]; /* ISTIO_OUTBOUND_OWNER_GROUPS (with MB_POD_GROUPS_ONLY): only
	                                    * these groups' outbound is captured; else
	                                    * ..._EXCLUDE: these groups' is not */
};

/* A registered pod's addresses (value of netns_pod_ips): ip6 is all zeros for a single-stack pod. */
struct mb_pod_id {
	union mb_ip ip;
	union mb_ip ip6;
};

/* What sockops leaves on a socket it charged for map entries (value of sock_charges): the
 * charges, given back at close, and for a socket in sock_pair_map its peer's key, worked out once
 * at establishment instead of for every message (the addresses, the peer's namespace). */
struct mb_sock_state {
	__u32 charged;  /* MB_CHARGE_* */
	__u32 has_peer; /* MB_PEER_*: peer is set, and sk_msg may move data to it */
	struct mb_pair peer;
};

/* A sidecar process seen connecting, and the pod it serves (value of process_ip). */
struct mb_process {
	union mb_ip pod_ip;
	__u64 netns;
};

/* The mesh profile and switches, written by the CLI (the single entry of settings). */
struct mb_settings {
	__u32 sidecar_uid;
	__u32 sidecar_gid;
	__u16 outbound_port;  /* host order; 0 means not configured: every program stays out of the way */
	__u16 inbound_port;
	__u32 flags;          /* MB_SETTINGS_* */
	__u64 host_netns;     /* the node's own netns cookie: never treated as a pod */
	__u16 dns_port;       /* host order; the proxy's DNS listener (Istio's agent: 15053), 0 for none */
	__u16 pad;
	__u32 pad2;
};

/* Entries a pod holds in the connection maps (value of pod_usage; key 0 holds the node's total).
 * Signed: a count that went below zero (its entry was evicted and made again) reads as zero. */
struct mb_usage {
	__s64 sockets;        /* in sock_pair_map (64 bits: the one atomic add every BPF CPU version has) */
	__s64 origins;        /* in pair_original_dst */
};

/* sockaddr_in6 as IP6T_SO_ORIGINAL_DST returns it. */
struct mb_sockaddr_in6 {
	__u16 family;
	__be16 port;
	__be32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

/* sockaddr_in as SO_ORIGINAL_DST returns it. */
struct mb_sockaddr_in {
	__u16 family;
	__be16 port;
	__be32 addr;
	__u8 zero[8];
};

/* An interface of a registered pod's namespace that inbound capture stays off (key of inbound_skip). */
struct mb_iface {
	__u64 netns;          /* netns cookie */
	__u32 ifindex;
	__u32 pad;
};

/* A socket of sock_pair_map and what sk_msg moved to it unread (record of bpf/iter/sockhash-queued). */
struct mb_queued {
	struct mb_pair key;
	__u32 queued;         /* bytes not read yet; 1 when only the queue's shape tells there are some */
	__u32 pad;
};
/* clang-format on */
