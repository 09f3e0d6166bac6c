/**
 * Replacing a running datapath without a moment of nothing attached. The new programs are loaded
 * beside the old ones (under <bpffs>/next) and share their maps, so pods, settings, tracked
 * sockets and original destinations carry over and any mix of old and new programs works. Then,
 * attach point by attach point, the new program is attached before the old one is detached (a
 * connect hook that runs twice is harmless: the second sees an address already rewritten and
 * leaves it), sk_msg and tc are replaced in place, and only then do the new pins take the old
 * ones' places. When the maps' layout changed, sharing them is impossible and the caller falls
 * back to disabling and loading anew.
 */
import {existsSync} from 'node:fs'
import {mkdir, unlink} from 'node:fs/promises'
import {join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {describeError, MerbridgeError} from '../errors.js'
import {attachInbound, type InboundTarget} from '../node/tc-inbound.js'
import type {Installation} from './installation.js'
import {MAP_NAMES, PROGRAMS, type ProgramSpec} from '../bpf/programs.js'

/**
 * Load the new object beside the running one, on its maps. False (and nothing left) when the maps'
 * definitions differ: bpftool reuses a map whatever its size or layout, so the new object is first
 * loaded on maps of its own, and each map's type, key and value size and capacity compared.
 */
export async function stageReplacement(inst: Installation, object: string): Promise<{staged: boolean; why?: string}> {
  const fresh = async () => {
    await inst.removeStaging() // a replacement interrupted before: never attached once its pins are here only
    await mkdir(join(inst.stagingDir, 'progs'), {recursive: true})
    await mkdir(join(inst.stagingDir, 'maps'), {recursive: true})
  }
  await fresh()
  try {
    await bpftool.loadAll(object, join(inst.stagingDir, 'progs'), join(inst.stagingDir, 'maps'))
    const changed: string[] = []
    for (const m of MAP_NAMES) {
      const [now, next] = [await bpftool.mapShowPinned(inst.map(m)), await bpftool.mapShowPinned(join(inst.stagingDir, 'maps', m))]
      for (const k of ['type', 'bytes_key', 'bytes_value', 'max_entries'] as const) if (now?.[k] !== next?.[k]) changed.push(`${m} ${k} ${String(now?.[k])} -> ${String(next?.[k])}`)
    }
    await fresh()
    if (changed.length > 0) {
      await inst.removeStaging()
      return {staged: false, why: `the maps change (${changed.slice(0, 3).join(', ')}${changed.length > 3 ? ', ...' : ''}): they cannot be shared`}
    }
    await bpftool.loadAllReusing(object, join(inst.stagingDir, 'progs'), join(inst.stagingDir, 'maps'), MAP_NAMES.map((m) => [m, inst.map(m)]))
    return {staged: true}
  } catch (error) {
    await inst.removeStaging()
    return {staged: false, why: describeError(error).message}
  }
}

interface Swapped {
  spec: ProgramSpec
  /** the old program's id, detached from the cgroup (cgroup programs) */
  oldId?: number
}

/**
 * Put each staged program in its running twin's place, then move the pins. On a failure the
 * programs already swapped are put back, so the old datapath stays whole, and the error is thrown.
 */
export async function swapPrograms(inst: Installation, cgroup: string, tcHelper: string, podNamespaces: readonly InboundTarget[]): Promise<void> {
  const done: Swapped[] = []
  try {
    for (const spec of PROGRAMS) {
      const staged = inst.stagedProg(spec.name)
      if (spec.target === 'cgroup') {
        const oldId = (await bpftool.progShowPinned(inst.prog(spec.name)))?.id
        await bpftool.cgroupAttach(cgroup, spec.attachType, staged)
        done.push({spec, ...(oldId === undefined ? {} : {oldId})})
        if (oldId !== undefined) await bpftool.cgroupDetach(cgroup, spec.attachType, oldId)
      } else if (spec.target === 'sock_pair_map') {
        done.push({spec})
        await bpftool.progAttachToMap(staged, spec.attachType, inst.map('sock_pair_map'))
      } else {
        done.push({spec})
        const tc = await attachInbound(tcHelper, staged, podNamespaces, inst.dir)
        if (tc.failed.size > 0) throw new MerbridgeError(`cannot replace inbound capture in ${tc.failed.size} pod namespace(s): ${[...tc.failed.values()][0] ?? ''}`, {code: 'TC_ATTACH'})
      }
    }
  } catch (error) {
    await putBack(inst, cgroup, tcHelper, podNamespaces, done)
    throw error
  }
  // every attach point runs the new programs: the pins follow
  for (const spec of PROGRAMS) {
    // a program this version added has no old pin
    if (existsSync(inst.prog(spec.name))) await unlink(inst.prog(spec.name))
    await bpftool.progPin(inst.stagedProg(spec.name), inst.prog(spec.name))
  }
  await inst.removeStaging()
}

/** Undo part of a swap: the old program back where the new one went, last first. Never throws. */
async function putBack(inst: Installation, cgroup: string, tcHelper: string, podNamespaces: readonly InboundTarget[], done: Swapped[]): Promise<void> {
  for (const {spec, oldId} of [...done].reverse()) {
    try {
      if (spec.target === 'cgroup') {
        if (oldId !== undefined) await bpftool.cgroupAttach(cgroup, spec.attachType, inst.prog(spec.name))
        const newId = (await bpftool.progShowPinned(inst.stagedProg(spec.name)))?.id
        if (newId !== undefined) await bpftool.cgroupDetach(cgroup, spec.attachType, newId).catch(() => undefined)
      } else if (spec.target === 'sock_pair_map') {
        await bpftool.progAttachToMap(inst.prog(spec.name), spec.attachType, inst.map('sock_pair_map'))
      } else {
        await attachInbound(tcHelper, inst.prog(spec.name), podNamespaces, inst.dir)
      }
    } catch {
      // best effort: `status` reports what is not attached, and the next enable repairs it
    }
  }
}
