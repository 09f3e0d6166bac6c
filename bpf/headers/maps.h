/* maps.h: every map of the datapath, pinned by user space under <bpffs>/maps/<name>. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "types.h"

/* Meshed pods on this node: pod IP -> its rules. Filled by the CLI from the pods list. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union mb_ip);
	__type(value, struct mb_pod_config);
	__uint(max_entries, MB_MAX_PODS);
} local_pod_ips SEC(".maps");

/* Pod identity: netns cookie -> pod IPs, registered by the CLI for each meshed pod it finds on
 * the node, so connect-time programs know the calling pod without learning from traffic. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct mb_pod_id);
	__uint(max_entries, MB_MAX_PODS);
} netns_pod_ips SEC(".maps");

/* The other addresses of a registered pod's namespace (a second network's, as Multus gives it):
 * address -> the pod's IP, or all zeros where pods of separate networks on this node share it.
 * Istio's PREROUTING captures whatever arrives for the pod, whichever of its addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union mb_ip);
	__type(value, union mb_ip);
	__uint(max_entries, MB_MAX_PODS);
} pod_other_ips SEC(".maps");

/* The interfaces registered pods exclude from inbound capture (Istio's excludeInterfaces), by
 * namespace and index, as sync found them: tc is not on them, and the cgroup's guard leaves them
 * alone too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mb_iface);
	__type(value, __u32);
	__uint(max_entries, MB_MAX_PODS);
} inbound_skip SEC(".maps");

/* Original destination of a rewritten connect(), kept with the socket until it is established:
 * socket storage dies with the socket, so a connect that never completes leaks nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mb_origin);
} origin_store SEC(".maps");

/* Established rewritten connections (connecting end's view) -> original destination, read by
 * getsockopt(SO_ORIGINAL_DST). A plain hash, deleted on close: never evicted under churn. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mb_pair);
	__type(value, struct mb_origin);
	__uint(max_entries, MB_MAX_CONNS);
} pair_original_dst SEC(".maps");

/* Connections from elsewhere that tc sent to the inbound listener by rewriting their destination
 * port (a kernel before 6.6 cannot hand a packet to a reuseport listener, and proxies listen with
 * SO_REUSEPORT): the pod's view with no local port and no namespace (pod address, client address
 * and port) -> the original destination. tc rewrites each packet in and its replies back, and
 * getsockopt answers from it. LRU: a closed connection's entry ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mb_pair);
	__type(value, struct mb_origin);
	__uint(max_entries, MB_MAX_CONNS);
} inbound_nat SEC(".maps");

/* The inbound_nat of the datapath this one replaced on maps of its own (another capacity, another
 * version), linked by enable where its entries have the same form: a connection rewritten before
 * keeps its original destination, adopted into inbound_nat at its next packet (nat_find). Kept
 * until the next replacement. Any LRU map of these key and value sizes fits the slot. */
struct nat_inner {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mb_pair);
	__type(value, struct mb_origin);
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 1);
	__array(values, struct nat_inner);
} inbound_nat_prev SEC(".maps");

/* Sockets whose peer is on this node, by their own view; sk_msg redirects to the swapped key.
 * 8-byte values so user space can read socket cookies back. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct mb_pair);
	__type(value, __u64);
	__uint(max_entries, MB_MAX_CONNS);
} sock_pair_map SEC(".maps");

/* Entries of the connection maps each pod holds, by netns cookie; key 0 holds the node's total.
 * LRU: pods that are gone and idle make room for new ones; the total is used on every charge. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct mb_usage);
	__uint(max_entries, 2 * MB_MAX_PODS);
} pod_usage SEC(".maps");

/* The entries of each connection map a pod may always hold (its single entry), written by sync as
 * the pods come and go; not in settings, which only enable and disable write. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} pod_share SEC(".maps");

/* What a socket was charged for in pod_usage, and its peer's key (struct mb_sock_state): sockhash
 * entries leave on close() before the socket's last state change, so the map cannot say it
 * afterwards. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mb_sock_state);
} sock_charges SEC(".maps");

/* Sidecar process (tgid) -> the pod it serves; for people to inspect. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, struct mb_process);
	__uint(max_entries, MB_MAX_PROCESSES);
} process_ip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct mb_settings);
	__uint(max_entries, 1);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, MB_CNT__COUNT);
} counters SEC(".maps");
