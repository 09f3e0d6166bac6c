import {existsSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {ToolFailedError} from '../errors.js'
import {bpftool, bytesFromHex, type RawMapEntry} from './bpftool.js'
import {
  COUNTERS,
  type CounterName,
  decodeIface,
  decodeOrigin,
  decodePodId,
  decodePair,
  decodePodRules,
  decodeProcess,
  decodeSettings,
  decodeUsage,
  type Iface,
  type Origin,
  type Pair,
  type PodId,
  type PodRules,
  type ProcessEntry,
  type Settings,
  type Usage,
} from './layout.js'
import {slotToIp} from './ip.js'
import type {MapPins} from './programs.js'

export function rawKey(e: RawMapEntry): Buffer {
  return bytesFromHex(e.key)
}

const dump = (inst: MapPins, name: Parameters<MapPins['map']>[0]) => bpftool.mapDumpBytes(inst.map(name))
const EMPTY = Buffer.alloc(0)

type Entries = {key: Buffer; value?: Buffer}[]

// the pod maps' decoders: read alone or together (readMaps.podMaps)
const localPods = (es: Entries) => es.map((e) => ({ip: slotToIp(e.key), rules: decodePodRules(e.value ?? EMPTY)}))
const netnsPods = (es: Entries) => es.map((e) => ({netns: e.key.readBigUInt64LE(0), ...decodePodId(e.value ?? EMPTY)}))
const otherIps = (es: Entries) =>
  es.map((e) => {
    const owner = e.value?.some((b) => b !== 0) ? slotToIp(e.value) : undefined
    return {ip: slotToIp(e.key), ...(owner === undefined ? {} : {owner})}
  })
const inboundSkips = (es: Entries) => es.map((e) => decodeIface(e.key))
const podShare = (es: Entries) => es[0]?.value?.readUInt32LE(0)

/** Readers of each map, decoded through the codecs of layout.ts. */
export const readMaps = {
  async localPods(inst: MapPins): Promise<{ip: string; rules: PodRules}[]> {
    return localPods(await dump(inst, 'local_pod_ips'))
  },

  async netnsPods(inst: MapPins): Promise<({netns: bigint} & PodId)[]> {
    return netnsPods(await dump(inst, 'netns_pod_ips'))
  },

  /** Other addresses of registered pods' namespaces and whose they are (no owner: pods of separate networks share it). */
  async otherIps(inst: MapPins): Promise<{ip: string; owner?: string}[]> {
    return otherIps(await dump(inst, 'pod_other_ips'))
  },

  /** The interfaces registered pods exclude from inbound capture, by namespace cookie and index. */
  async inboundSkips(inst: MapPins): Promise<Iface[]> {
    return inboundSkips(await dump(inst, 'inbound_skip'))
  },

  /**
   * Every pod map, from two bpftool processes side by side: local_pod_ips streamed (its rules make
   * it the large one), the small ones in one batch. The maps an older installation lacks
   * (pod_other_ips, inbound_skip, pod_share) are undefined.
   */
  async podMaps(inst: MapPins): Promise<{
    localPods: {ip: string; rules: PodRules}[]
    netnsPods: ({netns: bigint} & PodId)[]
    otherIps?: {ip: string; owner?: string}[]
    inboundSkips?: Iface[]
    podShare?: number
  }> {
    const optional = (['pod_other_ips', 'inbound_skip', 'pod_share'] as const).filter((m) => existsSync(inst.map(m)))
    const small = ['netns_pod_ips', ...optional] as const
    const [local, read] = await Promise.all([dump(inst, 'local_pod_ips'), bpftool.mapsDumpBytes(small.map((n) => inst.map(n)))])
    const dumps = new Map(small.map((n, i) => [n, read[i]]))
    const of = <T>(name: (typeof small)[number], decode: (es: Entries) => T) => {
      const es = dumps.get(name)
      return es === undefined ? undefined : decode(es)
    }
    return {
      localPods: localPods(local),
      netnsPods: of('netns_pod_ips', netnsPods) ?? [],
      otherIps: of('pod_other_ips', otherIps),
      inboundSkips: of('inbound_skip', inboundSkips),
      podShare: of('pod_share', podShare),
    }
  },

  async originals(inst: MapPins): Promise<{pair: Pair; origin: Origin}[]> {
    return (await dump(inst, 'pair_original_dst')).map((e) => ({pair: decodePair(e.key), origin: decodeOrigin(e.value ?? EMPTY)}))
  },

  /** Sockets: their own view of the connection, and the socket cookie user space reads back. */
  async sockets(inst: MapPins): Promise<{pair: Pair; cookie?: bigint}[]> {
    return (await dump(inst, 'sock_pair_map')).map((e) => ({
      pair: decodePair(e.key),
      cookie: e.value?.length === 8 ? e.value.readBigUInt64LE(0) : undefined,
    }))
  },

  async processes(inst: MapPins): Promise<{pid: number; entry: ProcessEntry}[]> {
    return (await dump(inst, 'process_ip')).map((e) => ({pid: e.key.readUInt32LE(0), entry: decodeProcess(e.value ?? EMPTY)}))
  },

  async settings(inst: MapPins): Promise<Settings | undefined> {
    const [e] = await dump(inst, 'settings')
    return e?.value ? decodeSettings(e.value) : undefined
  },

  /** Entries of the connection maps each pod holds, by netns cookie; netns 0 is the node's total. */
  async podUsage(inst: MapPins): Promise<{netns: bigint; usage: Usage}[]> {
    return (await dump(inst, 'pod_usage')).map((e) => ({netns: e.key.readBigUInt64LE(0), usage: decodeUsage(e.value ?? EMPTY)}))
  },

  /** The entries of each connection map a pod may always hold. */
  async podShare(inst: MapPins): Promise<number | undefined> {
    return podShare(await dump(inst, 'pod_share'))
  },

  /** Per-CPU counters summed over CPUs. */
  async counters(inst: MapPins): Promise<Record<CounterName, number>> {
    return sumCounters(await bpftool.mapDump(inst.map('counters')))
  },
}

/** The counters map as `bpftool map dump -j` prints it, summed over CPUs. */
export function sumCounters(entries: RawMapEntry[]): Record<CounterName, number> {
  const out = Object.fromEntries(COUNTERS.map((n) => [n, 0])) as Record<CounterName, number>
  for (const e of entries) {
    const name = COUNTERS[rawKey(e).readUInt32LE(0)]
    if (!name) continue
    for (const cpu of e.values ?? []) out[name] += Number(bytesFromHex(cpu.value).readBigUInt64LE(0))
  }
  return out
}

/** The settings map as `bpftool map dump -j` prints it. */
export function settingsOf(entries: RawMapEntry[]): Settings | undefined {
  const value = entries[0]?.value
  return value ? decodeSettings(bytesFromHex(value)) : undefined
}

export interface EntryCounts {
  /** entries of every hash map on the node, by map id (the kernel's own count); absent without map element counts */
  byId?: Map<number, number>
  /** sockets in every sockhash on the node, by map id (the kernel's own count); absent without socket map sizes */
  socketsById?: Map<number, number>
}

/**
 * Entry counts from the iterators enable pinned (bpf/iter): a small file read each instead of a
 * bpftool dump of every map. Each is absent where its iterator is not pinned (an optional kernel
 * feature, bpf/optional.ts); output that does not parse fails loudly.
 */
export async function readEntryCounts(pins: {maps: string; sockhash: string}): Promise<EntryCounts> {
  const read = async (pin: string) => (existsSync(pin) ? countsById(pin, await readFile(pin, 'utf8')) : undefined)
  const [byId, socketsById] = await Promise.all([read(pins.maps), read(pins.sockhash)])
  return {...(byId && {byId}), ...(socketsById && {socketsById})}
}

/** An iterator's "<map id> <entries>" lines. */
function countsById(pin: string, text: string): Map<number, number> {
  const out = new Map<number, number>()
  for (const line of text.split('\n')) {
    if (line === '') continue
    const m = /^(\d+) (-?\d+)$/.exec(line)
    if (!m)
      throw new ToolFailedError(`reading ${pin}`, `a line that is not "<map id> <entries>": ${JSON.stringify(line.slice(0, 80))}`, '')
    out.set(Number(m[1]), Number(m[2]))
  }
  return out
}
