/**
 * The rules istio-init installs in a sidecar-injected pod (the baseline merbridge replaces), as
 * iptables-restore input, in the order Istio's istio-iptables writes them for the options the
 * lab uses (REDIRECT mode, IPv4 and IPv6, DNS capture). Only ever applied inside the lab's own
 * network namespaces.
 */
import type {MeshProfile} from '../mesh/profiles.js'

/** The istio-iptables options a pod's annotations and spec give (the injector's translation). */
export interface IstioCaptureOptions {
  /** --proxy-uid / --proxy-gid: lists, as istio-iptables takes them */
  proxyUids: number[]
  proxyGids: number[]
  /** -b: '*' or a list of ports */
  inboundPorts: '*' | number[]
  /** -d: the mesh's own ports, the status port and the pod's excludeInboundPorts */
  excludeInboundPorts: number[]
  /** -i: '*' or a list of CIDRs */
  outboundCidrs: '*' | string[]
  /** -x */
  excludeOutboundCidrs: string[]
  /** -o */
  excludeOutboundPorts: number[]
  /** -q */
  includeOutboundPorts: number[]
  /** --redirect-dns (ISTIO_META_DNS_CAPTURE) with the resolv.conf servers istio-init read */
  dnsServers?: string[]
  /** --capture-all-dns: port 53 to any address (what Istio's CNI sets with DNS capture) */
  captureAllDns?: boolean
  /** -c (excludeInterfaces) */
  excludeInterfaces?: string[]
  /** -k (reroute-virtual-interfaces): what a virtual machine sends through them goes to the outbound listener */
  virtualInterfaces?: string[]
  /** ISTIO_OUTBOUND_OWNER_GROUPS and ..._EXCLUDE (istio-init's environment), as given ('*' and '' when unset) */
  ownerGroups?: {include: string; exclude: string}
  /** ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (istio-init's environment; 127.0.0.1/32 when unset) */
  loopbackCidr?: string
}

export function defaultCaptureOptions(mesh: MeshProfile): IstioCaptureOptions {
  return {
    proxyUids: [mesh.sidecarUid],
    proxyGids: [mesh.sidecarGid],
    inboundPorts: '*',
    excludeInboundPorts: mesh.reservedInboundPorts.filter((p) => p !== 15008),
    outboundCidrs: '*',
    excludeOutboundCidrs: [],
    excludeOutboundPorts: [],
    includeOutboundPorts: [],
  }
}

const isV6 = (addr: string) => addr.includes(':')
const isLoopbackRange = (cidr: string) => cidr.startsWith('127.') || /^::1(\/|$)/.test(cidr)

/**
 * iptables-restore input (nat, and raw when DNS is captured) for IPv4 (4), or ip6tables-restore
 * input for IPv6 (6), rule for rule as istio-iptables writes them (test/unit/lab.test.ts holds
 * its testdata's rules for the option sets the lab uses).
 */
export function istioNatRules(mesh: MeshProfile, o: IstioCaptureOptions = defaultCaptureOptions(mesh), family: 4 | 6 = 4): string {
  const {outboundPort, inboundPort, dnsPort} = mesh
  const [localhost, passthrough] = family === 4 ? [o.loopbackCidr ?? '127.0.0.1/32', '127.0.0.6/32'] : ['::1/128', '::6/128']
  const ofFamily = (cidrs: string[]) => cidrs.filter((c) => isV6(c) === (family === 6))
  const hostMask = family === 4 ? '/32' : '/128'
  // with no server in resolv.conf istio-iptables turns DNS capture off, unless it captures all
  const captureAll = o.dnsServers !== undefined && o.captureAllDns === true
  const redirectDns = captureAll || (o.dnsServers?.length ?? 0) > 0
  const servers = ofFamily(o.dnsServers ?? [])
  const included = o.outboundCidrs === '*' ? [] : o.outboundCidrs
  const keepLoopback = included.some(isLoopbackRange)
  const inbound =
    o.inboundPorts === '*'
      ? [
          '-A PREROUTING -p tcp -j ISTIO_INBOUND',
          ...o.excludeInboundPorts.map((p) => `-A ISTIO_INBOUND -p tcp --dport ${p} -j RETURN`),
          '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT',
        ]
      : o.inboundPorts.length > 0
        ? [
            '-A PREROUTING -p tcp -j ISTIO_INBOUND',
            ...o.inboundPorts.map((p) => `-A ISTIO_INBOUND -p tcp --dport ${p} -j ISTIO_IN_REDIRECT`),
          ]
        : []
  const owner = (kind: 'uid' | 'gid', id: number) => [
    // the uid rule spares port 53 when DNS is captured; Istio's gid rule does not
    redirectDns && kind === 'uid'
      ? `-A ISTIO_OUTPUT -o lo ! -d ${localhost} -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner ${id} -j ISTIO_IN_REDIRECT`
      : `-A ISTIO_OUTPUT -o lo ! -d ${localhost} -p tcp ! --dport 15008 -m owner --${kind}-owner ${id} -j ISTIO_IN_REDIRECT`,
    ...(keepLoopback
      ? []
      : [
          redirectDns
            ? `-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --${kind}-owner ${id} -j RETURN`
            : `-A ISTIO_OUTPUT -o lo -m owner ! --${kind}-owner ${id} -j RETURN`,
        ]),
    `-A ISTIO_OUTPUT -m owner --${kind}-owner ${id} -j RETURN`,
  ]
  // istio-iptables splits on commas and drops empty entries; with '*' only the excluded groups return
  const groups = (text: string) => text.split(',').filter(Boolean)
  const ownerGroups = !o.ownerGroups
    ? []
    : o.ownerGroups.include === '*'
      ? groups(o.ownerGroups.exclude).map((g) => `-A ISTIO_OUTPUT -m owner --gid-owner ${g} -j RETURN`)
      : [['-A ISTIO_OUTPUT', ...groups(o.ownerGroups.include).map((g) => `-m owner ! --gid-owner ${g}`), '-j RETURN'].join(' ')]
  const excludedPorts = o.excludeOutboundPorts.flatMap((p) => [
    `-A ISTIO_OUTPUT -p tcp --dport ${p} -j RETURN`,
    `-A ISTIO_OUTPUT -p udp --dport ${p} -j RETURN`,
  ])
  const dns = captureAll
    ? [
        '-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS',
        `-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports ${dnsPort}`,
        `-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port ${dnsPort}`,
      ]
    : servers.length > 0
      ? [
          '-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS',
          ...servers.map((s) => `-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d ${s}${hostMask} -j REDIRECT --to-ports ${dnsPort}`),
          ...servers.map((s) => `-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d ${s}${hostMask} -j REDIRECT --to-port ${dnsPort}`),
        ]
      : []
  // excluded ranges, then included ports, then included ranges
  const ranges = [
    ...ofFamily(o.excludeOutboundCidrs).map((c) => `-A ISTIO_OUTPUT -d ${c} -j RETURN`),
    ...o.includeOutboundPorts.map((p) => `-A ISTIO_OUTPUT -p tcp --dport ${p} -j ISTIO_REDIRECT`),
    ...(o.outboundCidrs === '*'
      ? ['-A ISTIO_OUTPUT -j ISTIO_REDIRECT']
      : ofFamily(included).map((c) => `-A ISTIO_OUTPUT -d ${c} -j ISTIO_REDIRECT`)),
  ]
  const excludedNics = (o.excludeInterfaces ?? []).flatMap((i) => [`-A PREROUTING -i ${i} -j RETURN`, `-A OUTPUT -o ${i} -j RETURN`])
  const virtual = o.virtualInterfaces ?? []
  // inserted first, each at the top: the later ones end up above the earlier
  const virtualReturns = virtual.map((i) => `-I PREROUTING 1 -i ${i} -j RETURN`)
  const virtualRedirects =
    o.outboundCidrs === '*'
      ? virtual.map((i) => `-I PREROUTING 1 -i ${i} -j ISTIO_REDIRECT`)
      : ofFamily(included).flatMap((c) => virtual.map((i) => `-I PREROUTING 1 -i ${i} -d ${c} -j ISTIO_REDIRECT`))
  const nat = [
    '*nat',
    ':ISTIO_INBOUND - [0:0]',
    ':ISTIO_REDIRECT - [0:0]',
    ':ISTIO_IN_REDIRECT - [0:0]',
    ':ISTIO_OUTPUT - [0:0]',
    ...(redirectDns ? [':ISTIO_OUTPUT_DNS - [0:0]'] : []),
    ...excludedNics,
    ...virtualReturns,
    '-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN',
    `-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports ${outboundPort}`,
    `-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports ${inboundPort}`,
    ...inbound,
    '-A OUTPUT -j ISTIO_OUTPUT',
    ...excludedPorts,
    `-A ISTIO_OUTPUT -o lo -s ${passthrough} -j RETURN`,
    ...o.proxyUids.flatMap((id) => owner('uid', id)),
    ...o.proxyGids.flatMap((id) => owner('gid', id)),
    ...ownerGroups,
    ...dns,
    `-A ISTIO_OUTPUT -d ${localhost} -j RETURN`,
    ...ranges,
    ...virtualRedirects,
    'COMMIT',
  ]
  // conntrack zones keep the app's and the proxy's DNS flows apart (a UDP race in conntrack)
  const zones = (kind: 'uid' | 'gid', id: number) => [
    `-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --${kind}-owner ${id} -j CT --zone 1`,
    `-A ISTIO_OUTPUT_DNS -p udp --sport ${dnsPort} -m owner --${kind}-owner ${id} -j CT --zone 2`,
  ]
  const raw = redirectDns
    ? [
        '*raw',
        ':ISTIO_OUTPUT_DNS - [0:0]',
        ':ISTIO_INBOUND - [0:0]',
        '-A OUTPUT -j ISTIO_OUTPUT_DNS',
        ...o.proxyUids.flatMap((id) => zones('uid', id)),
        ...o.proxyGids.flatMap((id) => zones('gid', id)),
        ...(captureAll
          ? [
              '-A PREROUTING -j ISTIO_INBOUND',
              '-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2',
              '-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1',
            ]
          : [
              ...(servers.length > 0 ? ['-A PREROUTING -j ISTIO_INBOUND'] : []),
              ...servers.flatMap((s) => [
                `-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d ${s}${hostMask} -j CT --zone 2`,
                `-A ISTIO_INBOUND -p udp --sport 53 -s ${s}${hostMask} -j CT --zone 1`,
              ]),
            ]),
        'COMMIT',
      ]
    : []
  return [...nat, ...raw, ''].join('\n')
}

/** Packet counts of each chain's REDIRECT rules, from `iptables-save -c -t nat` text. */
export function redirectCounters(saveText: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [, packets, chain = ''] of saveText.matchAll(/^\[(\d+):\d+\] -A (\S+) .*-j REDIRECT/gm))
    out[chain] = (out[chain] ?? 0) + Number(packets)
  return out
}
