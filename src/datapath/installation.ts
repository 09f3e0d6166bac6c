import {existsSync} from 'node:fs'
import {mkdir, readFile, readdir, rename, rm, rmdir, unlink, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'
import {MerbridgeError} from '../errors.js'
import {isBpffs, readMounts} from '../node/mounts.js'
import {DEFAULT_BPFFS_DIR, runDir} from '../paths.js'

/**
 * How each program is attached: to the cgroup, (sk_msg) to the sockhash, or (tc) to the ingress
 * of each registered pod's interfaces, by the sync that registers the pod.
 */
export interface ProgramSpec {
  name: string
  /** bpftool's attach type argument */
  attachType: string
  /** the kernel's name for that attach type, as `bpftool cgroup show` prints it */
  kernelAttachType: string
  target: 'cgroup' | 'sock_pair_map' | 'pods'
}

/** In attach order: the listeners of events first, the connect hooks (which start rewriting) last. */
export const PROGRAMS: ProgramSpec[] = [
  {name: 'mb_msg_redirect', attachType: 'msg_verdict', kernelAttachType: 'sk_msg_verdict', target: 'sock_pair_map'},
  {name: 'mb_getsockopt', attachType: 'getsockopt', kernelAttachType: 'cgroup_getsockopt', target: 'cgroup'},
  {name: 'mb_sockops', attachType: 'sock_ops', kernelAttachType: 'cgroup_sock_ops', target: 'cgroup'},
  {name: 'mb_tc_inbound', attachType: 'tc_ingress', kernelAttachType: 'tc_ingress', target: 'pods'},
  {name: 'mb_recvmsg6', attachType: 'recvmsg6', kernelAttachType: 'cgroup_udp6_recvmsg', target: 'cgroup'},
  {name: 'mb_recvmsg4', attachType: 'recvmsg4', kernelAttachType: 'cgroup_udp4_recvmsg', target: 'cgroup'},
  {name: 'mb_getpeername6', attachType: 'getpeername6', kernelAttachType: 'cgroup_inet6_getpeername', target: 'cgroup'},
  {name: 'mb_getpeername4', attachType: 'getpeername4', kernelAttachType: 'cgroup_inet4_getpeername', target: 'cgroup'},
  {name: 'mb_sendmsg6', attachType: 'sendmsg6', kernelAttachType: 'cgroup_udp6_sendmsg', target: 'cgroup'},
  {name: 'mb_sendmsg4', attachType: 'sendmsg4', kernelAttachType: 'cgroup_udp4_sendmsg', target: 'cgroup'},
  {name: 'mb_connect6', attachType: 'connect6', kernelAttachType: 'cgroup_inet6_connect', target: 'cgroup'},
  {name: 'mb_connect4', attachType: 'connect4', kernelAttachType: 'cgroup_inet4_connect', target: 'cgroup'},
]

export const MAP_NAMES = [
  'local_pod_ips',
  'netns_pod_ips',
  'pair_original_dst',
  'sock_pair_map',
  'process_ip',
  'settings',
  'counters',
  'origin_store',
] as const
export type MapName = (typeof MAP_NAMES)[number]

/** The pins of one installation, all below one bpffs folder. */
export class Installation {
  readonly dir: string

  constructor(dir = process.env.MERBRIDGE_BPFFS ?? DEFAULT_BPFFS_DIR) {
    // an empty value would resolve to the working directory
    if (dir.trim() === '') throw new MerbridgeError('the bpffs folder is empty (--bpffs or MERBRIDGE_BPFFS)', {code: 'BAD_BPFFS', exitCode: 2, suggestion: `give a folder on a bpf filesystem, e.g. ${DEFAULT_BPFFS_DIR}, or unset MERBRIDGE_BPFFS`})
    this.dir = resolve(dir)
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

  /** One state file per installation folder, so test installations never meet the real one. */
  get stateFile(): string {
    return join(runDir(), `${this.dir.replace(/^\/+/, '').replace(/[^A-Za-z0-9_.-]+/g, '_')}.json`)
  }

  exists(): boolean {
    return existsSync(this.dir)
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
      throw new MerbridgeError(`${this.dir} is not on a bpf filesystem: it is not a merbridge installation, and merbridge leaves it alone`, {code: 'NOT_OURS', exitCode: 2, suggestion: 'give --bpffs the folder merbridge enable used (default /sys/fs/bpf/merbridge)'})
    const known: Record<string, readonly string[]> = {progs: PROGRAMS.map((p) => p.name), maps: MAP_NAMES}
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
      throw new MerbridgeError(`${this.dir} holds ${foreign.length} pin(s) merbridge did not make (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', ...' : ''}): nothing was changed`, {
        code: 'NOT_OURS',
        exitCode: 2,
        suggestion: 'give merbridge a folder of its own (--bpffs)',
      })
  }

  /** Remove the installation's pins one by one, then its folders: never anything else (checkOurs first). */
  async removePins(): Promise<string[]> {
    await this.checkOurs()
    const removed: string[] = []
    if (!this.exists()) return removed
    removed.push(...(await this.removeStaging()))
    for (const sub of ['progs', 'maps']) {
      const dir = join(this.dir, sub)
      if (!existsSync(dir)) continue
      for (const pin of await readdir(dir)) {
        await unlink(join(dir, pin))
        removed.push(`${sub}/${pin}`)
      }
      await rmdir(dir)
    }
    await rmdir(this.dir)
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
    try {
      return JSON.parse(await readFile(this.stateFile, 'utf8')) as InstallState
    } catch {
      return undefined
    }
  }

  async writeState(state: InstallState): Promise<void> {
    await mkdir(runDir(), {recursive: true})
    const tmp = `${this.stateFile}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(state, null, 2) + '\n')
    await rename(tmp, this.stateFile)
  }

  async removeState(): Promise<void> {
    await rm(this.stateFile, {force: true})
  }
}

export interface PodRecord {
  namespace: string
  name: string
  ip: string
  /** a dual-stack pod's IPv6 address */
  ip6?: string
  /** netns cookie as a decimal string, when the pod's namespace was found on this node */
  netns?: string
}

export interface SkippedPod {
  namespace: string
  name: string
  reason: string
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
  enabledAt: string
  /** whether enable mounted bpffs itself (disable then unmounts it when empty) */
  mountedBpffs: boolean
  hostNetns: string
  pods: {source: string; syncedAt: string; meshed: PodRecord[]; unregistered: PodRecord[]; skipped: SkippedPod[]; warnings: string[]}
}
