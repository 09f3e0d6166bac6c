import {existsSync} from 'node:fs'
import {run, runStreaming} from '../exec.js'
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
  /** kernel memory the map holds, as bpftool reports it */
  bytes_memlock?: number
}

/** A map entry as `bpftool map dump -j` prints it: hex byte strings, per-CPU values for per-CPU maps. */
export interface RawMapEntry {
  key: string[]
  value?: string[]
  values?: {cpu: number; value: string[]}[]
  formatted?: unknown
}

/** bpftool's output is not what this wrapper knows: fail loudly rather than act on a misreading. */
function drift(what: string, detail: string, text = ''): ToolFailedError {
  return new ToolFailedError(
    `bpftool ${what}`,
    `printed ${detail}: this bpftool's output is not what merbridge understands`,
    text.slice(0, 200),
  )
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    throw drift(what, 'output that is not JSON', text)
  }
}

type Json = Record<string, unknown>

function record(v: unknown, what: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw drift(what, `${Array.isArray(v) ? 'a list' : typeof v} where an object was expected`, JSON.stringify(v))
  return v as Json
}

function list(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw drift(what, `${typeof v} where a list was expected`, JSON.stringify(v))
  return v
}

function field<T extends 'number' | 'string'>(o: Json, key: string, type: T, what: string): T extends 'number' ? number : string {
  const v = o[key]
  if (typeof v !== type)
    throw drift(what, `an object whose "${key}" is ${v === undefined ? 'missing' : typeof v}, not a ${type}`, JSON.stringify(o))
  return v as T extends 'number' ? number : string
}

function optional(o: Json, key: string, type: 'number', what: string): number | undefined {
  return o[key] === undefined ? undefined : field(o, key, type, what)
}

/** Check one `prog show -j` object. */
export function parseProgInfo(v: unknown, what = 'prog show'): ProgInfo {
  const o = record(v, what)
  const ids = o.map_ids === undefined ? undefined : list(o.map_ids, what).map((id) => (typeof id === 'number' ? id : Number.NaN))
  if (ids?.some(Number.isNaN)) throw drift(what, 'map_ids that are not numbers', JSON.stringify(o))
  return {
    id: field(o, 'id', 'number', what),
    type: field(o, 'type', 'string', what),
    name: typeof o.name === 'string' ? o.name : '',
    loaded_at: optional(o, 'loaded_at', 'number', what),
    run_cnt: optional(o, 'run_cnt', 'number', what),
    run_time_ns: optional(o, 'run_time_ns', 'number', what),
    map_ids: ids,
  }
}

/** Check one `map show -j` object. */
export function parseMapInfo(v: unknown, what = 'map show'): MapInfo {
  const o = record(v, what)
  return {
    id: field(o, 'id', 'number', what),
    type: field(o, 'type', 'string', what),
    name: typeof o.name === 'string' ? o.name : '',
    bytes_key: field(o, 'bytes_key', 'number', what),
    bytes_value: field(o, 'bytes_value', 'number', what),
    max_entries: field(o, 'max_entries', 'number', what),
    bytes_memlock: optional(o, 'bytes_memlock', 'number', what),
  }
}

/** Check a `cgroup show -j` list. */
export function parseAttachments(v: unknown, what = 'cgroup show'): CgroupAttachment[] {
  return list(v, what).map((item) => {
    const o = record(item, what)
    return {
      id: field(o, 'id', 'number', what),
      attach_type: field(o, 'attach_type', 'string', what),
      attach_flags: typeof o.attach_flags === 'string' ? o.attach_flags : '',
      name: typeof o.name === 'string' ? o.name : '',
    }
  })
}

function hexArray(v: unknown, what: string): string[] {
  const a = list(v, what)
  if (!a.every((h) => typeof h === 'string' && /^0x[0-9a-f]{2}$/i.test(h)))
    throw drift(what, 'bytes that are not "0x.." strings', JSON.stringify(v))
  return a as string[]
}

/** Check a `map dump -j` list: hex keys, and a value or per-CPU values. */
export function parseDump(v: unknown, what = 'map dump'): RawMapEntry[] {
  return list(v, what).map((item) => {
    const o = record(item, what)
    const values =
      o.values === undefined
        ? undefined
        : list(o.values, what).map((x) => {
            const cpu = record(x, what)
            return {cpu: field(cpu, 'cpu', 'number', what), value: hexArray(cpu.value, what)}
          })
    return {key: hexArray(o.key, what), value: o.value === undefined ? undefined : hexArray(o.value, what), values, formatted: o.formatted}
  })
}

function isMissingPin(stderr: string): boolean {
  return stderr.includes('No such file or directory')
}

/**
 * The bytes of a bpftool hex list as it prints it, `"0x1b","0x5d",...`: every byte is the two
 * characters after `"0x`, seven characters apart. Read in place (a regex replace per entry was
 * most of dump-maps' time); anything else fails.
 */
function hexList(list: string): Buffer {
  const n = Math.floor((list.length + 1) / 7)
  const out = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) {
    const at = i * 7
    const hi = hexDigit(list.charCodeAt(at + 3))
    const lo = hexDigit(list.charCodeAt(at + 4))
    if (hi < 0 || lo < 0 || list.charCodeAt(at) !== 34 || list.charCodeAt(at + 5) !== 34)
      throw drift('map dump', 'a byte that is not "0x.."', list.slice(at, at + 7))
    out[i] = (hi << 4) | lo
  }
  if (n * 7 - 1 !== list.length) throw drift('map dump', 'a byte list of an unexpected shape', list.slice(0, 40))
  return out
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 97 && c <= 102) return c - 87
  if (c >= 65 && c <= 70) return c - 55
  return -1
}

const ENTRY = '{"key":['
const ENTRY_BYTES = /^("0x[^\]]*)\](?:,"value":\[("0x[^\]]*)\])?/

/**
 * Reads the raw key and value byte arrays out of `bpftool map dump -j` output as it streams,
 * keeping only the unfinished entry in memory. Anything it cannot read fails the dump: a sync that
 * misread the map as empty would stop removing stale entries.
 */
export class DumpScanner {
  private carry = ''
  private started = false
  private readonly out: {key: Buffer; value?: Buffer}[] = []

  push(chunk: string): void {
    if (!this.started) {
      const text = chunk.trimStart()
      if (text === '') return
      if (!text.startsWith('[')) throw drift('map dump', 'output that is not a JSON list', text)
      this.started = true
    }
    this.carry += chunk
    let start = this.entryAt(0)
    while (start >= 0) {
      const next = this.entryAt(start + ENTRY.length)
      if (next < 0) break
      this.take(this.carry.slice(start + ENTRY.length, next))
      start = next
    }
    // keep the unfinished entry, or the tail that may be the start of the next entry's token (and
    // the character before it)
    this.carry = start >= 0 ? this.carry.slice(start) : this.carry.slice(-ENTRY.length)
  }

  /** The next entry of the list from `from`: not a BTF-formatted `"formatted":{"key":[` inside one. */
  private entryAt(from: number): number {
    let i = this.carry.indexOf(ENTRY, from)
    while (i > 0 && this.carry[i - 1] === ':') i = this.carry.indexOf(ENTRY, i + 1)
    return i
  }

  end(): {key: Buffer; value?: Buffer}[] {
    const tail = this.carry.trimEnd()
    if (this.carry.startsWith(ENTRY)) this.take(this.carry.slice(ENTRY.length))
    // an empty output is an empty map (bpftool prints nothing for some map types); else the list must close
    if (this.started && !tail.endsWith(']')) throw drift('map dump', 'output that ends before its list does', tail.slice(-200))
    this.carry = ''
    return this.out
  }

  private take(entry: string): void {
    const m = ENTRY_BYTES.exec(entry)
    if (!m) throw drift('map dump', 'an entry without hex key bytes', entry)
    this.out.push({key: hexList(m[1] ?? ''), value: m[2] === undefined ? undefined : hexList(m[2])})
  }
}

export function hexBytes(buf: Uint8Array): string[] {
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0'))
}

export function bytesFromHex(hex: readonly string[]): Buffer {
  return Buffer.from(hex.map((h) => Number.parseInt(h, 16)))
}

/**
 * One argument of a `bpftool batch` line: batch splits lines on blanks, and reads a double-quoted
 * word as one. Paths with a quote or backslash are refused where they are given (Installation).
 */
export function batchArg(arg: string): string {
  return /[\s]/.test(arg) ? `"${arg}"` : arg
}

/** How the wrapper runs bpftool: src/exec.ts, or recorded output in unit tests. */
export interface BpftoolRunner {
  run: typeof run
  runStreaming: typeof runStreaming
}

/**
 * bpftool, one method per subcommand the CLI uses. Silent: it returns data whose shape it has
 * checked, or throws. Unit tests give it a runner that plays recorded output.
 */
export class Bpftool {
  constructor(private readonly runner: BpftoolRunner = {run, runStreaming}) {}

  private run(args: readonly string[], opts?: Parameters<typeof run>[2]) {
    return this.runner.run('bpftool', args, opts)
  }

  async version(): Promise<string> {
    const {stdout} = await this.run(['version'])
    return /v?(\d+\.\d+(?:\.\d+)?)/.exec(stdout)?.[1] ?? stdout.split('\n')[0] ?? ''
  }

  /** The kernel probe as bpftool prints it; features.ts reads what it needs and treats the rest as missing. */
  async featureProbe(): Promise<unknown> {
    const {stdout} = await this.run(['feature', 'probe', 'kernel', '-j'])
    return parseJson(stdout, 'feature probe')
  }

  async loadAll(object: string, progDir: string, mapDir: string): Promise<void> {
    await this.run(['prog', 'loadall', object, progDir, 'pinmaps', mapDir], {timeoutMs: 120_000})
  }

  /**
   * Load an object whose programs use maps that already exist (name -> pin): the kernel checks
   * that each definition matches, so a layout that changed fails here, before anything runs.
   */
  async loadAllReusing(object: string, progDir: string, mapDir: string, reuse: [name: string, pin: string][]): Promise<void> {
    await this.run(
      ['prog', 'loadall', object, progDir, ...reuse.flatMap(([name, pin]) => ['map', 'name', name, 'pinned', pin]), 'pinmaps', mapDir],
      {timeoutMs: 120_000},
    )
  }

  /** A pinned map of its own (doctor's probe loads use a throwaway sockhash). */
  async mapCreate(pin: string, type: string, keySize: number, valueSize: number, entries: number, name: string): Promise<void> {
    await this.run([
      'map',
      'create',
      pin,
      'type',
      type,
      'key',
      String(keySize),
      'value',
      String(valueSize),
      'entries',
      String(entries),
      'name',
      name,
    ])
  }

  /** Load an iterator program and pin its link (for a map iterator, over the map pinned at `mapPin`). */
  async iterPin(object: string, pin: string, mapPin?: string): Promise<void> {
    await this.run(['iter', 'pin', object, pin, ...(mapPin ? ['map', 'pinned', mapPin] : [])])
  }

  /** Pin a pinned program at a second path. */
  async progPin(fromPin: string, toPin: string): Promise<void> {
    await this.run(['prog', 'pin', 'pinned', fromPin, toPin])
  }

  /** A pinned program, or undefined when nothing is pinned there. */
  async progShowPinned(pin: string): Promise<ProgInfo | undefined> {
    const stdout = await this.showPinned('prog', pin)
    return stdout === undefined ? undefined : parseProgInfo(parseJson(stdout, 'prog show'))
  }

  /**
   * Pinned programs in order, undefined where nothing is pinned: one bpftool process for those
   * whose pins exist (a process per program costs enable and disable more than their other work,
   * tens of seconds on an emulated node). A batch stops at a failure (a pin gone meanwhile, one
   * that is no program): then one by one, which says which.
   */
  async progsShowPinned(pins: readonly string[]): Promise<(ProgInfo | undefined)[]> {
    const present = pins.filter((p) => existsSync(p))
    const batch =
      present.length > 1 ? await this.batchJson(present.map((p) => ['prog', 'show', 'pinned', p])).catch(() => undefined) : undefined
    const found = new Map<string, ProgInfo | undefined>()
    for (const [i, pin] of present.entries()) found.set(pin, batch ? parseProgInfo(batch[i]) : await this.progShowPinned(pin))
    return pins.map((p) => found.get(p))
  }

  /** A loaded program by id, or undefined when the kernel has none with it. */
  async progShowId(id: number): Promise<ProgInfo | undefined> {
    const r = await this.run(['prog', 'show', 'id', String(id), '-j'], {allowFailure: true})
    return r.exitCode === 0 ? parseProgInfo(parseJson(r.stdout, 'prog show')) : undefined
  }

  /** Where a loaded program is pinned (none: held only by what it is attached to, or gone). */
  async progPins(id: number): Promise<string[]> {
    const r = await this.run(['-f', 'prog', 'show', 'id', String(id), '-j'], {allowFailure: true})
    if (r.exitCode !== 0) return []
    const pinned = record(parseJson(r.stdout, 'prog show'), 'prog show').pinned
    return pinned === undefined ? [] : list(pinned, 'prog show').filter((p): p is string => typeof p === 'string')
  }

  /** Every loaded program pinned under a folder, with its run counts (one bpftool process). */
  async progsPinnedUnder(dir: string): Promise<ProgInfo[]> {
    const {stdout} = await this.run(['-f', 'prog', 'show', '-j'])
    const under = (p: unknown) => typeof p === 'string' && p.startsWith(dir.endsWith('/') ? dir : `${dir}/`)
    return list(parseJson(stdout, 'prog show'), 'prog show')
      .filter((v) => {
        const pinned = record(v, 'prog show').pinned
        return pinned !== undefined && list(pinned, 'prog show').some(under)
      })
      .map((v) => parseProgInfo(v))
  }

  /** A pinned map, or undefined when nothing is pinned there. */
  async mapShowPinned(pin: string): Promise<MapInfo | undefined> {
    const stdout = await this.showPinned('map', pin)
    return stdout === undefined ? undefined : parseMapInfo(parseJson(stdout, 'map show'))
  }

  private async showPinned(kind: 'prog' | 'map', pin: string): Promise<string | undefined> {
    const r = await this.run([kind, 'show', 'pinned', pin, '-j'], {allowFailure: true})
    if (r.exitCode === 0) return r.stdout
    if (isMissingPin(r.stdout + r.stderr)) return undefined
    throw new ToolFailedError(`bpftool ${kind} show`, r.stdout || r.stderr, r.stderr)
  }

  /** A small map whole, per-CPU values included (counters, settings). */
  async mapDump(pin: string): Promise<RawMapEntry[]> {
    const {stdout} = await this.run(['map', 'dump', 'pinned', pin, '-j'], {timeoutMs: 120_000})
    return parseDump(parseJson(stdout || '[]', 'map dump'))
  }

  /**
   * Several small maps' keys and values as bytes, from one bpftool process. Its JSON is parsed
   * whole, which costs more than another process for a map of a thousand pods' rules. A batch
   * stops at a failure: then one by one, which says which.
   */
  async mapsDumpBytes(pins: readonly string[]): Promise<{key: Buffer; value?: Buffer}[][]> {
    const batch = pins.length > 1 ? await this.batchJson(pins.map((p) => ['map', 'dump', 'pinned', p])).catch(() => undefined) : undefined
    if (batch)
      return batch.map((out) =>
        parseDump(out ?? []).map((e) => ({key: bytesFromHex(e.key), value: e.value === undefined ? undefined : bytesFromHex(e.value)})),
      )
    const out: {key: Buffer; value?: Buffer}[][] = []
    for (const pin of pins) out.push(await this.mapDumpBytes(pin))
    return out
  }

  async mapCount(pin: string): Promise<number> {
    return (await this.mapDumpBytes(pin)).length
  }

  /**
   * Keys and values of a (not per-CPU) map as bytes. Scans bpftool's JSON for the raw hex arrays
   * instead of parsing it whole: a full map dump is tens of megabytes of "0x.." strings plus a BTF
   * rendering that would cost hundreds of megabytes as objects.
   */
  async mapDumpBytes(pin: string): Promise<{key: Buffer; value?: Buffer}[]> {
    const scanner = new DumpScanner()
    await this.runner.runStreaming('bpftool', ['map', 'dump', 'pinned', pin, '-j'], (chunk) => scanner.push(chunk))
    return scanner.end()
  }

  /** Every cgroup with programs attached, below the cgroup v2 mount. */
  async cgroupTree(root?: string): Promise<{cgroup: string; programs: CgroupAttachment[]}[]> {
    const {stdout} = await this.run(['cgroup', 'tree', ...(root ? [root] : []), '-j'])
    return list(parseJson(stdout || '[]', 'cgroup tree'), 'cgroup tree').map((item) => {
      const o = record(item, 'cgroup tree')
      return {cgroup: field(o, 'cgroup', 'string', 'cgroup tree'), programs: parseAttachments(o.programs, 'cgroup tree')}
    })
  }

  async cgroupShow(cgroup: string): Promise<CgroupAttachment[]> {
    const {stdout} = await this.run(['cgroup', 'show', cgroup, '-j'])
    return parseAttachments(parseJson(stdout || '[]', 'cgroup show'))
  }

  /** `multi`, so programs of other tools on the same cgroup keep running beside ours. */
  async cgroupAttach(cgroup: string, attachType: string, progPin: string): Promise<void> {
    await this.run(['cgroup', 'attach', cgroup, attachType, 'pinned', progPin, 'multi'])
  }

  async cgroupDetach(cgroup: string, attachType: string, progId: number): Promise<void> {
    await this.run(['cgroup', 'detach', cgroup, attachType, 'id', String(progId)])
  }

  /**
   * Detach programs from cgroups in the order given, from one bpftool process. A batch stops at a
   * failure: then those still attached are detached one by one, so the failure names its own (a
   * cgroup removed meanwhile took its attachments with it).
   */
  async cgroupDetachAll(items: readonly {cgroup: string; attachType: string; id: number}[]): Promise<void> {
    const commands = items.map((a) => ['cgroup', 'detach', a.cgroup, a.attachType, 'id', String(a.id)])
    if (items.length > 1 && (await this.batchJson(commands).then(() => true, () => false))) return
    const attached = new Map<string, Set<number>>()
    for (const a of items) {
      if (items.length > 1) {
        if (!existsSync(a.cgroup)) continue
        let ids = attached.get(a.cgroup)
        if (!ids) attached.set(a.cgroup, (ids = new Set((await this.cgroupShow(a.cgroup)).map((p) => p.id))))
        if (!ids.has(a.id)) continue
      }
      await this.cgroupDetach(a.cgroup, a.attachType, a.id)
    }
  }

  /** Put the map pinned at innerPin in slot 0 of the map-in-map pinned at outerPin. */
  async mapSetInner(outerPin: string, innerPin: string): Promise<void> {
    await this.run(['map', 'update', 'pinned', outerPin, 'key', '0', '0', '0', '0', 'value', 'pinned', innerPin])
  }

  async progAttachToMap(progPin: string, attachType: string, mapPin: string): Promise<void> {
    await this.run(['prog', 'attach', 'pinned', progPin, attachType, 'pinned', mapPin])
  }

  async progDetachFromMap(progPin: string, attachType: string, mapPin: string): Promise<boolean> {
    const r = await this.run(['prog', 'detach', 'pinned', progPin, attachType, 'pinned', mapPin], {allowFailure: true})
    return r.exitCode === 0
  }

  /**
   * Many read-only commands in one bpftool process, with their JSON outputs in order (each checked
   * by the caller's parser). bpftool stops at the first failing command, so this throws and the
   * caller asks one by one.
   */
  async batchJson(commands: string[][]): Promise<unknown[]> {
    const r = await this.run(['-j', 'batch', 'file', '-'], {
      input: commands.map((c) => c.map(batchArg).join(' ')).join('\n') + '\n',
      allowFailure: true,
    })
    const entries = list(parseJson(r.stdout, 'batch'), 'batch').map((e) => record(e, 'batch'))
    // bpftool 7.1 ends a batch holding `cgroup show` with this error after every command has
    // answered (an errno left set); with all the answers there, the batch did its work
    const last = entries.at(-1)
    const endOfFileComplaint =
      entries.length === commands.length + 1 && last?.command === undefined && String(last?.error).startsWith('reading batch file failed')
    if (endOfFileComplaint) entries.pop()
    const out = entries.map((e) => e.output)
    // a command that failed answers {"error": ...}, and bpftool stops there
    const failed = out.findIndex(
      (o) => typeof o === 'object' && o !== null && !Array.isArray(o) && Object.keys(o).length === 1 && 'error' in o,
    )
    if (failed >= 0)
      throw new ToolFailedError(
        `bpftool ${(commands[failed] ?? []).slice(0, 2).join(' ')}`,
        String((out[failed] as {error: unknown}).error),
        '',
      )
    if (r.exitCode !== 0 && !endOfFileComplaint) throw new ToolFailedError('bpftool batch', `exit code ${r.exitCode}`, r.stderr)
    if (out.length !== commands.length) throw drift('batch', `${out.length} answers to ${commands.length} commands`)
    return out
  }

  /** Run many bpftool commands in one process (`bpftool batch file -`). */
  async batch(lines: readonly string[]): Promise<void> {
    if (lines.length === 0) return
    await this.run(['batch', 'file', '-'], {input: lines.join('\n') + '\n', timeoutMs: 120_000})
  }

  mapUpdateLine(pin: string, key: Uint8Array, value: Uint8Array): string {
    return `map update pinned ${batchArg(pin)} key hex ${hexBytes(key).join(' ')} value hex ${hexBytes(value).join(' ')}`
  }

  mapDeleteLine(pin: string, key: Uint8Array): string {
    return `map delete pinned ${batchArg(pin)} key hex ${hexBytes(key).join(' ')}`
  }
}

export const bpftool = new Bpftool()
