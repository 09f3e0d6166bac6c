import {randomBytes} from 'node:crypto'
import {mkdir, rm} from 'node:fs/promises'
import {join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import type {BuiltObjects} from '../bpf/objects.js'
import {OPTIONAL_FEATURE_NAMES, type OptionalFeature, turnedOff} from '../bpf/optional.js'
import {describeError, MerbridgeError, ToolFailedError} from '../errors.js'
import {isBpffs, readMounts} from '../node/mounts.js'
import {netnsCookies} from '../node/netns.js'
import {BPFFS_MOUNT} from '../paths.js'
import {LAYOUT} from '../bpf/layout.js'

/**
 * What this kernel can do, found by doing it: the built objects are loaded into a throwaway pin
 * folder and removed, nothing attached. A distribution kernel with backports is judged by what it
 * has, not by its version.
 */
export interface ProbeResults {
  /** why the datapath object does not load, if it does not */
  datapath?: string
  /** why SO_NETNS_COOKIE cannot be read, if it cannot */
  netnsCookie?: string
  /** why each optional feature is unavailable (absent: available) */
  unavailable: Partial<Record<OptionalFeature, string>>
}

/** Why a load failed, in the kernel's words where libbpf quotes them, or the kernel function it lacks. */
export function loadFailure(error: unknown): string {
  const stderr = error instanceof ToolFailedError ? error.stderr : ''
  const kernel = /prog '([^']+)': BPF program load failed: ([^\n]+)/.exec(stderr)
  if (kernel) return `the kernel refused ${kernel[1]}: ${kernel[2]}`
  const missing = /extern \((?:func )?ksym\) '([^']+)': not found in kernel/.exec(stderr)
  return missing ? `the kernel lacks ${missing[1]}` : describeError(error).message
}

async function attempt(work: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await work()
    return undefined
  } catch (error) {
    return loadFailure(error)
  }
}

export async function probeLoads(objects: BuiltObjects): Promise<ProbeResults> {
  if (!isBpffs(readMounts(), BPFFS_MOUNT))
    throw new MerbridgeError(`not probed: ${BPFFS_MOUNT} is not mounted`, {
      suggestion: `mount -t bpf bpf ${BPFFS_MOUNT} (enable mounts it), then run merbridge doctor again`,
    })
  // bpffs refuses names with a dot
  const dir = join(BPFFS_MOUNT, `merbridge-probe-${process.pid}-${randomBytes(4).toString('hex')}`)
  await mkdir(dir)
  try {
    const result: ProbeResults = {unavailable: {}}
    result.datapath = await attempt(() => bpftool.loadAll(objects.datapath, join(dir, 'progs'), join(dir, 'maps')))
    result.netnsCookie = await attempt(async () => {
      const [cookie] = (await netnsCookies(objects.netnsCookie, ['/proc/self/ns/net'])).values()
      if (!cookie) throw new Error('the kernel does not answer SO_NETNS_COOKIE (Linux 5.14+)')
    })
    const sockhash = join(dir, 'sockhash')
    const loads: Partial<Record<OptionalFeature, () => Promise<unknown>>> = {
      'map-element-count': () => bpftool.iterPin(objects.counters.maps, join(dir, 'counts')),
      'sockhash-size': () => bpftool.iterPin(objects.counters.sockhash, join(dir, 'sockets')),
      'sockmap-iterator': async () => {
        // keyed as sock_pair_map: attaching refuses an iterator that reads more of a key than the map has
        await bpftool.mapCreate(sockhash, 'sockhash', LAYOUT.mb_pair.size, 8, 1, 'mb_probe')
        await bpftool.iterPin(objects.sockhashQueued, join(dir, 'queued'), sockhash)
      },
    }
    for (const feature of OPTIONAL_FEATURE_NAMES) {
      const load = loads[feature]
      const why = turnedOff(feature) ?? (load ? await attempt(load) : undefined)
      if (why !== undefined) result.unavailable[feature] = why
    }
    return result
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
}
