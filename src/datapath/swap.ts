/**
 * Replacing a running datapath without a moment of nothing attached. The new programs are loaded
 * beside the old ones (under <bpffs>/next) and share their maps, so pods, settings, tracked
 * sockets and original destinations carry over and any mix of old and new programs works. Then,
 * attach point by attach point, the new program is attached before the old one is detached (a
 * connect hook that runs twice is harmless: the second sees an address already rewritten and
 * leaves it), sk_msg and tc are replaced in place, and only then do the new pins take the old
 * ones' places.
 *
 * When the maps' layout changed (a new version's structs, another capacity) they cannot be
 * shared: the new programs get maps of their own, configured and filled with the pods before
 * anything is attached, and run beside the old datapath, each connection answered by the programs
 * that rewrote it, until the old one is drained and detached (swapOnNewMaps).
 */
import {existsSync} from 'node:fs'
import {mkdir, readdir, rename, unlink} from 'node:fs/promises'
import {join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {describeError, MerbridgeError} from '../errors.js'
import {attachInbound, type InboundTarget} from '../node/tc-inbound.js'
import type {Installation} from './installation.js'
import {programsOf, type Stopped, stopPrograms} from './disable.js'
import {MAP_NAMES, PROGRAMS, type ProgramSpec} from '../bpf/programs.js'

/**
 * How a replacement was staged: on the running maps ('shared'), on maps of its own because the
 * layout changed ('new maps', with what changed), or not at all (with why: then disable and load).
 */
export type Staging = {staged: 'shared'} | {staged: 'new maps' | false; why: string}

/**
 * Load the new object beside the running one, on its maps where their definitions match:
 * bpftool reuses a map whatever its size or layout, so the new object is first loaded on maps of
 * its own, and each map's type, key and value size and capacity compared. Where any differs, that
 * load is kept.
 */
export async function stageReplacement(inst: Installation, object: string): Promise<Staging> {
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
      for (const k of ['type', 'bytes_key', 'bytes_value', 'max_entries'] as const)
        if (now?.[k] !== next?.[k]) changed.push(`${m} ${k} ${String(now?.[k])} -> ${String(next?.[k])}`)
    }
    if (changed.length > 0)
      return {
        staged: 'new maps',
        why: `the maps change (${changed.slice(0, 3).join(', ')}${changed.length > 3 ? ', ...' : ''}): they cannot be shared`,
      }
    await fresh()
    await bpftool.loadAllReusing(
      object,
      join(inst.stagingDir, 'progs'),
      join(inst.stagingDir, 'maps'),
      MAP_NAMES.map((m) => [m, inst.map(m)]),
    )
    return {staged: 'shared'}
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
export async function swapPrograms(
  inst: Installation,
  cgroup: string,
  tcHelper: string,
  podNamespaces: readonly InboundTarget[],
): Promise<void> {
  const done: Swapped[] = []
  // the old pins stay until every attach point runs the new programs
  const old = await bpftool.progsShowPinned(PROGRAMS.map((p) => inst.prog(p.name)))
  try {
    for (const [i, spec] of PROGRAMS.entries()) {
      const staged = inst.stagedProg(spec.name)
      if (spec.target === 'cgroup') {
        const oldId = old[i]?.id
        await bpftool.cgroupAttach(cgroup, spec.attachType, staged)
        done.push({spec, ...(oldId === undefined ? {} : {oldId})})
        if (oldId !== undefined) await bpftool.cgroupDetach(cgroup, spec.attachType, oldId)
      } else if (spec.target === 'sock_pair_map') {
        done.push({spec})
        await bpftool.progAttachToMap(staged, spec.attachType, inst.map('sock_pair_map'))
      } else {
        done.push({spec})
        const tc = await attachInbound(tcHelper, staged, podNamespaces, inst.dir)
        if (tc.failed.size > 0)
          throw new MerbridgeError(
            `cannot replace inbound capture in ${tc.failed.size} pod namespace(s): ${[...tc.failed.values()][0] ?? ''}`,
            {code: 'TC_ATTACH'},
          )
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
async function putBack(
  inst: Installation,
  cgroup: string,
  tcHelper: string,
  podNamespaces: readonly InboundTarget[],
  done: Swapped[],
): Promise<void> {
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

/**
 * How long the old programs stay attached, not rewriting any more, once the new ones rewrite new
 * connections: a proxy asks SO_ORIGINAL_DST right after it accepts, and the connections the old
 * connect hooks rewrote have their answer in the old maps only. Releasing the old sockhash's
 * sockets adds to it.
 */
const RETIRE_DRAIN_MS = 3000

/**
 * Replace a running datapath by one staged on maps of its own (configured and filled with the
 * pods already). Every new program is attached beside its old twin (cgroup hooks run both; sk_msg
 * sits on its own sockhash), tc is replaced in place in each pod, and only then is the old
 * datapath drained and detached (disable's steps, pins kept): a new connection is rewritten by the
 * old programs or by the new ones, never by none, and answered by the same ones. A failure before
 * the old datapath is drained takes the new programs off again; after `onCommitted` nothing is
 * taken back. Either way the failure is thrown. Returns what retiring the old datapath did.
 */
export async function swapOnNewMaps(
  inst: Installation,
  cgroup: string,
  tcHelper: string,
  podNamespaces: readonly InboundTarget[],
  onCommitted: () => void,
): Promise<Stopped> {
  const next = inst.staged()
  const old = await programsOf(inst, await inst.readState(), {staged: false})
  await linkNat(inst, next)
  const done: ProgramSpec[] = []
  try {
    for (const spec of PROGRAMS) {
      done.push(spec)
      if (spec.target === 'cgroup') await bpftool.cgroupAttach(cgroup, spec.attachType, next.prog(spec.name))
      else if (spec.target === 'sock_pair_map')
        await bpftool.progAttachToMap(next.prog(spec.name), spec.attachType, next.map('sock_pair_map'))
      else {
        const tc = await attachInbound(tcHelper, next.prog(spec.name), podNamespaces, inst.dir)
        if (tc.failed.size > 0)
          throw new MerbridgeError(
            `cannot replace inbound capture in ${tc.failed.size} pod namespace(s): ${[...tc.failed.values()][0] ?? ''}`,
            {code: 'TC_ATTACH'},
          )
      }
    }
  } catch (error) {
    await takeOff(inst, next, cgroup, tcHelper, podNamespaces, done)
    throw error
  }
  onCommitted()
  let stopped: Stopped
  try {
    stopped = await stopPrograms(inst, old, cgroup, {
      drainMs: RETIRE_DRAIN_MS,
      objectHash: (await inst.readState())?.objectHash,
      staged: false,
      tc: false,
    })
  } catch (error) {
    // both stay pinned (the old in place, the new under next/), so disable finds every one
    throw new MerbridgeError(`the new programs run, but the previous ones could not all be detached: ${describeError(error).message}`, {
      code: 'SWAP_INCOMPLETE',
      suggestion: 'run merbridge disable, then merbridge enable',
    })
  }
  // the new pins take the old ones' places (a rename on bpffs replaces a pin at once)
  for (const sub of ['progs', 'maps'] as const) {
    for (const pin of await readdir(join(inst.stagingDir, sub))) await rename(join(inst.stagingDir, sub, pin), join(inst.dir, sub, pin))
  }
  await inst.removeStaging()
  return stopped
}

/**
 * Connections the old tc rewrote inbound keep their original destination only in its inbound_nat:
 * linked into the new datapath's inbound_nat_prev, where the new programs find (and adopt) each at
 * its next packet. Where the old map is missing or its entries have another form, there is nothing
 * to carry: those connections are reset, as after a disable.
 */
async function linkNat(inst: Installation, next: Installation): Promise<void> {
  const [old, now] = [await bpftool.mapShowPinned(inst.map('inbound_nat')), await bpftool.mapShowPinned(next.map('inbound_nat'))]
  if (!old || !now) return
  if (old.type !== now.type || old.bytes_key !== now.bytes_key || old.bytes_value !== now.bytes_value) return
  await bpftool.mapSetInner(next.map('inbound_nat_prev'), inst.map('inbound_nat'))
}

/** Undo part of swapOnNewMaps: tc back to the old program, the new cgroup programs detached. Never throws. */
async function takeOff(
  inst: Installation,
  next: Installation,
  cgroup: string,
  tcHelper: string,
  podNamespaces: readonly InboundTarget[],
  done: ProgramSpec[],
): Promise<void> {
  for (const spec of [...done].reverse()) {
    try {
      if (spec.target === 'cgroup') {
        const id = (await bpftool.progShowPinned(next.prog(spec.name)))?.id
        if (id !== undefined) await bpftool.cgroupDetach(cgroup, spec.attachType, id)
      } else if (spec.target === 'sock_pair_map') {
        await bpftool.progDetachFromMap(next.prog(spec.name), spec.attachType, next.map('sock_pair_map'))
      } else {
        await attachInbound(tcHelper, inst.prog(spec.name), podNamespaces, inst.dir)
      }
    } catch {
      // best effort: `status` reports what is not attached, and the next enable repairs it
    }
  }
}
