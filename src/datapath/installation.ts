import {existsSync, lstatSync} from 'node:fs'
import {copyFile, mkdir, readFile, readdir, rename, rm, rmdir, unlink, writeFile} from 'node:fs/promises'
import {basename, join, resolve} from 'node:path'
import {MerbridgeError} from '../errors.js'
import {requireTrustedDir} from '../trust.js'
import {isBpffs, readMounts} from '../node/mounts.js'
import {DEFAULT_BPFFS_DIR, runDir} from '../paths.js'
import {MAP_NAMES, type MapName, type MapPins, PROGRAMS} from '../bpf/programs.js'
import {DEFAULT_MAX_CONNECTIONS, HELPER_FILES, type Helpers} from '../bpf/objects.js'
import type {Unavailable} from '../bpf/optional.js'

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink()
  } catch {
    return false
  }
}

/** The pins of one installation, all below one bpffs folder. */
export class Installation implements MapPins {
  readonly dir: string

  /** `records` is where the record and kept helpers go: the run folder (MERBRIDGE_RUN_DIR) unless given. */
  constructor(
    dir = process.env.MERBRIDGE_BPFFS ?? DEFAULT_BPFFS_DIR,
    private readonly records = runDir(),
  ) {
    // an empty value would resolve to the working directory
    if (dir.trim() === '')
      throw new MerbridgeError('the bpffs folder is empty (--bpffs or MERBRIDGE_BPFFS)', {
        code: 'BAD_BPFFS',
        exitCode: 2,
        suggestion: `give a folder on a bpf filesystem, e.g. ${DEFAULT_BPFFS_DIR}, or unset MERBRIDGE_BPFFS`,
      })
    this.dir = resolve(dir)
    // one line instead of the kernel's ENAMETOOLONG or ENOTDIR from deep inside a command
    if (this.dir.length > 1024 || this.dir.split('/').some((part) => Buffer.byteLength(part) > 255))
      throw new MerbridgeError(`the bpffs folder (${this.dir.length} characters) is too long`, {
        code: 'BAD_BPFFS',
        exitCode: 2,
        suggestion: `give a shorter folder, e.g. ${DEFAULT_BPFFS_DIR}`,
      })
    if (isSymlink(this.dir))
      throw new MerbridgeError(`the bpffs folder ${this.dir} is a symbolic link`, {
        code: 'BAD_BPFFS',
        exitCode: 2,
        suggestion: 'give the folder itself: pins are never made through a link',
      })
    // bpftool batch lines carry pin paths: blanks are quoted there, these cannot be
    if (/["'\\\n\r]/.test(this.dir))
      throw new MerbridgeError(
        `the bpffs folder ${JSON.stringify(this.dir)} has a quote, backslash or line break, which bpftool's batch mode cannot read`,
        {code: 'BAD_BPFFS', exitCode: 2, suggestion: `give a folder name without them, e.g. ${DEFAULT_BPFFS_DIR}`},
      )
  }

  get progDir(): string {
    return join(this.dir, 'progs')
  }

  get mapDir(): string {
    return join(this.dir, 'maps')
  }

  prog(name: string): string {
    return join(this.progDir, name)
  }

  /** A replacement loaded beside the running programs, sharing their maps, until it takes their place. */
  get stagingDir(): string {
    return join(this.dir, 'next')
  }

  stagedProg(name: string): string {
    return join(this.stagingDir, 'progs', name)
  }

  map(name: MapName): string {
    return join(this.mapDir, name)
  }

  /**
   * The replacement staged beside this installation, seen as an installation of its own: its
   * programs and, when the maps' layout changed, its own maps, to configure and fill before it
   * takes this one's place. Same record.
   */
  staged(): Installation {
    return new StagedInstallation(this.dir, this.records)
  }

  /** Pinned iterators that print entry counts (see bpf/iter): hash maps', and sockhashes' sockets. */
  get counterPins(): {maps: string; sockhash: string} {
    return {maps: join(this.dir, 'counts', 'maps'), sockhash: join(this.dir, 'counts', 'sockhashes')}
  }

  /** An earlier version's socket counter, an iterator bound to sock_pair_map: the next enable removes it. */
  get legacyCounterPin(): string {
    return join(this.dir, 'counts', 'sock_pair_map')
  }

  /** Where disable pins, for as long as it releases the sockets, the iterator of what each has not read. */
  get queuedPin(): string {
    return join(this.dir, 'counts', 'queued')
  }

  /** One state file per installation folder, so test installations never meet the real one. */
  get stateFile(): string {
    return join(this.records, `${this.slug}.json`)
  }

  /**
   * enable's copy of the host helpers it built, so sync, the watch and disable need neither clang
   * nor the sources (nor the cache, which a user may clean).
   */
  get helperDir(): string {
    return join(this.records, `${this.slug}.helpers`)
  }

  private get slug(): string {
    return this.dir.replace(/^\/+/, '').replace(/[^A-Za-z0-9_.-]+/g, '_')
  }

  /** Copy the helpers of a build next to the record (a temporary folder renamed: never half a copy). */
  async keepHelpers(built: Helpers): Promise<void> {
    const tmp = `${this.helperDir}.${process.pid}.tmp`
    await rm(tmp, {recursive: true, force: true})
    await mkdir(tmp, {recursive: true})
    for (const key of Object.keys(HELPER_FILES) as (keyof Helpers)[]) await copyFile(built[key], join(tmp, HELPER_FILES[key]))
    await rm(this.helperDir, {recursive: true, force: true})
    await rename(tmp, this.helperDir)
  }

  /** The helpers enable kept, or undefined when they are gone (an older enable, or /run cleaned). */
  keptHelpers(): Helpers | undefined {
    requireTrustedDir(this.records, 'the records folder')
    const kept = {
      netnsCookie: join(this.helperDir, HELPER_FILES.netnsCookie),
      tcInbound: join(this.helperDir, HELPER_FILES.tcInbound),
      sockhashQueued: join(this.helperDir, HELPER_FILES.sockhashQueued),
      cniPlugin: join(this.helperDir, HELPER_FILES.cniPlugin),
    }
    // an older enable kept no sockhashQueued (disable then goes without it) and no cniPlugin
    return existsSync(kept.netnsCookie) && existsSync(kept.tcInbound) ? kept : undefined
  }

  /** The helpers for sync and the watch: enable's copy, else one line saying how to get it back. */
  requireHelpers(): Helpers {
    const kept = this.keptHelpers()
    if (!kept)
      throw new MerbridgeError(`the helper programs enable keeps in ${this.helperDir} are missing`, {
        code: 'NOT_ENABLED',
        exitCode: 3,
        suggestion: 'run merbridge enable again (it keeps the running datapath and restores them)',
      })
    return kept
  }

  exists(): boolean {
    return existsSync(this.dir)
  }

  /** One line, not bpftool's, when a map a command needs was unpinned by hand. */
  requireMaps(names: readonly MapName[]): void {
    const missing = names.filter((n) => !existsSync(this.map(n)))
    if (missing.length === 0) return
    throw new MerbridgeError(`the installation in ${this.dir} is incomplete: map ${missing.join(', ')} is not pinned`, {
      code: 'INCOMPLETE',
      exitCode: 4,
      suggestion: 'merbridge status shows what else is wrong; merbridge disable, then merbridge enable, rebuilds the installation',
    })
  }

  /** Names pinned now, e.g. to tell a complete installation from a half one. */
  async pinned(): Promise<{progs: string[]; maps: string[]}> {
    const list = async (d: string) => (existsSync(d) ? (await readdir(d)).sort() : [])
    return {progs: await list(this.progDir), maps: await list(this.mapDir)}
  }

  /**
   * Refuse, with one line, a folder merbridge must not remove or write into: one that is not on a
   * bpf filesystem, or that holds anything but the pins an installation makes (progs/<program>,
   * maps/<map>). Nothing is changed.
   */
  async checkOurs(): Promise<void> {
    if (!this.exists()) return
    if (!isBpffs(readMounts(), this.dir))
      throw new MerbridgeError(
        `${this.dir} is not on a bpf filesystem: it is not a merbridge installation, and merbridge leaves it alone`,
        {code: 'NOT_OURS', exitCode: 2, suggestion: 'give --bpffs the folder merbridge enable used (default /sys/fs/bpf/merbridge)'},
      )
    const known: Record<string, readonly string[]> = {
      progs: PROGRAMS.map((p) => p.name),
      maps: MAP_NAMES,
      counts: [this.counterPins.maps, this.counterPins.sockhash, this.legacyCounterPin, this.queuedPin].map((pin) => basename(pin)),
    }
    const foreign: string[] = []
    const look = async (dir: string, prefix: string) => {
      for (const entry of await readdir(dir)) {
        const names = known[entry]
        if (entry === 'next' && prefix === '') await look(join(dir, entry), 'next/')
        else if (!names) foreign.push(`${prefix}${entry}`)
        else for (const pin of await readdir(join(dir, entry))) if (!names.includes(pin)) foreign.push(`${prefix}${entry}/${pin}`)
      }
    }
    await look(this.dir, '')
    if (foreign.length > 0)
      throw new MerbridgeError(
        `${this.dir} holds ${foreign.length} pin(s) merbridge did not make (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', ...' : ''}): nothing was changed`,
        {
          code: 'NOT_OURS',
          exitCode: 2,
          suggestion: 'give merbridge a folder of its own (--bpffs)',
        },
      )
  }

  /** Remove the installation's pins one by one, then its folders: never anything else (checkOurs first). */
  /** Unpin everything; the folder itself too unless `keepFolder` (it was there before enable made pins in it). */
  async removePins(keepFolder = false): Promise<string[]> {
    await this.checkOurs()
    const removed: string[] = []
    if (!this.exists()) return removed
    removed.push(...(await this.removeStaging()))
    for (const sub of ['counts', 'progs', 'maps']) {
      const dir = join(this.dir, sub)
      if (!existsSync(dir)) continue
      for (const pin of await readdir(dir)) {
        await unlink(join(dir, pin))
        removed.push(`${sub}/${pin}`)
      }
      await rmdir(dir)
    }
    if (!keepFolder) await rmdir(this.dir)
    return removed
  }

  /** Remove a staged replacement's pins (the maps it shares stay pinned where they were). */
  async removeStaging(): Promise<string[]> {
    const removed: string[] = []
    if (!existsSync(this.stagingDir)) return removed
    for (const sub of ['progs', 'maps']) {
      const dir = join(this.stagingDir, sub)
      if (!existsSync(dir)) continue
      for (const pin of await readdir(dir)) {
        await unlink(join(dir, pin))
        removed.push(`next/${sub}/${pin}`)
      }
      await rmdir(dir)
    }
    await rmdir(this.stagingDir)
    return removed
  }

  async readState(): Promise<InstallState | undefined> {
    // the record names programs to detach and a cgroup: written by root alone
    requireTrustedDir(this.records, 'the records folder')
    try {
      return JSON.parse(await readFile(this.stateFile, 'utf8')) as InstallState
    } catch {
      return undefined
    }
  }

  /** The record, or the one error every command gives on a node where this installation is not enabled. */
  async requireState(): Promise<InstallState> {
    const state = await this.readState()
    if (!state) throw notEnabled(this)
    return state
  }

  async writeState(state: InstallState): Promise<void> {
    await mkdir(this.records, {recursive: true})
    const tmp = `${this.stateFile}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(state, null, 2) + '\n')
    await rename(tmp, this.stateFile)
  }

  async removeState(): Promise<void> {
    await rm(this.helperDir, {recursive: true, force: true})
    await rm(this.stateFile, {force: true})
  }
}

class StagedInstallation extends Installation {
  override get progDir(): string {
    return join(this.stagingDir, 'progs')
  }

  override get mapDir(): string {
    return join(this.stagingDir, 'maps')
  }
}

export function notEnabled(inst: Installation): MerbridgeError {
  return new MerbridgeError(`merbridge is not enabled with ${inst.dir}`, {
    code: 'NOT_ENABLED',
    exitCode: 3,
    suggestion: 'merbridge enable first (or give --bpffs the folder it used)',
  })
}

export interface PodRecord {
  namespace: string
  name: string
  ip: string
  /** a dual-stack pod's IPv6 address */
  ip6?: string
  /** netns cookie as a decimal string, when the pod's namespace was found on this node */
  netns?: string
  /** interfaces its inbound capture stays off (excludeInterfaces), when any */
  noInboundCapture?: string[]
  /** a meshed pod not registered: when a sync first found it so (older records have none) */
  since?: string
}

export interface SkippedPod {
  namespace: string
  name: string
  reason: string
  /** the reason as a short code (older records have none) */
  code?: string
  ip?: string
}

/** What enable recorded, for status and disable. */
export interface InstallState {
  version: 1
  bpffs: string
  cgroup: string
  mesh: string
  node: string
  objectHash: string
  /** capacity of the connection maps the objects were built with (absent: 65,535) */
  maxConnections?: number
  enabledAt: string
  /** whether enable mounted bpffs itself (disable then unmounts it when empty) */
  mountedBpffs: boolean
  hostNetns: string
  /** optional kernel features this installation goes without, and why (bpf/optional.ts) */
  unavailable?: Unavailable
  /** the pin folder was there before enable: disable leaves it (empty) */
  keepFolder?: boolean
  /** the cgroup's id (its folder's inode): in a cgroup namespace the same path names another cgroup */
  cgroupId?: number
  /** each program's id when enable recorded it: disable finds an attachment by it even when its pin is gone */
  programIds?: Record<string, number>
  pods: {source: string; syncedAt: string; meshed: PodRecord[]; unregistered: PodRecord[]; skipped: SkippedPod[]; warnings: string[]}
  /** where the watch put merbridge-cni into the node's CNI configuration: disable takes it out */
  cni?: {confDir: string; binDir: string}
  /** pods the runtime set up through merbridge-cni, by namespace/name: kept in that namespace by every sync */
  cniPods?: Record<string, CniPod>
}

/** A pod's network namespace as the runtime named it, and the addresses its CNI result gave. */
export interface CniPod {
  netns: string
  ips: string[]
}

/** Entries of each connection map (sock_pair_map, pair_original_dst) of an installation. */
export function connectionCapacity(state: Pick<InstallState, 'maxConnections'>): number {
  return state.maxConnections ?? DEFAULT_MAX_CONNECTIONS
}
