import {existsSync, readlinkSync, statSync} from 'node:fs'
import {mkdir, readdir, readFile, rm} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {dirname, join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {buildObjects, HELPER_FILES, type Helpers} from '../bpf/objects.js'
import {readMaps} from '../bpf/maps.js'
import {decodeQueuedRecords, type Queued} from '../bpf/layout.js'
import {requireTrustedDir} from '../trust.js'
import {MerbridgeError} from '../errors.js'
import {loadFailure} from './probes.js'
import {turnedOff, type Unavailable} from '../bpf/optional.js'
import {run} from '../exec.js'
import {listNetnsCandidates} from '../node/netns.js'
import {uninstallCni} from '../node/cni-config.js'
import {detachInbound} from '../node/tc-inbound.js'
import {BPFFS_MOUNT, cacheDir} from '../paths.js'
import {type InstallState, Installation} from './installation.js'
import {PROGRAMS} from '../bpf/programs.js'
import {writeSettings} from './settings.js'

/** Time for a redirect decided before the draining flag was set to land on its socket's queue. */
const DRAIN_MS = 1000
const MIN_SETTLE_MS = 100
/**
 * How long disable waits for sockets to read what sk_msg moved to them. A socket leaves the
 * sockhash only when deleted or closed: its psock holds the sk_msg program, which holds the map,
 * so unpinning alone would leave every tracked connection's psock, the program and its maps in
 * the kernel until the connection closed. Deleting a socket with unread data drops that data with
 * its psock, so such a socket is left in place (freed when it closes) once this has passed.
 */
const RELEASE_MS = 10_000
const RELEASE_POLL_MS = 100
/** passes even with no time to wait: a delete batch stops at a socket that closed meanwhile */
const RELEASE_MIN_PASSES = 3

export interface DisableResult {
  bpffs: string
  wasEnabled: boolean
  /** sockets of sock_pair_map deleted from it once they had read what was moved to them */
  released: number
  /** sockets still holding unread data when disable gave up waiting: left in the unpinned map until they close */
  unreleased: number
  /** optional kernel features this disable went without, and why (bpf/optional.ts) */
  unavailable: Unavailable
  /** the node's CNI configuration files merbridge-cni was taken out of: put back whole, or only our entry removed */
  cniConfig?: {restored: string[]; edited: string[]; unreachable?: string}
  /** where each program was detached from: a cgroup path, sock_pair_map for the sk_msg program, or a pod interface ("netns PATH dev IF") for mb_tc_inbound */
  detached: {cgroup: string; program: string; id: number}[]
  unpinned: string[]
}

/** Where each of our programs (by id) is attached, found from the kernel rather than from records. */
async function findAttachments(
  progIds: Map<number, string>,
  root?: string,
): Promise<{cgroup: string; attachType: string; id: number; name: string}[]> {
  const out: {cgroup: string; attachType: string; id: number; name: string}[] = []
  if (progIds.size === 0) return out
  // from the cgroup enable attached to: `bpftool cgroup tree` alone walks only what this process's
  // cgroup namespace shows (a container's own subtree), and would find nothing of ours
  for (const cg of await bpftool.cgroupTree(root)) {
    for (const p of cg.programs) {
      const name = progIds.get(p.id)
      if (name) out.push({cgroup: cg.cgroup, attachType: p.attach_type, id: p.id, name})
    }
  }
  return out
}

/** The host's own cgroup namespace has a fixed inode (the kernel's PROC_CGROUP_INIT_INO). */
function inInitialCgroupNamespace(): boolean {
  try {
    return readlinkSync('/proc/self/ns/cgroup') === 'cgroup:[4026531835]'
  } catch {
    return true // no cgroup namespaces at all
  }
}

/** A helper enable kept with the installation (no compiler needed), else the cached build's, if either is there. */
function keptOrCached(inst: Installation, objectHash: string | undefined, helper: keyof Helpers): string | undefined {
  const kept = inst.keptHelpers()?.[helper]
  if (kept !== undefined && existsSync(kept)) return kept
  if (objectHash === undefined) return undefined
  requireTrustedDir(cacheDir(), 'the object cache')
  const cached = join(cacheDir(), objectHash, HELPER_FILES[helper])
  return existsSync(cached) ? cached : undefined
}

/**
 * Delete from sock_pair_map every socket that has read what was moved to it, until none is left or
 * waitMs has passed; the rest stay (see RELEASE_MS). Without the socket map iterator (an optional
 * kernel feature) no socket can be told apart: all stay tracked, counted from a dump, and the
 * returned reason says why.
 */
async function releaseSockets(
  inst: Installation,
  iterator: string | undefined,
  waitMs: number,
): Promise<{released: number; unreleased: number; without?: string}> {
  const pin = inst.queuedPin
  let released = 0
  let holding: Queued[]
  const without = turnedOff('sockmap-iterator') ?? (iterator ? undefined : 'the installation kept no socket iterator')
  const leaveAll = async (why: string) => ({released, unreleased: await bpftool.mapCount(inst.map('sock_pair_map')), without: why})
  if (without || !iterator) return leaveAll(without ?? '')
  try {
    await mkdir(dirname(pin), {recursive: true})
    await bpftool.iterPin(iterator, pin, inst.map('sock_pair_map'))
  } catch (error) {
    await rm(pin, {force: true})
    return leaveAll(loadFailure(error))
  }
  try {
    const deadline = Date.now() + waitMs
    for (let pass = 1; ; pass++) {
      const records = decodeQueuedRecords(await readFile(pin))
      const read = records.filter((r) => r.queued === 0)
      holding = records.filter((r) => r.queued > 0)
      let done = true
      try {
        await bpftool.batch(read.map((r) => bpftool.mapDeleteLine(inst.map('sock_pair_map'), r.key)))
        released += read.length
      } catch {
        // a socket closed between the read and its delete (the batch stops there): read again
        done = false
      }
      if ((done && holding.length === 0) || (Date.now() >= deadline && pass >= RELEASE_MIN_PASSES)) break
      await sleep(RELEASE_POLL_MS)
    }
  } finally {
    await rm(pin, {force: true})
  }
  return {released, unreleased: holding.length}
}

/** bpftool's attach-type argument for the kernel's name of it. */
function attachArg(kernelAttachType: string, progName: string): string {
  return PROGRAMS.find((p) => p.kernelAttachType === kernelAttachType || p.name === progName)?.attachType ?? kernelAttachType
}

/**
 * Our programs, by id: those pinned in the installation (with `staged`, a replacement's too: a
 * swap interrupted midway may have attached some), and those its record names that the kernel
 * still has under that name (a program whose pin is gone stays attached, found by its id; a name
 * alone could be another installation's).
 */
export async function programsOf(
  inst: Installation,
  state: InstallState | undefined,
  opts: {staged: boolean},
): Promise<Map<number, string>> {
  const progIds = new Map<number, string>()
  const pins = PROGRAMS.flatMap((p) =>
    [inst.prog(p.name), ...(opts.staged ? [inst.stagedProg(p.name)] : [])].map((pin) => ({pin, name: p.name})),
  )
  const infos = await bpftool.progsShowPinned(pins.map((p) => p.pin))
  for (const [i, {name}] of pins.entries()) {
    const info = infos[i]
    if (info) progIds.set(info.id, name)
  }
  for (const [name, id] of Object.entries(state?.programIds ?? {})) {
    if (progIds.has(id)) continue
    const info = await bpftool.progShowId(id)
    if (info && info.name !== '' && name.startsWith(info.name)) progIds.set(id, name)
  }
  return progIds
}

export type Stopped = Pick<DisableResult, 'released' | 'unreleased' | 'unavailable' | 'detached'>

/**
 * Take an installation's programs out of the datapath, pins and record left: stop rewriting and
 * moving payload (established connections continue over TCP), release the tracked sockets once
 * they read what was moved to them, take inbound capture off the pods (unless a successor already
 * took its place: `tc: false`), detach from the cgroups, connect hooks first, and from the sockhash.
 */
export async function stopPrograms(
  inst: Installation,
  progIds: Map<number, string>,
  root: string | undefined,
  opts: {drainMs?: number; objectHash?: string; staged: boolean; tc?: boolean},
): Promise<Stopped> {
  const result: Stopped = {released: 0, unreleased: 0, unavailable: {}, detached: []}
  // 1. Stop rewriting new connects and moving payload; what was moved is read before anything goes.
  // quiet: sk_msg moves nothing more (draining now, or never configured)
  let quiet = false
  if (existsSync(inst.map('settings'))) {
    const s = await readMaps.settings(inst).catch(() => undefined)
    if (s?.outboundPort && !s.draining) {
      await writeSettings(inst, {...s, draining: true})
      // even a hurried disable lets a redirect decided before the flag land before any socket is deleted
      await sleep(Math.max(opts.drainMs ?? DRAIN_MS, MIN_SETTLE_MS))
    }
    quiet = s !== undefined
  }
  // sockets leave the sockhash one by one, each once its queue is read (sk_msg redirects no more)
  if (quiet && existsSync(inst.map('sock_pair_map'))) {
    const {without, ...counts} = await releaseSockets(
      inst,
      keptOrCached(inst, opts.objectHash, 'sockhashQueued'),
      opts.drainMs === 0 ? 0 : RELEASE_MS,
    )
    Object.assign(result, counts)
    if (without !== undefined) result.unavailable['sockmap-iterator'] = without
  }

  // 2. Inbound capture off in every pod namespace (draining already made it let everything pass).
  const tcIds = opts.tc === false ? [] : [...progIds].filter(([, name]) => name === 'mb_tc_inbound').map(([id]) => id)
  if (tcIds.length > 0) {
    const paths = (await listNetnsCandidates({addresses: false})).map((c) => c.path)
    for (const tcId of tcIds) {
      const tc = await detachInbound(keptOrCached(inst, opts.objectHash, 'tcInbound') ?? (await buildObjects()).tcInbound, tcId, paths)
      for (const [path, ifaces] of tc.done)
        for (const dev of ifaces) result.detached.push({cgroup: `netns ${path} dev ${dev}`, program: 'mb_tc_inbound', id: tcId})
    }
  }

  // 3. Detach, connect4 first so no connection is rewritten without getsockopt to answer it.
  const attachments = await findAttachments(progIds, root)
  const order = (name: string) => -PROGRAMS.findIndex((p) => p.name === name)
  attachments.sort((a, b) => order(a.name) - order(b.name))
  await bpftool.cgroupDetachAll(attachments.map((a) => ({cgroup: a.cgroup, attachType: attachArg(a.attachType, a.name), id: a.id})))
  for (const a of attachments) result.detached.push({cgroup: a.cgroup, program: a.name, id: a.id})
  const msg = PROGRAMS.find((p) => p.target === 'sock_pair_map')
  for (const pin of msg ? [inst.prog(msg.name), ...(opts.staged ? [inst.stagedProg(msg.name)] : [])] : []) {
    if (!msg || !existsSync(pin) || !existsSync(inst.map('sock_pair_map'))) continue
    const id = (await bpftool.progShowPinned(pin))?.id
    if (id !== undefined && (await bpftool.progDetachFromMap(pin, msg.attachType, inst.map('sock_pair_map'))))
      result.detached.push({cgroup: 'sock_pair_map', program: msg.name, id})
  }
  return result
}

/**
 * Remove everything of one installation, also a half one: stop rewriting first (so established
 * connections continue over TCP), detach every attachment of our programs wherever it is,
 * unpin, and verify nothing is left. Idempotent.
 */
export async function disable(inst: Installation, opts: {drainMs?: number; keepFolder?: boolean} = {}): Promise<DisableResult> {
  // before anything changes: a folder that is not an installation of ours is refused whole
  await inst.checkOurs()
  const state = await inst.readState()
  // The recorded cgroup must be visible here, or nothing attached there could be found or detached:
  // refused before anything changes, rather than a "disabled" that leaves the datapath attached
  // (a cgroup namespace shows its own root at the same path: known by the cgroup's inode, its id)
  const root = state?.cgroup !== undefined && existsSync(state.cgroup) ? state.cgroup : undefined
  const invisible = (why: string) =>
    new MerbridgeError(`merbridge was enabled on cgroup ${state?.cgroup ?? '?'}, ${why}`, {
      code: 'CGROUP_NOT_VISIBLE',
      suggestion:
        "run disable where the host's cgroups are visible: on the host, or in a container that shares the host's cgroup namespace and mounts its cgroup2",
    })
  if (root !== undefined && state?.cgroupId !== undefined && statSync(root).ino !== state.cgroupId)
    throw invisible(`and this process sees another cgroup there (id ${statSync(root).ino}, not ${state.cgroupId})`)
  // gone from view: deleted (its programs went with it), or hidden by a cgroup namespace
  if (state?.cgroup !== undefined && root === undefined && !inInitialCgroupNamespace())
    throw invisible('which this process cannot see from its cgroup namespace')
  const result: DisableResult = {
    bpffs: inst.dir,
    wasEnabled: false,
    released: 0,
    unreleased: 0,
    unavailable: {},
    detached: [],
    unpinned: [],
  }
  const progIds = await programsOf(inst, state, {staged: true})
  const pinned = inst.exists() ? await inst.pinned() : {progs: [], maps: []}
  result.wasEnabled = progIds.size > 0 || state !== undefined || pinned.progs.length + pinned.maps.length > 0
  // first: pods set up from now on must not wait for an agent whose datapath is going
  // a folder this process does not see (enabled from a container, disabled from the node): said, not guessed at
  if (state?.cni)
    result.cniConfig = existsSync(state.cni.confDir) ? uninstallCni(state.cni) : {restored: [], edited: [], unreachable: state.cni.confDir}
  Object.assign(result, await stopPrograms(inst, progIds, root, {drainMs: opts.drainMs, objectHash: state?.objectHash, staged: true}))

  // 4. Unpin: removing the pins frees programs and maps once nothing else holds them.
  const keepFolder = opts.keepFolder ?? state?.keepFolder === true
  result.unpinned = await inst.removePins(keepFolder)
  await inst.removeState()
  if (state?.mountedBpffs && existsSync(BPFFS_MOUNT) && (await readdir(BPFFS_MOUNT)).length === 0)
    await run('umount', [BPFFS_MOUNT], {allowFailure: true})

  // 5. Verify.
  const left = await findAttachments(progIds, root)
  const after = inst.exists() ? await inst.pinned() : {progs: [], maps: []}
  const pinsLeft = keepFolder ? after.progs.length + after.maps.length > 0 : inst.exists()
  if (left.length > 0 || pinsLeft)
    throw new MerbridgeError(`disable left ${left.length} attachment(s)${pinsLeft ? ` and pins in ${inst.dir}` : ''} behind`, {
      code: 'DISABLE_INCOMPLETE',
      suggestion: 'run merbridge disable again; `bpftool cgroup tree` shows what is attached',
    })
  return result
}
