import {existsSync} from 'node:fs'
import {readdir} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {buildObjects, HELPER_FILES} from '../bpf/objects.js'
import {readMaps} from '../bpf/maps.js'
import {MerbridgeError} from '../errors.js'
import {run} from '../exec.js'
import {listNetnsCandidates} from '../node/netns.js'
import {detachInbound} from '../node/tc-inbound.js'
import {BPFFS_MOUNT, cacheDir} from '../paths.js'
import {Installation} from './installation.js'
import {PROGRAMS} from '../bpf/programs.js'
import {writeSettings} from './settings.js'

/**
 * Time for payload already moved socket to socket to be read before the sockets leave the map:
 * a socket dropped from a sockhash with data still on its ingress queue can lose or stall that
 * stream (kernel behaviour). A replace that reuses the maps would not need it (issue 11).
 */
const DRAIN_MS = 1000

export interface DisableResult {
  bpffs: string
  wasEnabled: boolean
  /** where each program was detached from: a cgroup path, sock_pair_map for the sk_msg program, or a pod interface ("netns PATH dev IF") for mb_tc_inbound */
  detached: {cgroup: string; program: string; id: number}[]
  unpinned: string[]
}

/** Where each of our programs (by id) is attached, found from the kernel rather than from records. */
async function findAttachments(progIds: Map<number, string>): Promise<{cgroup: string; attachType: string; id: number; name: string}[]> {
  const out: {cgroup: string; attachType: string; id: number; name: string}[] = []
  if (progIds.size === 0) return out
  for (const cg of await bpftool.cgroupTree()) {
    for (const p of cg.programs) {
      const name = progIds.get(p.id)
      if (name) out.push({cgroup: cg.cgroup, attachType: p.attach_type, id: p.id, name})
    }
  }
  return out
}

/** The tc-inbound helper enable kept (no compiler needed), else the cached build, else a fresh build. */
async function tcHelper(inst: Installation, objectHash: string | undefined): Promise<string> {
  const cached = objectHash ? join(cacheDir(), objectHash, HELPER_FILES.tcInbound) : undefined
  return inst.keptHelpers()?.tcInbound ?? (cached && existsSync(cached) ? cached : (await buildObjects()).tcInbound)
}

/** bpftool's attach-type argument for the kernel's name of it. */
function attachArg(kernelAttachType: string, progName: string): string {
  return PROGRAMS.find((p) => p.kernelAttachType === kernelAttachType || p.name === progName)?.attachType ?? kernelAttachType
}

/**
 * Remove everything of one installation, also a half one: stop rewriting first (so established
 * connections continue over TCP), detach every attachment of our programs wherever it is,
 * unpin, and verify nothing is left. Idempotent.
 */
export async function disable(inst: Installation, opts: {drainMs?: number} = {}): Promise<DisableResult> {
  // before anything changes: a folder that is not an installation of ours is refused whole
  await inst.checkOurs()
  const state = await inst.readState()
  const result: DisableResult = {bpffs: inst.dir, wasEnabled: false, detached: [], unpinned: []}
  const progIds = new Map<number, string>()
  // the running programs, and a replacement's (a swap interrupted midway may have attached some)
  for (const p of PROGRAMS) {
    for (const pin of [inst.prog(p.name), inst.stagedProg(p.name)]) {
      const info = await bpftool.progShowPinned(pin)
      if (info) progIds.set(info.id, p.name)
    }
  }
  result.wasEnabled = progIds.size > 0 || state !== undefined || inst.exists()

  // 1. Stop rewriting new connects and moving payload; what was moved is read before anything goes.
  if (existsSync(inst.map('settings'))) {
    const s = await readMaps.settings(inst).catch(() => undefined)
    if (s?.outboundPort && !s.draining) {
      await writeSettings(inst, {...s, draining: true})
      await sleep(opts.drainMs ?? DRAIN_MS)
    }
  }

  // 2. Inbound capture off in every pod namespace (draining already made it let everything pass).
  const tcIds = [...progIds].filter(([, name]) => name === 'mb_tc_inbound').map(([id]) => id)
  if (tcIds.length > 0) {
    const paths = (await listNetnsCandidates()).map((c) => c.path)
    for (const tcId of tcIds) {
      const tc = await detachInbound(await tcHelper(inst, state?.objectHash), tcId, paths)
      for (const [path, ifaces] of tc.done) for (const dev of ifaces) result.detached.push({cgroup: `netns ${path} dev ${dev}`, program: 'mb_tc_inbound', id: tcId})
    }
  }

  // 3. Detach, connect4 first so no connection is rewritten without getsockopt to answer it.
  const attachments = await findAttachments(progIds)
  const order = (name: string) => -PROGRAMS.findIndex((p) => p.name === name)
  attachments.sort((a, b) => order(a.name) - order(b.name))
  for (const a of attachments) {
    await bpftool.cgroupDetach(a.cgroup, attachArg(a.attachType, a.name), a.id)
    result.detached.push({cgroup: a.cgroup, program: a.name, id: a.id})
  }
  const msg = PROGRAMS.find((p) => p.target === 'sock_pair_map')
  for (const pin of msg ? [inst.prog(msg.name), inst.stagedProg(msg.name)] : []) {
    if (!msg || !existsSync(pin) || !existsSync(inst.map('sock_pair_map'))) continue
    const id = (await bpftool.progShowPinned(pin))?.id
    if (id !== undefined && (await bpftool.progDetachFromMap(pin, msg.attachType, inst.map('sock_pair_map'))))
      result.detached.push({cgroup: 'sock_pair_map', program: msg.name, id})
  }

  // 4. Unpin: removing the pins frees programs and maps once nothing else holds them.
  result.unpinned = await inst.removePins()
  await inst.removeState()
  if (state?.mountedBpffs && existsSync(BPFFS_MOUNT) && (await readdir(BPFFS_MOUNT)).length === 0)
    await run('umount', [BPFFS_MOUNT], {allowFailure: true})

  // 5. Verify.
  const left = await findAttachments(progIds)
  if (left.length > 0 || inst.exists())
    throw new MerbridgeError(`disable left ${left.length} attachment(s)${inst.exists() ? ` and pins in ${inst.dir}` : ''} behind`, {
      code: 'DISABLE_INCOMPLETE',
      suggestion: 'run merbridge disable again; `bpftool cgroup tree` shows what is attached',
    })
  return result
}
