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
  excludeInterfaces: 'traffic.sidecar.istio.io/excludeInterfaces',
  rerouteVirtualInterfaces: 'istio.io/reroute-virtual-interfaces',
  /** the deprecated name, read only when the one above is absent (as Istio does) */
  kubevirtInterfaces: 'traffic.sidecar.istio.io/kubevirtInterfaces',
} as const

function entries(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
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
  const list = <T>(
    key: string,
    parse: (e: string) => T | undefined,
    what: string,
    limit: number,
    include: boolean,
    known: (v: T) => boolean = () => false,
  ): {items: T[]; whole: boolean} | undefined => {
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
      // already in the rules (the mesh's own ports, which istio-init's -d lists too): no slot taken
      if (seen.has(key) || known(v)) continue
      seen.add(key)
      items.push(v)
    }
    const consequence = include ? 'capturing all of it instead (fail closed)' : 'ignored, so more is captured'
    if (badCount > 0)
      warn(
        key,
        `${badCount} entr${badCount === 1 ? 'y is' : 'ies are'} not ${what} (${bad.map((b) => `'${printable(b)}'`).join(', ')}${badCount > 3 ? ', ...' : ''}); ${consequence}`,
      )
    const fits = items.length <= limit
    if (!fits) {
      warn(
        key,
        `${items.length} entries, the datapath holds ${limit}; ${include ? consequence : 'the rest are ignored, so more is captured'}`,
      )
      items.length = limit
    }
    return {items, whole: badCount === 0 && fits}
  }
  const ports = (key: string, limit: number, include = false, known?: (p: number) => boolean) =>
    list(key, parsePort, 'a port (1-65535)', limit, include, known)
  const cidrs = (key: string, include = false) => list(key, parseCidr, 'a CIDR', MAX_CIDRS, include)

  // includeOutboundIPRanges: absent or '*' = all; '' = none; one that cannot be honoured whole = all.
  const includeRanges = annotations[ANNOTATIONS.includeOutboundIPRanges]
  const starRanges = includeRanges === undefined || entries(includeRanges).includes('*')
  const includedRanges = starRanges ? undefined : cidrs(ANNOTATIONS.includeOutboundIPRanges, true)
  // an included port is captured whatever its address: one left out could escape
  const includedOutPorts = ports(ANNOTATIONS.includeOutboundPorts, MAX_PORTS, true)
  const outAllCidrs = starRanges || includedRanges?.whole === false || includedOutPorts?.whole === false
  const outIncludeCidrs = outAllCidrs ? [] : (includedRanges?.items ?? [])

  const includeIn = annotations[ANNOTATIONS.includeInboundPorts]
  const starIn = includeIn === undefined || entries(includeIn).includes('*')
  const includedIn = starIn ? undefined : ports(ANNOTATIONS.includeInboundPorts, MAX_PORTS, true)
  const inAllPorts = starIn || includedIn?.whole === false
  const inIncludePorts = inAllPorts ? [] : (includedIn?.items ?? [])

  // The mesh's own ports and the status port are never captured inbound.
  const reserved = [...mesh.reservedInboundPorts]
  const status = annotations[ANNOTATIONS.statusPort]
  if (status !== undefined) {
    const p = parsePort(status.trim())
    if (p === undefined) warn(ANNOTATIONS.statusPort, `'${printable(status)}' is not a port; ignored`)
    else if (!reserved.includes(p)) reserved.push(p)
  }
  // istio-iptables reads the excluded ports only with '*': a listed port is captured even where
  // the pod also excludes it; only the tunnel port returns first either way
  const userInExclude = inAllPorts
    ? (ports(ANNOTATIONS.excludeInboundPorts, MAX_PORTS - reserved.length, false, (p) => reserved.includes(p))?.items ?? [])
    : []
  const inExcludePorts = inAllPorts ? [...reserved, ...userInExclude] : [mesh.tunnelPort]

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

/** A network interface name as Istio accepts one (at most 15 characters). */
const INTERFACE_NAME = /^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$/

/**
 * Interfaces Istio's PREROUTING treats apart. excludeInterfaces (`-i IF -j RETURN`): nothing
 * arriving there is captured, so merbridge keeps its inbound capture off them. A virtual machine's
 * interfaces (reroute-virtual-interfaces, or the deprecated kubevirtInterfaces): what the machine
 * sends through them goes to the outbound listener. merbridge does not see forwarded traffic, and
 * keeps its inbound capture on them (a connection to the pod's own address still passes the
 * sidecar: fail closed; where istio-init's rules are installed their REDIRECT takes it first).
 * What merbridge cannot match is a warning each.
 */
export function interfacesFromAnnotations(annotations: Record<string, string>): {noInboundCapture: string[]; warnings: string[]} {
  const warnings: string[] = []
  const names = (key: string): string[] => {
    const raw = annotations[key]
    if (raw === undefined) return []
    const all = entries(raw)
    const bad = all.filter((e) => !INTERFACE_NAME.test(e))
    // istio-init would refuse such a pod; merbridge keeps its capture on anything not named well
    if (bad.length > 0)
      warnings.push(
        `${key}: ${bad.length} entr${bad.length === 1 ? 'y is' : 'ies are'} not an interface name (${bad
          .slice(0, 3)
          .map((b) => `'${printable(b, 40)}'`)
          .join(', ')}${bad.length > 3 ? ', ...' : ''}); ignored, so more is captured`,
      )
    return [...new Set(all.filter((e) => INTERFACE_NAME.test(e)))]
  }
  const excluded = names(ANNOTATIONS.excludeInterfaces)
  const virtualKey =
    annotations[ANNOTATIONS.rerouteVirtualInterfaces] !== undefined ? ANNOTATIONS.rerouteVirtualInterfaces : ANNOTATIONS.kubevirtInterfaces
  const virtual = names(virtualKey)
  if (excluded.length > 0)
    warnings.push(
      `${ANNOTATIONS.excludeInterfaces}: inbound on ${excluded.join(', ')} is left alone, as Istio does; outbound connections routed through ${excluded.length === 1 ? 'it' : 'them'} still go to the sidecar (merbridge decides at connect(), before the route is known)`,
    )
  if (virtual.length > 0)
    warnings.push(
      `${virtualKey}: TCP the virtual machine sends through ${virtual.join(', ')} is captured only by istio-init's rules, which send it to the outbound listener; merbridge does not see forwarded traffic, and sends only its connections to the pod's own address through the inbound listener`,
    )
  return {noInboundCapture: excluded, warnings}
}
