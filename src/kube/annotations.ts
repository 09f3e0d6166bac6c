import {type Cidr, parseCidr} from '../bpf/ip.js'
import {MAX_CIDRS, MAX_PORTS, type PodRules} from '../bpf/layout.js'
import type {MeshProfile} from '../mesh/profiles.js'

export const ANNOTATIONS = {
  includeOutboundIPRanges: 'traffic.sidecar.istio.io/includeOutboundIPRanges',
  excludeOutboundIPRanges: 'traffic.sidecar.istio.io/excludeOutboundIPRanges',
  includeOutboundPorts: 'traffic.sidecar.istio.io/includeOutboundPorts',
  excludeOutboundPorts: 'traffic.sidecar.istio.io/excludeOutboundPorts',
  includeInboundPorts: 'traffic.sidecar.istio.io/includeInboundPorts',
  excludeInboundPorts: 'traffic.sidecar.istio.io/excludeInboundPorts',
  statusPort: 'status.sidecar.istio.io/port',
} as const

function entries(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter(Boolean)
}

function parsePort(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined
  const n = Number(text)
  return n >= 1 && n <= 65535 ? n : undefined
}

/**
 * Istio's traffic annotations as datapath rules. A bad entry is dropped with a warning; a list
 * longer than the datapath holds is cut with a warning. Where dropping could widen capture (an
 * include list left empty by bad entries), the rule captures nothing rather than everything.
 */
export function rulesFromAnnotations(annotations: Record<string, string>, mesh: MeshProfile): {rules: PodRules; warnings: string[]} {
  const warnings: string[] = []
  const warn = (key: string, msg: string) => warnings.push(`${key}: ${msg}`)

  const ports = (key: string, limit: number): number[] | undefined => {
    const raw = annotations[key]
    if (raw === undefined) return undefined
    const out: number[] = []
    for (const e of entries(raw)) {
      const p = parsePort(e)
      if (p === undefined) warn(key, `'${e}' is not a port (1-65535); ignored`)
      else if (!out.includes(p)) out.push(p)
    }
    if (out.length > limit) {
      warn(key, `${out.length} ports, the datapath holds ${limit}; the rest are ignored`)
      out.length = limit
    }
    return out
  }

  const cidrs = (key: string): Cidr[] | undefined => {
    const raw = annotations[key]
    if (raw === undefined) return undefined
    const out: Cidr[] = []
    for (const e of entries(raw)) {
      const c = parseCidr(e)
      if (!c) warn(key, `'${e}' is not a CIDR; ignored`)
      else out.push(c)
    }
    if (out.length > MAX_CIDRS) {
      warn(key, `${out.length} ranges, the datapath holds ${MAX_CIDRS}; the rest are ignored`)
      out.length = MAX_CIDRS
    }
    return out
  }

  // includeOutboundIPRanges: absent or '*' = all; '' = none.
  const includeRanges = annotations[ANNOTATIONS.includeOutboundIPRanges]
  const outAllCidrs = includeRanges === undefined || entries(includeRanges).includes('*')
  const outIncludeCidrs = outAllCidrs ? [] : cidrs(ANNOTATIONS.includeOutboundIPRanges) ?? []

  const includeIn = annotations[ANNOTATIONS.includeInboundPorts]
  const inAllPorts = includeIn === undefined || entries(includeIn).includes('*')
  const inIncludePorts = inAllPorts ? [] : ports(ANNOTATIONS.includeInboundPorts, MAX_PORTS) ?? []

  // The mesh's own ports and the status port are never captured inbound.
  const reserved = [...mesh.reservedInboundPorts]
  const status = annotations[ANNOTATIONS.statusPort]
  if (status !== undefined) {
    const p = parsePort(status.trim())
    if (p === undefined) warn(ANNOTATIONS.statusPort, `'${status}' is not a port; ignored`)
    else if (!reserved.includes(p)) reserved.push(p)
  }
  const userInExclude = ports(ANNOTATIONS.excludeInboundPorts, MAX_PORTS - reserved.length) ?? []
  const inExcludePorts = [...reserved, ...userInExclude.filter((p) => !reserved.includes(p))]

  return {
    rules: {
      outAllCidrs,
      inAllPorts,
      outIncludeCidrs,
      outExcludeCidrs: cidrs(ANNOTATIONS.excludeOutboundIPRanges) ?? [],
      outIncludePorts: ports(ANNOTATIONS.includeOutboundPorts, MAX_PORTS) ?? [],
      outExcludePorts: ports(ANNOTATIONS.excludeOutboundPorts, MAX_PORTS) ?? [],
      inIncludePorts,
      inExcludePorts,
    },
    warnings,
  }
}
