/**
 * The nat rules istio-init installs in a sidecar-injected pod (the baseline merbridge replaces),
 * as an iptables-restore input. Only ever applied inside the lab's own network namespaces.
 */
import type {MeshProfile} from '../mesh/profiles.js'

export function istioNatRules(mesh: MeshProfile): string {
  const {outboundPort, inboundPort, sidecarUid: uid, sidecarGid: gid} = mesh
  const inboundReturns = mesh.reservedInboundPorts.map((p) => `-A ISTIO_INBOUND -p tcp --dport ${p} -j RETURN`)
  return [
    '*nat',
    ':ISTIO_INBOUND - [0:0]',
    ':ISTIO_IN_REDIRECT - [0:0]',
    ':ISTIO_OUTPUT - [0:0]',
    ':ISTIO_REDIRECT - [0:0]',
    '-A PREROUTING -p tcp -j ISTIO_INBOUND',
    '-A OUTPUT -p tcp -j ISTIO_OUTPUT',
    ...inboundReturns,
    '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT',
    `-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports ${inboundPort}`,
    '-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN',
    `-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner ${uid} -j ISTIO_IN_REDIRECT`,
    `-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner ${uid} -j RETURN`,
    `-A ISTIO_OUTPUT -m owner --uid-owner ${uid} -j RETURN`,
    `-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner ${gid} -j ISTIO_IN_REDIRECT`,
    `-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner ${gid} -j RETURN`,
    `-A ISTIO_OUTPUT -m owner --gid-owner ${gid} -j RETURN`,
    '-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN',
    '-A ISTIO_OUTPUT -j ISTIO_REDIRECT',
    `-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports ${outboundPort}`,
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
