/** Kernel features the datapath uses, checked against `bpftool feature probe kernel -j`. */
export const REQUIRED_PROG_TYPES = ['sock_ops', 'sk_msg', 'cgroup_sock_addr', 'cgroup_sockopt', 'sched_cls', 'cgroup_skb'] as const
export const REQUIRED_MAP_TYPES = ['sockhash', 'sk_storage', 'lru_hash', 'percpu_array'] as const
/** program type -> helpers its program calls */
export const REQUIRED_HELPERS: Record<string, string[]> = {
  cgroup_sock_addr: [
    'bpf_get_netns_cookie',
    'bpf_sk_lookup_tcp',
    'bpf_sk_release',
    'bpf_sk_storage_get',
    'bpf_sk_storage_delete',
    'bpf_get_current_uid_gid',
    'bpf_bind',
  ],
  sock_ops: ['bpf_sock_hash_update', 'bpf_get_netns_cookie', 'bpf_sk_storage_get', 'bpf_sock_ops_cb_flags_set'],
  sk_msg: ['bpf_msg_redirect_hash', 'bpf_get_netns_cookie'],
  cgroup_sockopt: ['bpf_get_netns_cookie', 'bpf_get_current_uid_gid'],
  // inbound capture (tc ingress)
  sched_cls: [
    'bpf_skc_lookup_tcp',
    'bpf_sk_lookup_tcp',
    'bpf_sk_release',
    'bpf_sk_assign',
    'bpf_skb_load_bytes_relative',
    'bpf_fib_lookup',
    'bpf_tcp_check_syncookie',
  ],
  // its backstop (cgroup ingress)
  cgroup_skb: ['bpf_skb_load_bytes_relative', 'bpf_sk_lookup_tcp', 'bpf_sk_release', 'bpf_skc_to_tcp_sock'],
}

export interface FeatureReport {
  missing: string[]
  checked: number
}

export interface FeatureProbe {
  program_types?: Record<string, boolean>
  map_types?: Record<string, boolean>
  helpers?: Record<string, string[]>
}

/** Which required program types, map types and helpers the probe did not find. */
export function missingFeatures(probe: unknown): FeatureReport {
  const p = (probe ?? {}) as FeatureProbe
  const missing: string[] = []
  let checked = 0
  for (const t of REQUIRED_PROG_TYPES) {
    checked++
    if (p.program_types?.[`have_${t}_prog_type`] !== true) missing.push(`program type ${t}`)
  }
  for (const t of REQUIRED_MAP_TYPES) {
    checked++
    if (p.map_types?.[`have_${t}_map_type`] !== true) missing.push(`map type ${t}`)
  }
  for (const [type, helpers] of Object.entries(REQUIRED_HELPERS)) {
    const available = new Set(p.helpers?.[`${type}_available_helpers`] ?? [])
    for (const h of helpers) {
      checked++
      if (!available.has(h)) missing.push(`helper ${h} in ${type}`)
    }
  }
  return {missing, checked}
}
