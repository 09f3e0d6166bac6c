/**
 * The nat rules istio-init installs in a sidecar-injected pod (the baseline merbridge replaces),
 * as an iptables-restore input, in the order Istio's istio-iptables writes them for the options
 * the lab uses (REDIRECT mode, IPv4). Only ever applied inside the lab's own network namespaces.
 */
import type {MeshProfile} from '../mesh/profiles.js'

/** The istio-iptables options a pod's annotations and spec give (the injector's translation). */
export interface IstioCaptureOptions {
  proxyUid: number
  proxyGid: number
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
}

export function defaultCaptureOptions(mesh: MeshProfile): IstioCaptureOptions {
  return {
    proxyUid: mesh.sidecarUid,
    proxyGid: mesh.sidecarGid,
    inboundPorts: '*',
    excludeInboundPorts: mesh.reservedInboundPorts.filter((p) => p !== 15008),
    outboundCidrs: '*',
    excludeOutboundCidrs: [],
    excludeOutboundPorts: [],
    includeOutboundPorts: [],
  }
}

/** iptables-restore input for IPv4 (4) or ip6tables-restore input for IPv6 (6): ip6tables mirror the rules with ::1 and ::6. */
export function istioNatRules(mesh: MeshProfile, o: IstioCaptureOptions = defaultCaptureOptions(mesh), family: 4 | 6 = 4): string {
  const {outboundPort, inboundPort} = mesh
  const [localhost, passthrough] = family === 4 ? ['127.0.0.1/32', '127.0.0.6/32'] : ['::1/128', '::6/128']
  const ofFamily = (cidrs: string[]) => cidrs.filter((c) => c.includes(':') === (family === 6))
  const inbound =
    o.inboundPorts === '*'
      ? [
          '-A PREROUTING -p tcp -j ISTIO_INBOUND',
          ...o.excludeInboundPorts.map((p) => `-A ISTIO_INBOUND -p tcp --dport ${p} -j RETURN`),
          '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT',
        ]
      : o.inboundPorts.length > 0
        ? ['-A PREROUTING -p tcp -j ISTIO_INBOUND', ...o.inboundPorts.map((p) => `-A ISTIO_INBOUND -p tcp --dport ${p} -j ISTIO_IN_REDIRECT`)]
        : []
  const owner = (kind: 'uid' | 'gid', id: number) => [
    `-A ISTIO_OUTPUT -o lo ! -d ${localhost} -p tcp ! --dport 15008 -m owner --${kind}-owner ${id} -j ISTIO_IN_REDIRECT`,
    `-A ISTIO_OUTPUT -o lo -m owner ! --${kind}-owner ${id} -j RETURN`,
    `-A ISTIO_OUTPUT -m owner --${kind}-owner ${id} -j RETURN`,
  ]
  const excludedPorts = o.excludeOutboundPorts.length > 0 ? [`-A ISTIO_OUTPUT -p tcp -m multiport --dports ${o.excludeOutboundPorts.join(',')} -j RETURN`] : []
  // excluded ranges, then included ports, then included ranges
  const ranges = [
    ...ofFamily(o.excludeOutboundCidrs).map((c) => `-A ISTIO_OUTPUT -d ${c} -j RETURN`),
    ...o.includeOutboundPorts.map((p) => `-A ISTIO_OUTPUT -p tcp --dport ${p} -j ISTIO_REDIRECT`),
    ...(o.outboundCidrs === '*' ? ['-A ISTIO_OUTPUT -j ISTIO_REDIRECT'] : ofFamily(o.outboundCidrs).map((c) => `-A ISTIO_OUTPUT -d ${c} -j ISTIO_REDIRECT`)),
  ]
  return [
    '*nat',
    ':ISTIO_INBOUND - [0:0]',
    ':ISTIO_REDIRECT - [0:0]',
    ':ISTIO_IN_REDIRECT - [0:0]',
    ':ISTIO_OUTPUT - [0:0]',
    '-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN',
    `-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports ${outboundPort}`,
    `-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports ${inboundPort}`,
    ...inbound,
    '-A OUTPUT -p tcp -j ISTIO_OUTPUT',
    ...excludedPorts,
    `-A ISTIO_OUTPUT -o lo -s ${passthrough} -j RETURN`,
    ...owner('uid', o.proxyUid),
    ...owner('gid', o.proxyGid),
    `-A ISTIO_OUTPUT -d ${localhost} -j RETURN`,
    ...ranges,
    'COMMIT',
    '',
  ].join('\n')
}

/** Packet counts of each chain's REDIRECT rules, from `iptables-save -c -t nat` text. */
export function redirectCounters(saveText: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [, packets, chain = ''] of saveText.matchAll(/^\[(\d+):\d+\] -A (\S+) .*-j REDIRECT/gm)) out[chain] = (out[chain] ?? 0) + Number(packets)
  return out
}
