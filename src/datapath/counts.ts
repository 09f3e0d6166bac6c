import {existsSync} from 'node:fs'
import {mkdir, rm} from 'node:fs/promises'
import {dirname} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import type {BuiltObjects} from '../bpf/objects.js'
import {describeError} from '../errors.js'
import type {Installation} from './installation.js'

/**
 * Pin the entry-count iterators beside the installation, unless they are there. Best effort: a
 * kernel without map element counts (before 6.6) cannot load them, and status then counts by
 * dumping. Returns why they are not pinned, if they are not.
 */
export async function pinCounters(inst: Installation, objects: Pick<BuiltObjects, 'counters'>): Promise<string | undefined> {
  const pins = inst.counterPins
  if (existsSync(pins.maps) && existsSync(pins.sockhash)) return undefined
  try {
    await mkdir(dirname(pins.maps), {recursive: true})
    if (!existsSync(pins.maps)) await bpftool.iterPin(objects.counters.maps, pins.maps)
    if (!existsSync(pins.sockhash)) await bpftool.iterPin(objects.counters.sockhash, pins.sockhash, inst.map('sock_pair_map'))
    return undefined
  } catch (error) {
    await rm(dirname(pins.maps), {recursive: true, force: true})
    return describeError(error).message
  }
}
