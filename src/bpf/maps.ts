import {bpftool, bytesFromHex, type RawMapEntry} from './bpftool.js'
import {
  COUNTERS,
  type CounterName,
  decodeOrigin,
  decodePodId,
  decodePair,
  decodePodRules,
  decodeProcess,
  decodeSettings,
  type Origin,
  type Pair,
  type PodId,
  type PodRules,
  type ProcessEntry,
  type Settings,
} from './layout.js'
import {slotToIp} from './ip.js'
import type {MapPins} from './programs.js'

export function rawKey(e: RawMapEntry): Buffer {
  return bytesFromHex(e.key)
}

const dump = (inst: MapPins, name: Parameters<MapPins['map']>[0]) => bpftool.mapDumpBytes(inst.map(name))
const EMPTY = Buffer.alloc(0)

/** Readers of each map, decoded through the codecs of layout.ts. */
export const readMaps = {
  async localPods(inst: MapPins): Promise<{ip: string; rules: PodRules}[]> {
    return (await dump(inst, 'local_pod_ips')).map((e) => ({ip: slotToIp(e.key), rules: decodePodRules(e.value ?? EMPTY)}))
  },

  async netnsPods(inst: MapPins): Promise<({netns: bigint} & PodId)[]> {
    return (await dump(inst, 'netns_pod_ips')).map((e) => ({netns: e.key.readBigUInt64LE(0), ...decodePodId(e.value ?? EMPTY)}))
  },

  async originals(inst: MapPins): Promise<{pair: Pair; origin: Origin}[]> {
    return (await dump(inst, 'pair_original_dst')).map((e) => ({pair: decodePair(e.key), origin: decodeOrigin(e.value ?? EMPTY)}))
  },

  /** Sockets: their own view of the connection, and the socket cookie user space reads back. */
  async sockets(inst: MapPins): Promise<{pair: Pair; cookie?: bigint}[]> {
    return (await dump(inst, 'sock_pair_map')).map((e) => ({pair: decodePair(e.key), cookie: e.value?.length === 8 ? e.value.readBigUInt64LE(0) : undefined}))
  },

  async processes(inst: MapPins): Promise<{pid: number; entry: ProcessEntry}[]> {
    return (await dump(inst, 'process_ip')).map((e) => ({pid: e.key.readUInt32LE(0), entry: decodeProcess(e.value ?? EMPTY)}))
  },

  async settings(inst: MapPins): Promise<Settings | undefined> {
    const [e] = await dump(inst, 'settings')
    return e?.value ? decodeSettings(e.value) : undefined
  },

  /** Per-CPU counters summed over CPUs. */
  async counters(inst: MapPins): Promise<Record<CounterName, number>> {
    const out = Object.fromEntries(COUNTERS.map((n) => [n, 0])) as Record<CounterName, number>
    for (const e of await bpftool.mapDump(inst.map('counters'))) {
      const name = COUNTERS[rawKey(e).readUInt32LE(0)]
      if (!name) continue
      for (const cpu of e.values ?? []) out[name] += Number(bytesFromHex(cpu.value).readBigUInt64LE(0))
    }
    return out
  },
}
