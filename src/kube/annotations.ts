import {parseCidr} from '../bpf/ip.js'
import {MAX_CIDRS, MAX_PORTS, type PodRules} from '../bpf/layout.js'
import type {MeshProfile} from '../mesh/profiles.js'
import {printable} from '../text.js'

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

/** The rules annotations decide; the proxy's ids come from the pod spec. */
export type TrafficRules = Omit<PodRules, 'proxyUid' | 'proxyGid' | 'dns'>

/**
 * Istio's traffic annotations as datapath rules, failing closed: the datapath never captures less
 * than Istio's rules would. A bad entry or a list longer than the datapath holds is one warning;
 * dropping from an exclude list captures more, and an include list that cannot be honoured
 * whole (istio-init would refuse the pod) becomes "capture all".
 */
export function rulesFromAnnotations(annotations: Record<string, string>, mesh: MeshProfile): {rules: TrafficRules; warnings: string[]} {
  const warnings: string[] = []
  const warn = (key: string, msg: string) => warnings.push(`${key}: ${msg}`)

  /** A list as far as it can be honoured: `whole` is false when an entry was bad or did not fit. */
  const list = <T>(key: string, parse: (e: string) => T | undefined, what: string, limit: number, include: boolean): {items: T[]; whole: boolean} | undefined => {
    const raw = annotations[key]
    if (raw === undefined) return undefined
    const items: T[] = []
    const seen = new Set<string>() // linear in the entries, however many a hostile pod lists
    const bad: string[] = []
    let badCount = 0
    for (const e of entries(raw)) {
      const v = parse(e)
      if (v === undefined) {
        badCount++
        if (bad.length < 3) bad.push(e)
        continue
      }
      const key = JSON.stringify(v)
      if (seen.has(key)) continue
      seen.add(key)
      items.push(v)
    }
    const consequence = include ? 'capturing all of it instead (fail closed)' : 'ignored, so more is captured'
    if (badCount > 0) warn(key, `${badCount} entr${badCount === 1 ? 'y is' : 'ies are'} not ${what} (${bad.map((b) => `'${printable(b)}'`).join(', ')}${badCount > 3 ? ', ...' : ''}); ${consequence}`)
    const fits = items.length <= limit
    if (!fits) {
      warn(key, `${items.length} entries, the datapath holds ${limit}; ${include ? consequence : 'the rest are ignored, so more is captured'}`)
      items.length = limit
    }
    return {items, whole: badCount === 0 && fits}
  }
  const ports = (key: string, limit: number, include = false) => list(key, parsePort, 'a port (1-65535)', limit, include)
  const cidrs = (key: string, include = false) => list(key, parseCidr, 'a CIDR', MAX_CIDRS, include)

  // includeOutboundIPRanges: absent or '*' = all; '' = none; one that cannot be honoured whole = all.
  const includeRanges = annotations[ANNOTATIONS.includeOutboundIPRanges]
  const starRanges = includeRanges === undefined || entries(includeRanges).includes('*')
  const includedRanges = starRanges ? undefined : cidrs(ANNOTATIONS.includeOutboundIPRanges, true)
  // an included port is captured whatever its address: one left out could escape
  const includedOutPorts = ports(ANNOTATIONS.includeOutboundPorts, MAX_PORTS, true)
  const outAllCidrs = starRanges || includedRanges?.whole === false || includedOutPorts?.whole === false
  const outIncludeCidrs = outAllCidrs ? [] : includedRanges?.items ?? []

  const includeIn = annotations[ANNOTATIONS.includeInboundPorts]
  const starIn = includeIn === undefined || entries(includeIn).includes('*')
  const includedIn = starIn ? undefined : ports(ANNOTATIONS.includeInboundPorts, MAX_PORTS, true)
  const inAllPorts = starIn || includedIn?.whole === false
  const inIncludePorts = inAllPorts ? [] : includedIn?.items ?? []

  // The mesh's own ports and the status port are never captured inbound.
  const reserved = [...mesh.reservedInboundPorts]
  const status = annotations[ANNOTATIONS.statusPort]
  if (status !== undefined) {
    const p = parsePort(status.trim())
    if (p === undefined) warn(ANNOTATIONS.statusPort, `'${printable(status)}' is not a port; ignored`)
    else if (!reserved.includes(p)) reserved.push(p)
  }
  const userInExclude = ports(ANNOTATIONS.excludeInboundPorts, MAX_PORTS - reserved.length)?.items ?? []
  const inExcludePorts = [...reserved, ...userInExclude.filter((p) => !reserved.includes(p))]

  return {
    rules: {
      outAllCidrs,
      inAllPorts,
      outIncludeCidrs,
      outExcludeCidrs: cidrs(ANNOTATIONS.excludeOutboundIPRanges)?.items ?? [],
      outIncludePorts: includedOutPorts?.items ?? [],
      outExcludePorts: ports(ANNOTATIONS.excludeOutboundPorts, MAX_PORTS)?.items ?? [],
      inIncludePorts,
      inExcludePorts,
    },
    warnings,
  }
}
