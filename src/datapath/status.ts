import {existsSync, readFileSync} from 'node:fs'
import {
  bpftool,
  type CgroupAttachment,
  type MapInfo,
  parseAttachments,
  parseDump,
  parseMapInfo,
  parseProgInfo,
  type ProgInfo,
} from '../bpf/bpftool.js'
import type {CounterName, Settings} from '../bpf/layout.js'
import {readEntryCounts, readMaps, settingsOf, sumCounters} from '../bpf/maps.js'
import {sourceHash} from '../bpf/objects.js'
import {describeError} from '../errors.js'
import {type InstallState, Installation} from './installation.js'
import {MAP_NAMES, type MapName, PROGRAMS} from '../bpf/programs.js'
import {OPTIONAL_FEATURES, type OptionalFeature} from '../bpf/optional.js'
import {duration, secondsSince} from '../text.js'

export interface ProgramStatus {
  name: string
  id?: number
  type?: string
  attachPoint: string
  /** undefined where the kernel gives no way to ask (sk_msg programs on a sockhash) */
  attached?: boolean
  loadedAt?: string
  runCount?: number
  runTimeNs?: number
}

export interface MapStatus {
  name: MapName
  id?: number
  type?: string
  entries?: number
  capacity?: number
  /** kernel memory the map holds (its full capacity for preallocated maps), bytes */
  memoryBytes?: number
}

export type Verdict = 'healthy' | 'not-enabled' | 'unhealthy'

export interface StatusReport {
  verdict: Verdict
  bpffs: string
  cgroup?: string
  mesh?: string
  node?: string
  enabledAt?: string
  /** CNI mode: pods are registered by the runtime's call to merbridge-cni, and a namespace that is not registered is no pod's */
  cni?: boolean
  statsEnabled: boolean
  programs: ProgramStatus[]
  maps: MapStatus[]
  pods?: InstallState['pods']
  counters?: Record<CounterName, number>
  problems: string[]
  hints: string[]
  /** optional kernel features this installation goes without: why, and what that costs */
  unavailable: {feature: OptionalFeature; why: string; cost: string}[]
  /**
   * Why the datapath is not intercepting as enabled, when it is not: a program or map missing or
   * detached, or settings unconfigured or left draining (an interrupted enable or disable).
   * `enable` repairs such a node by replacing the installation.
   */
  broken?: string
}

/** Maps a dump cannot count: arrays are fixed (of maps too: a slot is not a use), and socket storage has no keys to walk (the kernel refuses). */
const UNCOUNTABLE_TYPES = new Set(['array', 'percpu_array', 'array_of_maps', 'sk_storage'])
const NEAR_FULL = 0.9

/** Whether the kernel counts programs' runs and time (kernel.bpf_stats_enabled). */
export function statsEnabled(): boolean {
  try {
    return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1'
  } catch {
    return false
  }
}

export interface Snapshot {
  progs: Map<string, ProgInfo>
  maps: Map<MapName, MapInfo>
  attachments: CgroupAttachment[]
  counters?: Record<CounterName, number>
  settings?: Settings
}

/**
 * Programs, maps, the cgroup's attachments, counters and settings: one bpftool process when all
 * is in place (each process costs status more than all its other work).
 */
async function snapshot(inst: Installation, cgroup: string | undefined): Promise<Snapshot> {
  const withCgroup = cgroup !== undefined && existsSync(cgroup)
  const commands = [
    ...PROGRAMS.map((p) => ['prog', 'show', 'pinned', inst.prog(p.name)]),
    ...MAP_NAMES.map((m) => ['map', 'show', 'pinned', inst.map(m)]),
    ['map', 'dump', 'pinned', inst.map('counters')],
    ['map', 'dump', 'pinned', inst.map('settings')],
    // last: bpftool 7.1 prints `"output":}` (not JSON) for a cgroup without programs, and then
    // the one-by-one path below reads it
    ...(withCgroup ? [['cgroup', 'show', cgroup]] : []),
  ]
  let out: unknown[]
  try {
    out = await bpftool.batchJson(commands)
  } catch {
    return snapshotOneByOne(inst, withCgroup ? cgroup : undefined)
  }
  const at = PROGRAMS.length + MAP_NAMES.length
  return {
    progs: new Map(PROGRAMS.map((p, i) => [p.name, parseProgInfo(out[i])])),
    maps: new Map(MAP_NAMES.map((m, i) => [m, parseMapInfo(out[PROGRAMS.length + i])])),
    counters: sumCounters(parseDump(out[at])),
    settings: settingsOf(parseDump(out[at + 1])),
    attachments: withCgroup ? parseAttachments(out[at + 2]) : [],
  }
}

/** Something is missing: ask one by one, so that each absence is reported. */
async function snapshotOneByOne(inst: Installation, cgroup: string | undefined): Promise<Snapshot> {
  const progs = new Map<string, ProgInfo>()
  for (const p of PROGRAMS) {
    const info = await bpftool.progShowPinned(inst.prog(p.name))
    if (info) progs.set(p.name, info)
  }
  const maps = new Map<MapName, MapInfo>()
  for (const m of MAP_NAMES) {
    const info = await bpftool.mapShowPinned(inst.map(m))
    if (info) maps.set(m, info)
  }
  return {
    progs,
    maps,
    counters: maps.has('counters') ? await readMaps.counters(inst).catch(() => undefined) : undefined,
    settings: maps.has('settings') ? await readMaps.settings(inst).catch(() => undefined) : undefined,
    attachments: cgroup ? await bpftool.cgroupShow(cgroup) : [],
  }
}

/**
 * Entries of each countable map: from the pinned counting iterators (a file read each) where the
 * kernel runs them, else by dumping the map, in parallel since each dump is its own bpftool process.
 */
export async function countEntries(inst: Installation, maps: Map<MapName, MapInfo>): Promise<Partial<Record<MapName, number>>> {
  const iterated = await readEntryCounts(inst.counterPins)
  const out: Partial<Record<MapName, number>> = {}
  await Promise.all(
    [...maps].map(async ([name, info]) => {
      if (UNCOUNTABLE_TYPES.has(info.type)) return
      out[name] =
        (info.type === 'sockhash' ? iterated.socketsById : iterated.byId)?.get(info.id) ?? (await bpftool.mapCount(inst.map(name)))
    }),
  )
  return out
}

/** What status reads, from the kernel and the installation's record: the input of diagnose(). */
export interface Observed {
  bpffs: string
  state?: InstallState
  pins: {progs: string[]; maps: string[]}
  snap?: Snapshot
  /** entries per map, where they could be counted */
  entries: Partial<Record<MapName, number>>
  /** the hash of the sources this CLI would build, or why it cannot tell */
  sourceHash?: string | Error
  statsEnabled: boolean
}

/** Everything status shows, read from the kernel and the installation's record. */
export async function inspect(inst: Installation): Promise<StatusReport> {
  const state = await inst.readState()
  const pins = inst.exists() ? await inst.pinned() : {progs: [], maps: []}
  const observed: Observed = {bpffs: inst.dir, state, pins, entries: {}, statsEnabled: statsEnabled()}
  if (!state && pins.progs.length === 0 && pins.maps.length === 0) return diagnose(observed)

  // independent reads, started together
  const currentHash = state ? sourceHash({maxConnections: state.maxConnections}).catch((error: unknown) => error as Error) : undefined
  const snap = await snapshot(inst, state?.cgroup)
  observed.entries = await countEntries(inst, snap.maps)
  return diagnose({...observed, snap, sourceHash: await currentHash})
}

/**
 * The verdict, problems and hints for what was observed, without I/O: a problem is anything that
 * keeps the datapath from intercepting as enabled, or a map close to full; `broken` is the first
 * one enable must repair.
 */
export function diagnose(o: Observed): StatusReport {
  const {state, snap} = o
  const report: StatusReport = {
    verdict: 'not-enabled',
    bpffs: o.bpffs,
    cgroup: state?.cgroup,
    mesh: state?.mesh,
    node: state?.node,
    enabledAt: state?.enabledAt,
    statsEnabled: o.statsEnabled,
    programs: [],
    maps: [],
    pods: state?.pods,
    problems: [],
    hints: [],
    unavailable: Object.entries(state?.unavailable ?? {}).map(([feature, why]) => ({
      feature: feature as OptionalFeature,
      why,
      cost: OPTIONAL_FEATURES[feature as OptionalFeature].without,
    })),
  }
  if (!snap) return report

  const attached = new Set(snap.attachments.map((a) => a.id))
  for (const spec of PROGRAMS) {
    const info = snap.progs.get(spec.name)
    const attachPoint = {
      cgroup: `${state?.cgroup ?? '?'} (${spec.attachType})`,
      sock_pair_map: 'sock_pair_map (msg_verdict)',
      pods: `tc ingress of the ${state?.pods.meshed.length ?? 0} registered pod(s)`,
    }[spec.target]
    const p: ProgramStatus = {name: spec.name, attachPoint}
    if (info) {
      p.id = info.id
      p.type = info.type
      p.loadedAt = info.loaded_at ? new Date(info.loaded_at * 1000).toISOString() : undefined
      p.runCount = info.run_cnt
      p.runTimeNs = info.run_time_ns
      if (spec.target === 'cgroup') p.attached = attached.has(info.id)
    }
    report.programs.push(p)
    if (!info) report.problems.push(`program ${spec.name} is not pinned`)
    else if (p.attached === false)
      report.problems.push(`program ${spec.name} is pinned but not attached to ${state?.cgroup ?? 'the cgroup'}`)
  }
  for (const name of MAP_NAMES) {
    const info = snap.maps.get(name)
    const m: MapStatus = {
      name,
      id: info?.id,
      type: info?.type,
      capacity: info?.max_entries === 0 ? undefined : info?.max_entries,
      entries: o.entries[name],
      memoryBytes: info?.bytes_memlock,
    }
    // an LRU map full is one doing its work: it forgets the oldest entry
    if (
      m.entries !== undefined &&
      m.capacity &&
      m.entries >= m.capacity * NEAR_FULL &&
      info?.type !== 'lru_hash' &&
      !UNCOUNTABLE_TYPES.has(info?.type ?? '')
    )
      report.problems.push(`map ${name} is ${Math.round((100 * m.entries) / m.capacity)}% full (${m.entries}/${m.capacity})`)
    if (!info) report.problems.push(`map ${name} is not pinned`)
    report.maps.push(m)
  }
  report.counters = snap.counters
  const active = snap.settings
  if (active?.outboundPort) report.cni = active.cni
  if (o.pins.maps.includes('settings')) {
    if (!active?.outboundPort) report.problems.push('settings are not configured: nothing is intercepted (an enable was interrupted)')
    else if (active.draining) report.problems.push('the datapath is draining: nothing is intercepted (a disable was interrupted)')
  }
  // what enable must repair (a full map is a problem, but not a broken datapath)
  report.broken = report.problems.find((p) => !p.includes('% full ('))

  if (!state) report.problems.push(`pins in ${o.bpffs} but no record of an enable (an enable was interrupted)`)
  if (state && o.pins.progs.length === 0)
    report.problems.push(`recorded as enabled on ${state.cgroup}, but nothing is pinned in ${o.bpffs} (stale record)`)
  const foreign = snap.attachments.filter((a) => !report.programs.some((p) => p.id === a.id))
  if (foreign.length > 0)
    report.hints.push(
      `other programs are attached to ${state?.cgroup ?? 'the cgroup'}: ${foreign.map((f) => `${f.id} ${f.name} (${f.attach_type})`).join(', ')}; they may conflict`,
    )
  const hash = o.sourceHash
  if (hash instanceof Error) report.hints.push(`cannot tell whether the programs are current: ${describeError(hash).message}`)
  else if (state && hash !== state.objectHash)
    report.hints.push('the programs were built from older sources: run merbridge enable to replace them')
  for (const u of report.unavailable) report.hints.push(`without ${OPTIONAL_FEATURES[u.feature].title} (${u.why}): ${u.cost}`)
  const rewritten = snap.counters?.inboundRewritten ?? 0
  if (rewritten > 0 && !report.unavailable.some((u) => u.feature === 'reuseport-assign'))
    report.hints.push(
      `${rewritten} connection(s) from elsewhere were sent to an inbound sidecar by rewriting their port: this kernel cannot hand them to a reuseport listener (before Linux 6.6); ${OPTIONAL_FEATURES['reuseport-assign'].without}`,
    )
  if (!report.statsEnabled) report.hints.push('run counts and times are off: sysctl -w kernel.bpf_stats_enabled=1 turns them on')
  const overShare = (snap.counters?.socketOverShare ?? 0) + (snap.counters?.originOverShare ?? 0)
  if (overShare > 0)
    report.hints.push(
      `${overShare} socket(s) or original destination(s) were refused because their pod was over its share of a busy connection map (counters below): enable --max-connections with a larger capacity gives every pod more`,
    )
  const lost = snap.counters?.originLost ?? 0
  if (lost > 0)
    report.hints.push(
      `${lost} connect(s) or datagram(s) were refused (EPERM): their socket had no room left to store the original destination (its option memory full, which an app can do on purpose), and going direct would skip the sidecar`,
    )
  const unregistered = state?.pods.unregistered ?? []
  if (unregistered.length > 0) {
    const oldest = unregistered
      .flatMap((p) => (p.since ? [{p, since: p.since}] : []))
      .sort((a, b) => Date.parse(a.since) - Date.parse(b.since))[0]
    report.hints.push(
      `${unregistered.length} meshed pod(s) were not found on this node at the last sync${oldest ? ` (the longest, ${oldest.p.namespace}/${oldest.p.name}, for ${duration(secondsSince(oldest.since))})` : ''}: their inbound is not captured, and their outbound ${report.cni ? 'neither (CNI mode guesses no pod from a listening sidecar)' : 'only once their sidecar listens'}`,
    )
  }

  report.verdict = report.problems.length > 0 ? 'unhealthy' : 'healthy'
  if (report.problems.length > 0) report.hints.unshift('merbridge disable, then merbridge enable, rebuilds the installation')
  return report
}
