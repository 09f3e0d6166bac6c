/**
 * What istio-init was told. Without Istio's CNI the injector writes a pod's effective capture
 * settings (its annotations, else the mesh-wide values) only into the istio-init container's
 * arguments, and the pod's annotations hold just what its author set: those arguments are what
 * istio-iptables applied, so they are the pod's specification. (With the CNI, the injector writes
 * the same effective values into the pod's annotations, which the CNI plugin reads.)
 */
import {MAX_GROUPS} from '../bpf/layout.js'
import {type Cidr, parseCidr} from '../bpf/ip.js'
import {ANNOTATIONS} from './annotations.js'
import {printable} from '../text.js'

/** istio-iptables' flags that take a value: short and long name -> the long one. */
const VALUE_FLAGS: Record<string, string> = {
  p: 'envoy-port',
  z: 'inbound-capture-port',
  e: 'inbound-tunnel-port',
  u: 'proxy-uid',
  g: 'proxy-gid',
  m: 'istio-inbound-interception-mode',
  b: 'istio-inbound-ports',
  d: 'istio-local-exclude-ports',
  c: 'istio-exclude-interfaces',
  i: 'istio-service-cidr',
  x: 'istio-service-exclude-cidr',
  q: 'istio-outbound-ports',
  o: 'istio-local-outbound-ports-exclude',
  k: 'kube-virt-interfaces',
  t: 'inbound-tproxy-mark',
  r: 'inbound-tproxy-route-table',
}
const LONG_VALUE = new Set([
  ...Object.values(VALUE_FLAGS),
  'iptables-probe-port',
  'probe-timeout',
  'network-namespace',
  'force-iptables-binary',
  'log_output_level',
  'log_target',
  'log_caller',
  'log_stacktrace_level',
  'log_rotate',
])
const BOOLEAN = new Set([
  'n',
  'dry-run',
  'skip-rule-apply',
  'run-validation',
  'redirect-dns',
  'drop-invalid',
  'dual-stack',
  'capture-all-dns',
  'cni-mode',
  'reconcile',
  'cleanup-only',
  'force-apply',
  'native-nftables',
  'log_as_json',
  'help',
  'h',
])

/** Where each setting lands: the annotation merbridge reads it from (or the interception mode's). */
const AS_ANNOTATION: Record<string, string> = {
  'istio-service-cidr': ANNOTATIONS.includeOutboundIPRanges,
  'istio-service-exclude-cidr': ANNOTATIONS.excludeOutboundIPRanges,
  'istio-inbound-ports': ANNOTATIONS.includeInboundPorts,
  'istio-local-exclude-ports': ANNOTATIONS.excludeInboundPorts,
  'istio-outbound-ports': ANNOTATIONS.includeOutboundPorts,
  'istio-local-outbound-ports-exclude': ANNOTATIONS.excludeOutboundPorts,
  'istio-exclude-interfaces': ANNOTATIONS.excludeInterfaces,
  'kube-virt-interfaces': ANNOTATIONS.rerouteVirtualInterfaces,
}

export interface IstioInitSettings {
  /** the settings as the annotations merbridge reads (only those istio-init was given) */
  annotations: Record<string, string>
  /** -p and -z (the mesh config's proxy listen ports): where istio-iptables sends outbound and inbound */
  ports: {outbound: string; inbound: string}
  /** -m */
  interceptionMode?: string
  /** --redirect-dns (or ISTIO_META_DNS_CAPTURE in its environment), when it was told either way */
  redirectDns?: boolean
  /** --capture-all-dns: port 53 to any address, not only to resolv.conf's servers */
  captureAllDns: boolean
  /** --dual-stack (or ISTIO_DUAL_STACK in its environment), when it was told either way */
  dualStack?: boolean
  /** -u and -g as istio-iptables takes them (-g defaults to -u, -u to 1337); the first of a list */
  proxyUid: number
  proxyGid: number
  /** ISTIO_OUTBOUND_OWNER_GROUPS / ..._EXCLUDE, as far as the datapath can honour them */
  ownerGroups?: {only: boolean; gids: number[]}
  /** ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, where it is valid and not the default 127.0.0.1/32 */
  loopback?: Cidr
  warnings: string[]
}

/** istio-iptables' settings read from its environment only (no flag sets them). */
export const OWNER_GROUPS = 'ISTIO_OUTBOUND_OWNER_GROUPS'
export const OWNER_GROUPS_EXCLUDE = 'ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE'
export const LOOPBACK_CIDR = 'ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR'
const ENV_ONLY = [OWNER_GROUPS, OWNER_GROUPS_EXCLUDE, LOOPBACK_CIDR]

/** A group list as istio-iptables splits it (commas, empty entries dropped, nothing trimmed). */
function groupList(text: string): {gids: number[]; bad: string[]} {
  const gids: number[] = []
  const bad: string[] = []
  for (const e of text.split(',').filter(Boolean)) {
    if (/^\d+$/.test(e) && Number(e) < 2 ** 32) {
      if (!gids.includes(Number(e))) gids.push(Number(e))
    } else bad.push(e)
  }
  return {gids, bad}
}

/**
 * istio-iptables' owner-group filter, failing closed. An include list other than '*' captures only
 * its groups' outbound (an empty one: nobody's); where merbridge cannot honour it whole (a group
 * name, which iptables looks up in istio-init's image, or more than the datapath holds) every
 * group is captured. An exclude list (read only with '*') loses what it cannot honour: more is
 * captured, never less.
 */
export function ownerGroupRules(
  include: string | undefined,
  exclude: string | undefined,
): {ownerGroups?: {only: boolean; gids: number[]}; warnings: string[]} {
  const shown = (bad: string[]) =>
    `${bad
      .slice(0, 3)
      .map((b) => `'${printable(b, 40)}'`)
      .join(', ')}${bad.length > 3 ? ', ...' : ''}`
  if (include !== undefined && include !== '*') {
    const {gids, bad} = groupList(include)
    if (bad.length > 0)
      return {
        warnings: [
          `${OWNER_GROUPS}: ${shown(bad)} ${bad.length === 1 ? 'is not a group id' : 'are not group ids'} (a name is looked up in istio-init's image, which merbridge cannot read); every group's outbound is captured instead (fail closed)`,
        ],
      }
    if (gids.length > MAX_GROUPS)
      return {
        warnings: [
          `${OWNER_GROUPS}: ${gids.length} groups, the datapath holds ${MAX_GROUPS}; every group's outbound is captured instead (fail closed)`,
        ],
      }
    return {ownerGroups: {only: true, gids}, warnings: []}
  }
  if (exclude === undefined) return {warnings: []}
  const {gids, bad} = groupList(exclude)
  const warnings =
    bad.length > 0
      ? [
          `${OWNER_GROUPS_EXCLUDE}: ${shown(bad)} ${bad.length === 1 ? 'is not a group id' : 'are not group ids'} (a name is looked up in istio-init's image, which merbridge cannot read); ignored, so more is captured`,
        ]
      : []
  if (gids.length > MAX_GROUPS) {
    warnings.push(
      `${OWNER_GROUPS_EXCLUDE}: ${gids.length} groups, the datapath holds ${MAX_GROUPS}; the rest are ignored, so more is captured`,
    )
    gids.length = MAX_GROUPS
  }
  return {...(gids.length > 0 ? {ownerGroups: {only: false, gids}} : {}), warnings}
}

/**
 * ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR as istio-iptables validates it: an IPv4 prefix inside 127/8,
 * 8 to 32 bits. istio-init refuses any other; merbridge then keeps 127.0.0.1/32, whose
 * "-d 127.0.0.1 -j RETURN" leaves the least alone.
 */
export function loopbackRule(text: string | undefined): {loopback?: Cidr; warnings: string[]} {
  if (text === undefined) return {warnings: []}
  const c = text.includes('/') ? parseCidr(text) : undefined
  if (!c || text !== text.trim() || !c.ip.startsWith('127.') || c.prefix < 8)
    return {
      warnings: [
        `${LOOPBACK_CIDR}: '${printable(text, 40)}' is not an IPv4 loopback range of 8 to 32 bits (istio-init refuses it); 127.0.0.1/32 is used`,
      ],
    }
  return c.ip === '127.0.0.1' && c.prefix === 32 ? {warnings: []} : {loopback: c, warnings: []}
}

/** The flags in a command line, long name -> value; a string saying what is wrong when it cannot be read exactly. */
export function parseFlags(argv: readonly string[]): Map<string, string> | string {
  const out = new Map<string, string>()
  let leading = true
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i] ?? ''
    const m = /^(--?)([^=]+)(?:=(.*))?$/s.exec(token)
    if (!m) {
      // the program first (pilot-agent istio-iptables, or istio-iptables); anything else
      // positional is not istio-iptables' grammar
      if (leading && /(^|\/)(pilot-agent|istio-iptables)$/.test(token)) continue
      return `unexpected argument '${printable(token, 40)}'`
    }
    leading = false
    const [, dashes, rawName = '', inline] = m
    // pflag: -u1337 is -u 1337
    const first = rawName.slice(0, 1)
    const [name, attached] =
      dashes === '-' && rawName.length > 1 && VALUE_FLAGS[first] !== undefined ? [first, rawName.slice(1)] : [rawName, undefined]
    const long = dashes === '-' ? VALUE_FLAGS[name] : name
    if (long !== undefined && LONG_VALUE.has(long)) {
      const value = inline ?? attached ?? argv[++i]
      if (value === undefined) return `${token} has no value`
      out.set(long, value)
    } else if (BOOLEAN.has(name)) {
      out.set(name, inline ?? 'true')
    } else {
      return `unknown flag ${printable(token, 40)}`
    }
  }
  return out
}

/** An id list as istio-iptables takes it: the first, and whether there were more. */
function firstId(text: string): {id?: number; more: boolean} {
  const parts = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  const first = parts[0]
  const id = first !== undefined && /^\d+$/.test(first) && Number(first) < 2 ** 32 ? Number(first) : undefined
  return {id, more: parts.length > 1}
}

/**
 * istio-init's settings from its container, or undefined with no such container (then the pod's
 * annotations are its settings, as Istio's CNI reads them). Flags first, else the environment
 * istio-iptables reads them from; a setting given neither way is left to the annotations.
 */
export function istioInitSettings(
  container: {command?: unknown; args?: unknown; env?: unknown} | undefined,
  defaults: {uid: number},
): IstioInitSettings | {error: string} | undefined {
  if (!container) return undefined
  const strings = (v: unknown) =>
    (Array.isArray(v) ? v : []).map((s) => (typeof s === 'string' || typeof s === 'number' ? String(s) : '\u0000'))
  const argv = [...strings(container.command), ...strings(container.args)]
  if (argv.includes('\u0000')) return {error: 'its command line holds something other than text'}
  const flags = parseFlags(argv)
  if (typeof flags === 'string') return {error: flags}
  const env = new Map<string, string>()
  const unread: string[] = []
  for (const e of Array.isArray(container.env) ? (container.env as unknown[]) : []) {
    const {name, value} = (e ?? {}) as {name?: unknown; value?: unknown}
    if (typeof name === 'string' && typeof value === 'string') env.set(name, value)
    // valueFrom (a ConfigMap, a field): what istio-iptables got is not in the pod
    else if (typeof name === 'string' && ENV_ONLY.includes(name) && value === undefined) unread.push(name)
  }
  // pflag's BindEnv: ISTIO_SERVICE_CIDR for --istio-service-cidr, and so on
  const setting = (long: string) => flags.get(long) ?? env.get(long.toUpperCase().replaceAll('-', '_'))
  const annotations: Record<string, string> = {}
  for (const [long, key] of Object.entries(AS_ANNOTATION)) {
    const v = setting(long)
    if (v !== undefined) annotations[key] = v
  }
  const warnings: string[] = []
  const uidText = setting('proxy-uid') ?? String(defaults.uid)
  const gidText = setting('proxy-gid') ?? uidText
  const [uid, gid] = [firstId(uidText), firstId(gidText)]
  if (uid.id === undefined || gid.id === undefined)
    return {error: `the proxy's ids '${printable(uidText, 20)}' / '${printable(gidText, 20)}' are not numbers`}
  // the datapath knows one of each: a process with another listed id is captured (more, not less)
  if (uid.more || gid.more)
    warnings.push(
      `istio-init lists several proxy ids (-u ${printable(uidText, 40)}, -g ${printable(gidText, 40)}); only ${uid.id}/${gid.id} are the proxy's`,
    )
  for (const name of unread)
    warnings.push(
      `${name} comes from elsewhere (valueFrom), which merbridge does not read; ${name === OWNER_GROUPS ? "every group's outbound is" : 'more is'} captured as without it`,
    )
  const groups = unread.includes(OWNER_GROUPS) ? {warnings: []} : ownerGroupRules(env.get(OWNER_GROUPS), env.get(OWNER_GROUPS_EXCLUDE))
  const loopback = loopbackRule(env.get(LOOPBACK_CIDR))
  warnings.push(...groups.warnings, ...loopback.warnings)
  const mode = setting('istio-inbound-interception-mode')
  const redirectDns = goBool(setting('redirect-dns') ?? env.get('ISTIO_META_DNS_CAPTURE'))
  const dualStack = goBool(setting('dual-stack') ?? env.get('ISTIO_DUAL_STACK'))
  return {
    annotations,
    ...(mode === undefined ? {} : {interceptionMode: mode}),
    ...(redirectDns === undefined ? {} : {redirectDns}),
    ...(dualStack === undefined ? {} : {dualStack}),
    captureAllDns: goBool(setting('capture-all-dns')) ?? false,
    proxyUid: uid.id,
    proxyGid: gid.id,
    ports: {outbound: setting('envoy-port') ?? '15001', inbound: setting('inbound-capture-port') ?? '15006'},
    ...(groups.ownerGroups ? {ownerGroups: groups.ownerGroups} : {}),
    ...(loopback.loopback ? {loopback: loopback.loopback} : {}),
    warnings,
  }
}

/** Go's strconv.ParseBool, which Istio reads its switches with; undefined for anything else. */
export function goBool(v: unknown): boolean | undefined {
  const s = typeof v === 'boolean' ? String(v) : v
  if (typeof s !== 'string') return undefined
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(s)) return true
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(s)) return false
  return undefined
}
