/**
 * What the object in bpf/ holds: its programs, how each is attached, and its maps. The object
 * must pin exactly these (test/kernel/layout.test.ts), so an installation can tell its own pins
 * from anything else's.
 */

/**
 * How each program is attached: to the cgroup, (sk_msg) to the sockhash, or (tc) to the ingress
 * of each registered pod's interfaces, by the sync that registers the pod.
 */
export interface ProgramSpec {
  name: string
  /** bpftool's attach type argument */
  attachType: string
  /** the kernel's name for that attach type, as `bpftool cgroup show` prints it */
  kernelAttachType: string
  target: 'cgroup' | 'sock_pair_map' | 'pods'
}

/** In attach order: the listeners of events first, the connect hooks (which start rewriting) last. */
export const PROGRAMS: ProgramSpec[] = [
  {name: 'mb_msg_redirect', attachType: 'msg_verdict', kernelAttachType: 'sk_msg_verdict', target: 'sock_pair_map'},
  {name: 'mb_getsockopt', attachType: 'getsockopt', kernelAttachType: 'cgroup_getsockopt', target: 'cgroup'},
  {name: 'mb_sockops', attachType: 'sock_ops', kernelAttachType: 'cgroup_sock_ops', target: 'cgroup'},
  {name: 'mb_tc_inbound', attachType: 'tc_ingress', kernelAttachType: 'tc_ingress', target: 'pods'},
  // after tc: it drops what tc would have handed over but did not see
  {name: 'mb_inbound_guard', attachType: 'ingress', kernelAttachType: 'cgroup_inet_ingress', target: 'cgroup'},
  {name: 'mb_recvmsg6', attachType: 'recvmsg6', kernelAttachType: 'cgroup_udp6_recvmsg', target: 'cgroup'},
  {name: 'mb_recvmsg4', attachType: 'recvmsg4', kernelAttachType: 'cgroup_udp4_recvmsg', target: 'cgroup'},
  {name: 'mb_getpeername6', attachType: 'getpeername6', kernelAttachType: 'cgroup_inet6_getpeername', target: 'cgroup'},
  {name: 'mb_getpeername4', attachType: 'getpeername4', kernelAttachType: 'cgroup_inet4_getpeername', target: 'cgroup'},
  {name: 'mb_sendmsg6', attachType: 'sendmsg6', kernelAttachType: 'cgroup_udp6_sendmsg', target: 'cgroup'},
  {name: 'mb_sendmsg4', attachType: 'sendmsg4', kernelAttachType: 'cgroup_udp4_sendmsg', target: 'cgroup'},
  {name: 'mb_connect6', attachType: 'connect6', kernelAttachType: 'cgroup_inet6_connect', target: 'cgroup'},
  {name: 'mb_connect4', attachType: 'connect4', kernelAttachType: 'cgroup_inet4_connect', target: 'cgroup'},
]

export const MAP_NAMES = [
  'local_pod_ips',
  'netns_pod_ips',
  'pair_original_dst',
  'sock_pair_map',
  'process_ip',
  'settings',
  'counters',
  'origin_store',
  'pod_usage',
  'pod_share',
  'sock_charges',
  'pod_other_ips',
  'inbound_skip',
  'inbound_nat',
  'inbound_nat_prev',
] as const
export type MapName = (typeof MAP_NAMES)[number]

/** Where each map of one installation is pinned: what map readers and writers need of it. */
export interface MapPins {
  map(name: MapName): string
}
