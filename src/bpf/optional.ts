import {MerbridgeError} from '../errors.js'

/**
 * Kernel features merbridge works without. Each is probed where it is used (by loading the program
 * that needs it), and the commands say what its absence costs. `MERBRIDGE_WITHOUT` turns any of
 * them off, so that every fallback runs on every kernel (the tests force each one).
 */
export const OPTIONAL_FEATURES = {
  'map-element-count': {
    title: 'map element counts',
    buys: 'status reads the entry count of every map from one pinned iterator',
    without: 'status counts entries by dumping each hash map (a bpftool process per map)',
  },
  'sockhash-size': {
    title: 'socket map size',
    buys: "status reads how many sockets are tracked from a pinned iterator (the kernel's own count in sock_pair_map)",
    without: 'status counts tracked sockets by dumping sock_pair_map (a bpftool process whose time grows with the connections)',
  },
  'sockmap-iterator': {
    title: 'socket map iterator',
    buys: 'disable releases every socket that has read what was moved to it, so the sk_msg program and its maps leave the kernel at once',
    without:
      "disable cannot tell which sockets hold unread data and leaves them all tracked: the sk_msg program and its maps stay in the kernel, unpinned, until the node's tracked connections close",
  },
  'reuseport-assign': {
    title: 'handing a connection to a reuseport listener',
    /** no load can show it: only a packet handed over does, so the datapath finds out per connection */
    perConnection: 'found out per connection by the datapath: status counts those sent by rewriting (inboundRewritten)',
    buys: 'tc hands a connection from elsewhere to the inbound sidecar untouched, as TPROXY would',
    without:
      "tc sends it there by rewriting its destination port and its replies' source port back (as netfilter's REDIRECT), decided per connection: the wire and the client see the original port, and a connection from an unmeshed pod on this node to a meshed one goes over TCP instead of socket to socket",
  },
} as const

export type OptionalFeature = keyof typeof OPTIONAL_FEATURES
export const OPTIONAL_FEATURE_NAMES = Object.keys(OPTIONAL_FEATURES) as OptionalFeature[]

/** Why each optional feature this installation goes without is unavailable (absent: available). */
export type Unavailable = Partial<Record<OptionalFeature, string>>

export const WITHOUT_VARIABLE = 'MERBRIDGE_WITHOUT'

/** The features MERBRIDGE_WITHOUT turns off; an unknown name is refused, so a typo is never silent. */
export function featuresTurnedOff(value = process.env[WITHOUT_VARIABLE]): Set<OptionalFeature> {
  const names = (value ?? '')
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n !== '')
  const unknown = names.filter((n) => !(n in OPTIONAL_FEATURES))
  if (unknown.length > 0)
    throw new MerbridgeError(`${WITHOUT_VARIABLE} names unknown feature(s): ${unknown.join(', ')}`, {
      code: 'BAD_WITHOUT',
      exitCode: 2,
      suggestion: `use a comma-separated list of ${OPTIONAL_FEATURE_NAMES.join(', ')}, or unset ${WITHOUT_VARIABLE}`,
    })
  return new Set(names as OptionalFeature[])
}

/** Why a feature is off by request, or undefined when it may be tried. */
export function turnedOff(feature: OptionalFeature): string | undefined {
  return featuresTurnedOff().has(feature) ? `turned off by ${WITHOUT_VARIABLE}` : undefined
}
