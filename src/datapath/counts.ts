import {existsSync} from 'node:fs'
import {mkdir, rm} from 'node:fs/promises'
import {dirname} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import type {BuiltObjects} from '../bpf/objects.js'
import {turnedOff, type Unavailable} from '../bpf/optional.js'
import type {Installation} from './installation.js'
import {loadFailure} from './probes.js'

/**
 * Pin the entry-count iterators beside the installation, each unless it is there. Each is optional
 * (bpf/optional.ts): a kernel that cannot load one makes status count that way by dumping. Returns
 * why each that is not pinned is not.
 */
export async function pinCounters(inst: Installation, objects: Pick<BuiltObjects, 'counters'>): Promise<Unavailable> {
  const pins = inst.counterPins
  const unavailable: Unavailable = {}
  const tries = [
    {feature: 'map-element-count', pin: pins.maps, object: objects.counters.maps, map: undefined},
    {feature: 'sockmap-iterator', pin: pins.sockhash, object: objects.counters.sockhash, map: inst.map('sock_pair_map')},
  ] as const
  for (const t of tries) {
    const off = turnedOff(t.feature)
    if (off) {
      await rm(t.pin, {force: true})
      unavailable[t.feature] = off
      continue
    }
    if (existsSync(t.pin)) continue
    try {
      await mkdir(dirname(t.pin), {recursive: true})
      await bpftool.iterPin(t.object, t.pin, t.map)
    } catch (error) {
      await rm(t.pin, {force: true})
      unavailable[t.feature] = loadFailure(error)
    }
  }
  return unavailable
}
