import {run, runStreaming} from '../node/exec.js'
import {ToolFailedError} from '../errors.js'

/** One program attached to a cgroup, as `bpftool cgroup show|tree -j` lists it. */
export interface CgroupAttachment {
  id: number
  attach_type: string
  attach_flags: string
  name: string
}

export interface ProgInfo {
  id: number
  type: string
  name: string
  loaded_at?: number
  run_cnt?: number
  run_time_ns?: number
  map_ids?: number[]
}

export interface MapInfo {
  id: number
  type: string
  name: string
  bytes_key: number
  bytes_value: number
  max_entries: number
}

/** A map entry as `bpftool map dump -j` prints it: hex byte strings, per-CPU values for per-CPU maps. */
export interface RawMapEntry {
  key: string[]
  value?: string[]
  values?: {cpu: number; value: string[]}[]
  formatted?: unknown
}

// bpftool's --json output is taken in its documented shape; T names that shape at each call
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- see above
function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T
  } catch {
    throw new ToolFailedError(`bpftool ${what}`, 'printed output that is not JSON', text.slice(0, 200))
  }
}

function isMissingPin(stderr: string): boolean {
  return stderr.includes('No such file or directory')
}

const hexList = (list: string) => Buffer.from(list.replace(/"0x|",?/g, ''), 'hex')

const ENTRY = '{"key":['
const ENTRY_BYTES = /^("0x[^\]]*)\](?:,"value":\[("0x[^\]]*)\])?/

/**
 * Reads the raw key and value byte arrays out of `bpftool map dump -j` output as it streams,
 * keeping only the unfinished entry in memory.
 */
export class DumpScanner {
  private carry = ''
  private readonly out: {key: Buffer; value?: Buffer}[] = []

  push(chunk: string): void {
    this.carry += chunk
    let start = this.carry.indexOf(ENTRY)
    while (start >= 0) {
      const next = this.carry.indexOf(ENTRY, start + ENTRY.length)
      if (next < 0) break
      this.take(this.carry.slice(start + ENTRY.length, next))
      start = next
    }
    // keep the unfinished entry, or the tail that may be the start of the next entry's token
    this.carry = start >= 0 ? this.carry.slice(start) : this.carry.slice(-(ENTRY.length - 1))
  }

  end(): {key: Buffer; value?: Buffer}[] {
    if (this.carry.startsWith(ENTRY)) this.take(this.carry.slice(ENTRY.length))
    this.carry = ''
    return this.out
  }

  private take(entry: string): void {
    const m = ENTRY_BYTES.exec(entry)
    if (m) this.out.push({key: hexList(m[1] ?? ''), value: m[2] === undefined ? undefined : hexList(m[2])})
  }
}


export function hexBytes(buf: Uint8Array): string[] {
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0'))
}

export function bytesFromHex(hex: readonly string[]): Buffer {
  return Buffer.from(hex.map((h) => Number.parseInt(h, 16)))
}

/** bpftool, one method per subcommand the CLI uses. Silent: it returns data or throws. */
export const bpftool = {
  async version(): Promise<string> {
    const {stdout} = await run('bpftool', ['version'])
    return /v?(\d+\.\d+(?:\.\d+)?)/.exec(stdout)?.[1] ?? stdout.split('\n')[0] ?? ''
  },

  async featureProbe(): Promise<unknown> {
    const {stdout} = await run('bpftool', ['feature', 'probe', 'kernel', '-j'])
    return parseJson(stdout, 'feature probe')
  },

  async loadAll(object: string, progDir: string, mapDir: string): Promise<void> {
    await run('bpftool', ['prog', 'loadall', object, progDir, 'pinmaps', mapDir], {timeoutMs: 120_000})
  },

  /**
   * Load an object whose programs use maps that already exist (name -> pin): the kernel checks
   * that each definition matches, so a layout that changed fails here, before anything runs.
   */
  async loadAllReusing(object: string, progDir: string, mapDir: string, reuse: [name: string, pin: string][]): Promise<void> {
    await run('bpftool', ['prog', 'loadall', object, progDir, ...reuse.flatMap(([name, pin]) => ['map', 'name', name, 'pinned', pin]), 'pinmaps', mapDir], {timeoutMs: 120_000})
  },

  /** Pin a pinned program at a second path. */
  async progPin(fromPin: string, toPin: string): Promise<void> {
    await run('bpftool', ['prog', 'pin', 'pinned', fromPin, toPin])
  },

  async progShowPinned(pin: string): Promise<ProgInfo | undefined> {
    const r = await run('bpftool', ['prog', 'show', 'pinned', pin, '-j'], {allowFailure: true})
    if (r.exitCode !== 0) {
      if (isMissingPin(r.stdout + r.stderr)) return undefined
      throw new ToolFailedError('bpftool prog show', r.stdout || r.stderr, r.stderr)
    }
    return parseJson<ProgInfo>(r.stdout, 'prog show')
  },

  async mapShowPinned(pin: string): Promise<MapInfo | undefined> {
    const r = await run('bpftool', ['map', 'show', 'pinned', pin, '-j'], {allowFailure: true})
    if (r.exitCode !== 0) {
      if (isMissingPin(r.stdout + r.stderr)) return undefined
      throw new ToolFailedError('bpftool map show', r.stdout || r.stderr, r.stderr)
    }
    return parseJson<MapInfo>(r.stdout, 'map show')
  },

  async mapDump(pin: string): Promise<RawMapEntry[]> {
    const {stdout} = await run('bpftool', ['map', 'dump', 'pinned', pin, '-j'], {timeoutMs: 120_000})
    return parseJson<RawMapEntry[]>(stdout || '[]', 'map dump')
  },

  async mapCount(pin: string): Promise<number> {
    return (await this.mapDumpBytes(pin)).length
  },

  /**
   * Keys and values of a (not per-CPU) map as bytes. Scans bpftool's JSON for the raw hex arrays
   * instead of parsing it whole: a full map dump is tens of megabytes of "0x.." strings plus a BTF
   * rendering that would cost hundreds of megabytes as objects.
   */
  async mapDumpBytes(pin: string): Promise<{key: Buffer; value?: Buffer}[]> {
    const scanner = new DumpScanner()
    await runStreaming('bpftool', ['map', 'dump', 'pinned', pin, '-j'], (chunk) => scanner.push(chunk))
    return scanner.end()
  },

  /** Every cgroup with programs attached, below the cgroup v2 mount. */
  async cgroupTree(root?: string): Promise<{cgroup: string; programs: CgroupAttachment[]}[]> {
    const {stdout} = await run('bpftool', ['cgroup', 'tree', ...(root ? [root] : []), '-j'])
    return parseJson(stdout || '[]', 'cgroup tree')
  },

  async cgroupShow(cgroup: string): Promise<CgroupAttachment[]> {
    const {stdout} = await run('bpftool', ['cgroup', 'show', cgroup, '-j'])
    return parseJson(stdout || '[]', 'cgroup show')
  },

  /** `multi`, so programs of other tools on the same cgroup keep running beside ours. */
  async cgroupAttach(cgroup: string, attachType: string, progPin: string): Promise<void> {
    await run('bpftool', ['cgroup', 'attach', cgroup, attachType, 'pinned', progPin, 'multi'])
  },

  async cgroupDetach(cgroup: string, attachType: string, progId: number): Promise<void> {
    await run('bpftool', ['cgroup', 'detach', cgroup, attachType, 'id', String(progId)])
  },

  async progAttachToMap(progPin: string, attachType: string, mapPin: string): Promise<void> {
    await run('bpftool', ['prog', 'attach', 'pinned', progPin, attachType, 'pinned', mapPin])
  },

  async progDetachFromMap(progPin: string, attachType: string, mapPin: string): Promise<boolean> {
    const r = await run('bpftool', ['prog', 'detach', 'pinned', progPin, attachType, 'pinned', mapPin], {allowFailure: true})
    return r.exitCode === 0
  },

  /**
   * Many read-only commands in one bpftool process, with their JSON outputs in order. bpftool
   * stops at the first failing command, so this throws and the caller asks one by one.
   */
  async batchJson(commands: string[][]): Promise<unknown[]> {
    const {stdout} = await run('bpftool', ['-j', 'batch', 'file', '-'], {input: commands.map((c) => c.join(' ')).join('\n') + '\n'})
    return parseJson<{output: unknown}[]>(stdout, 'batch').map((r) => r.output)
  },

  /** Run many bpftool commands in one process (`bpftool batch file -`). */
  async batch(lines: readonly string[]): Promise<void> {
    if (lines.length === 0) return
    await run('bpftool', ['batch', 'file', '-'], {input: lines.join('\n') + '\n', timeoutMs: 120_000})
  },

  mapUpdateLine(pin: string, key: Uint8Array, value: Uint8Array): string {
    return `map update pinned ${pin} key hex ${hexBytes(key).join(' ')} value hex ${hexBytes(value).join(' ')}`
  },

  mapDeleteLine(pin: string, key: Uint8Array): string {
    return `map delete pinned ${pin} key hex ${hexBytes(key).join(' ')}`
  },
}
