import {hostProc} from '../paths.js'
import {existsSync, readFileSync} from 'node:fs'
import {formatCidr} from '../bpf/ip.js'
import {COUNTERS, originFlagNames, type Pair, type PodRules, type Settings} from '../bpf/layout.js'
import {readMaps} from '../bpf/maps.js'
import {MerbridgeError} from '../errors.js'
import {type InstallState, type Installation, notEnabled} from './installation.js'

/** The maps dump-maps decodes, in the order it shows them. */
export const DUMPABLE = [
  'sock_pair_map',
  'pair_original_dst',
  'pod_usage',
  'process_ip',
  'local_pod_ips',
  'netns_pod_ips',
  'pod_other_ips',
  'inbound_skip',
  'settings',
  'counters',
] as const
export type DumpableMap = (typeof DUMPABLE)[number]

export interface Endpoint {
  ip: string
  port?: number
  /** namespace/name of the pod with this IP, when merbridge knows it */
  pod?: string
}

export interface Filter {
  pod?: string
  ip?: string
  port?: number
}

/** Where a connection goes from and to; netns is the cookie of loopback legs, 0 otherwise. */
export interface ConnectionView {
  local: Endpoint
  remote: Endpoint
  netns: string
}

export interface RulesView {
  outboundCidrs: '*' | string[]
  excludedOutboundCidrs: string[]
  outboundPorts: number[]
  excludedOutboundPorts: number[]
  inboundPorts: '*' | number[]
  excludedInboundPorts: number[]
  /** DNS capture: the resolvers, '*' for any address, null when the pod does not capture DNS */
  dns: '*' | string[] | null
  proxyUid: number
  proxyGid: number
  /** its native IPv6 is captured (false: Istio wrote no ip6tables rules for the pod) */
  ipv6: boolean
  /** groups whose outbound is captured (istio-init's ISTIO_OUTBOUND_OWNER_GROUPS), '*' for all but the excluded */
  outboundGroups: '*' | number[]
  excludedOutboundGroups: number[]
  /** the IPv4 destinations left alone as localhost (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR) */
  localhost: string
}

/** The rows of each map, with the field names `--json` documents (docs/dump-maps.md). */
export interface RowsOf {
  sock_pair_map: ConnectionView & {cookie?: string}
  pair_original_dst: {connection: ConnectionView; originalDst: Endpoint; pid: number; process?: string; flags: string[]}
  /** netns "0" is the node's total */
  pod_usage: {netns: string; pod?: string; sockets: number; origins: number}
  process_ip: {pid: number; process?: string; podIp: string; pod?: string; netns: string}
  local_pod_ips: {ip: string; pod?: string; rules: RulesView}
  netns_pod_ips: {netns: string; ip: string; ip6?: string; pod?: string}
  /** owner: the pod IP whose namespace has the address; absent when pods of separate networks share it */
  pod_other_ips: {ip: string; owner?: string; pod?: string}
  /** an interface a registered pod excludes from inbound capture: its namespace's cookie and its index there */
  inbound_skip: {netns: string; ifindex: number; pod?: string}
  settings: Omit<Settings, 'hostNetns'> & {hostNetns: string}
  counters: {counter: string; value: number}
}

export type MapDump = {
  [K in DumpableMap]: {
    map: K
    /** entries in the map, before filters and limit */
    total: number
    rows: RowsOf[K][]
  }
}[DumpableMap]

/** IP -> namespace/name for every pod of the last sync. */
export function podNames(state: InstallState | undefined): Map<string, string> {
  const out = new Map<string, string>()
  for (const p of [...(state?.pods.meshed ?? []), ...(state?.pods.unregistered ?? []), ...(state?.pods.skipped ?? [])]) {
    if (p.ip) out.set(p.ip, `${p.namespace}/${p.name}`)
    if ('ip6' in p && p.ip6) out.set(p.ip6, `${p.namespace}/${p.name}`)
  }
  return out
}

const names = new Map<number, string | undefined>()

/** The process name of a pid, read once per pid however many rows name it. */
function processName(pid: number): string | undefined {
  if (!names.has(pid)) {
    try {
      names.set(pid, readFileSync(`${hostProc()}/${pid}/comm`, 'utf8').trim())
    } catch {
      names.set(pid, undefined)
    }
  }
  return names.get(pid)
}

function rulesView(r: PodRules): RulesView {
  return {
    outboundCidrs: r.outAllCidrs ? '*' : r.outIncludeCidrs.map(formatCidr),
    excludedOutboundCidrs: r.outExcludeCidrs.map(formatCidr),
    outboundPorts: r.outIncludePorts,
    excludedOutboundPorts: r.outExcludePorts,
    inboundPorts: r.inAllPorts ? '*' : r.inIncludePorts,
    excludedInboundPorts: r.inExcludePorts,
    dns: r.dns ? (r.dns.all ? '*' : r.dns.servers) : null,
    proxyUid: r.proxyUid,
    proxyGid: r.proxyGid,
    ipv6: !r.noIpv6,
    outboundGroups: r.ownerGroups?.only ? r.ownerGroups.gids : '*',
    excludedOutboundGroups: r.ownerGroups?.only === false ? r.ownerGroups.gids : [],
    localhost: r.loopback ? formatCidr(r.loopback) : '127.0.0.1/32',
  }
}

/** Every map of the installation, or the named ones, decoded into rows with stable field names. */
export async function dumpMaps(inst: Installation, names: readonly string[], filter: Filter, limit?: number): Promise<MapDump[]> {
  const unknown = names.filter((n) => !(DUMPABLE as readonly string[]).includes(n))
  if (unknown.length > 0)
    throw new MerbridgeError(`unknown map ${unknown.join(', ')}`, {code: 'UNKNOWN_MAP', suggestion: `valid maps: ${DUMPABLE.join(', ')}`})
  const state = await inst.readState()
  if (!inst.exists()) throw notEnabled(inst)
  // an installation enabled by an older merbridge lacks these, and shows them empty
  const olderLack: readonly string[] = ['pod_other_ips', 'inbound_skip']
  inst.requireMaps((names.length > 0 ? (names as DumpableMap[]) : DUMPABLE).filter((n) => !olderLack.includes(n)))
  const pods = podNames(state)
  const ep = (ip: string, port?: number): Endpoint => ({
    ip,
    ...(port === undefined ? {} : {port}),
    ...(pods.has(ip) ? {pod: pods.get(ip)} : {}),
  })
  const conn = (p: Pair) => ({local: ep(p.localIp, p.localPort), remote: ep(p.remoteIp, p.remotePort), netns: p.netns.toString()})
  const matches = (...eps: Endpoint[]) =>
    (!filter.ip || eps.some((e) => e.ip === filter.ip)) &&
    (filter.port === undefined || eps.some((e) => e.port === filter.port)) &&
    (!filter.pod || eps.some((e) => e.pod === filter.pod || e.pod?.split('/')[1] === filter.pod))

  const byNetns = new Map((state?.pods.meshed ?? []).map((m) => [m.netns, m]))
  const readers: {[K in DumpableMap]: () => Promise<{rows: RowsOf[K][]; eps: Endpoint[][]}>} = {
    async sock_pair_map() {
      const entries = await readMaps.sockets(inst)
      return {
        rows: entries.map((e) => ({...conn(e.pair), cookie: e.cookie?.toString()})),
        eps: entries.map((e) => [ep(e.pair.localIp, e.pair.localPort), ep(e.pair.remoteIp, e.pair.remotePort)]),
      }
    },
    async pair_original_dst() {
      const entries = await readMaps.originals(inst)
      return {
        rows: entries.map((e) => ({
          connection: conn(e.pair),
          originalDst: ep(e.origin.ip, e.origin.port),
          pid: e.origin.pid,
          process: processName(e.origin.pid),
          flags: originFlagNames(e.origin.flags),
        })),
        eps: entries.map((e) => [
          ep(e.pair.localIp, e.pair.localPort),
          ep(e.pair.remoteIp, e.pair.remotePort),
          ep(e.origin.ip, e.origin.port),
        ]),
      }
    },
    async pod_usage() {
      // the busiest first: the question this map answers is who holds the entries
      const entries = (await readMaps.podUsage(inst)).sort(
        (a, b) => b.usage.sockets + b.usage.origins - (a.usage.sockets + a.usage.origins),
      )
      const owners = entries.map((e) => byNetns.get(e.netns.toString()))
      return {
        rows: entries.map((e, i) => ({
          netns: e.netns.toString(),
          ...(owners[i] ? {pod: `${owners[i].namespace}/${owners[i].name}`} : {}),
          ...e.usage,
        })),
        eps: owners.map((m) => (m ? [ep(m.ip)] : [])),
      }
    },
    async process_ip() {
      const entries = await readMaps.processes(inst)
      return {
        rows: entries.map((e) => ({
          pid: e.pid,
          process: processName(e.pid),
          podIp: e.entry.podIp,
          pod: pods.get(e.entry.podIp),
          netns: e.entry.netns.toString(),
        })),
        eps: entries.map((e) => [ep(e.entry.podIp)]),
      }
    },
    async local_pod_ips() {
      const entries = await readMaps.localPods(inst)
      return {rows: entries.map((e) => ({ip: e.ip, pod: pods.get(e.ip), rules: rulesView(e.rules)})), eps: entries.map((e) => [ep(e.ip)])}
    },
    async netns_pod_ips() {
      const entries = await readMaps.netnsPods(inst)
      return {
        rows: entries.map((e) => ({netns: e.netns.toString(), ip: e.ip, ...(e.ip6 ? {ip6: e.ip6} : {}), pod: pods.get(e.ip)})),
        eps: entries.map((e) => [ep(e.ip)]),
      }
    },
    async pod_other_ips() {
      // an installation enabled by an older merbridge has none
      const entries = existsSync(inst.map('pod_other_ips')) ? await readMaps.otherIps(inst) : []
      return {
        rows: entries.map((e) => ({ip: e.ip, ...(e.owner ? {owner: e.owner, pod: pods.get(e.owner)} : {})})),
        eps: entries.map((e) => [ep(e.ip), ...(e.owner ? [ep(e.owner)] : [])]),
      }
    },
    async inbound_skip() {
      // an installation enabled by an older merbridge has none
      const entries = existsSync(inst.map('inbound_skip')) ? await readMaps.inboundSkips(inst) : []
      const owners = entries.map((e) => byNetns.get(e.netns.toString()))
      return {
        rows: entries.map((e, i) => ({
          netns: e.netns.toString(),
          ifindex: e.ifindex,
          ...(owners[i] ? {pod: `${owners[i].namespace}/${owners[i].name}`} : {}),
        })),
        eps: owners.map((m) => (m ? [ep(m.ip)] : [])),
      }
    },
    async settings() {
      const s = await readMaps.settings(inst)
      return {rows: s ? [{...s, hostNetns: s.hostNetns.toString()}] : [], eps: [[]]}
    },
    async counters() {
      const c = await readMaps.counters(inst)
      return {rows: COUNTERS.map((name) => ({counter: name, value: c[name]})), eps: COUNTERS.map(() => [])}
    },
  }
  const filtering = filter.ip !== undefined || filter.port !== undefined || filter.pod !== undefined
  const out: MapDump[] = []
  for (const map of names.length > 0 ? (names as DumpableMap[]) : DUMPABLE) {
    const {rows, eps} = await readers[map]()
    // settings and counters are not about connections: filters do not apply to them
    const kept = filtering && map !== 'settings' && map !== 'counters' ? rows.filter((_, i) => matches(...(eps[i] ?? []))) : rows
    // the reader of `map` produced rows of `map`: TypeScript cannot follow that through the loop
    out.push({map, total: rows.length, rows: limit === undefined ? kept : kept.slice(0, limit)} as MapDump)
  }
  return out
}
