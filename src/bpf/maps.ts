import {bpftool, bytesFromHex, type RawMapEntry} from './bpftool.js'
import {
  COUNTERS,
  type CounterName,
  decodeOrigin,
  decodePair,
  decodePodRules,
  decodeProcess,
  decodeSettings,
  type Origin,
  type Pair,
  type PodRules,
  type ProcessEntry,
  type Settings,
} from './layout.js'
import {slotToIp} from './ip.js'
import type {Installation} from '../datapath/installation.js'

export function rawKey(e: RawMapEntry): Buffer {
  return bytesFromHex(e.key)
}

export function rawValue(e: RawMapEntry): Buffer {
  return bytesFromHex(e.value ?? [])
}

/** Readers of each map, decoded through the codecs of layout.ts. */
export const readMaps = {
  async localPods(inst: Installation): Promise<{ip: string; rules: PodRules}[]> {
    return (await bpftool.mapDump(inst.map('local_pod_ips'))).map((e) => ({ip: slotToIp(rawKey(e)), rules: decodePodRules(rawValue(e))}))
  },

  async netnsPods(inst: Installation): Promise<{netns: bigint; ip: string}[]> {
    return (await bpftool.mapDump(inst.map('netns_pod_ips'))).map((e) => ({netns: rawKey(e).readBigUInt64LE(0), ip: slotToIp(rawValue(e))}))
  },

  async originals(inst: Installation): Promise<{pair: Pair; origin: Origin}[]> {
    return (await bpftool.mapDump(inst.map('pair_original_dst'))).map((e) => ({pair: decodePair(rawKey(e)), origin: decodeOrigin(rawValue(e))}))
  },

  /** Sockets: their own view of the connection, and the socket cookie user space reads back. */
  async sockets(inst: Installation): Promise<{pair: Pair; cookie?: bigint}[]> {
    return (await bpftool.mapDump(inst.map('sock_pair_map'))).map((e) => {
      const v = e.value && e.value.length === 8 ? rawValue(e).readBigUInt64LE(0) : undefined
      return {pair: decodePair(rawKey(e)), cookie: v}
    })
  },

  async processes(inst: Installation): Promise<{pid: number; entry: ProcessEntry}[]> {
    return (await bpftool.mapDump(inst.map('process_ip'))).map((e) => ({pid: rawKey(e).readUInt32LE(0), entry: decodeProcess(rawValue(e))}))
  },

  async settings(inst: Installation): Promise<Settings | undefined> {
    const [e] = await bpftool.mapDump(inst.map('settings'))
    return e ? decodeSettings(rawValue(e)) : undefined
  },

  /** Per-CPU counters summed over CPUs. */
  async counters(inst: Installation): Promise<Record<CounterName, number>> {
    const out = Object.fromEntries(COUNTERS.map((n) => [n, 0])) as Record<CounterName, number>
    for (const e of await bpftool.mapDump(inst.map('counters'))) {
      const name = COUNTERS[rawKey(e).readUInt32LE(0)]
      if (!name) continue
      for (const cpu of e.values ?? []) out[name] += Number(bytesFromHex(cpu.value).readBigUInt64LE(0))
    }
    return out
  },
}
