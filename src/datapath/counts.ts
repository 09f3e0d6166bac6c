import {existsSync} from 'node:fs'
import {mkdir, rm} from 'node:fs/promises'
import {dirname} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import type {BuiltObjects} from '../bpf/objects.js'
import {turnedOff, type Unavailable} from '../bpf/optional.js'
import type {Installation} from './installation.js'
import {loadFailure} from './probes.js'

/**
 * Pin the entry-count iterators beside the installation, each unless it is there, and try the
 * socket iterator disable will pin, so that the record says now what disable would go without.
 * Each is optional (bpf/optional.ts): without a counter status counts by dumping. Returns why each
 * that is not available is not.
 */
export async function pinIterators(inst: Installation, objects: Pick<BuiltObjects, 'counters' | 'sockhashQueued'>): Promise<Unavailable> {
  const pins = inst.counterPins
  const unavailable: Unavailable = {}
  // an earlier version's socket counter holds the sock_pair_map it was pinned for
  await rm(inst.legacyCounterPin, {force: true})
  const tries = [
    {feature: 'map-element-count', pin: pins.maps, object: objects.counters.maps, map: undefined, keep: true},
    {feature: 'sockhash-size', pin: pins.sockhash, object: objects.counters.sockhash, map: undefined, keep: true},
    // a pin there is a disable's, still releasing sockets: it loaded, and is left to it
    {feature: 'sockmap-iterator', pin: inst.queuedPin, object: objects.sockhashQueued, map: inst.map('sock_pair_map'), keep: false},
  ] as const
  for (const t of tries) {
    const off = turnedOff(t.feature)
    if (off) {
      if (t.keep) await rm(t.pin, {force: true})
      unavailable[t.feature] = off
      continue
    }
    if (existsSync(t.pin)) continue
    try {
      await mkdir(dirname(t.pin), {recursive: true})
      await bpftool.iterPin(t.object, t.pin, t.map)
      if (!t.keep) await rm(t.pin, {force: true})
    } catch (error) {
      await rm(t.pin, {force: true})
      unavailable[t.feature] = loadFailure(error)
    }
  }
  return unavailable
}
