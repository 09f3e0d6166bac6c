import {existsSync, readFileSync} from 'node:fs'
import {bpftool, type MapInfo, type ProgInfo} from '../bpf/bpftool.js'
import type {CounterName} from '../bpf/layout.js'
import {readMaps} from '../bpf/maps.js'
import {sourceHash} from '../bpf/objects.js'
import {describeError} from '../errors.js'
import {type InstallState, Installation, MAP_NAMES, type MapName, PROGRAMS} from './installation.js'

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
}

export type Verdict = 'healthy' | 'not-enabled' | 'unhealthy'

export interface StatusReport {
  verdict: Verdict
  bpffs: string
  cgroup?: string
  mesh?: string
  node?: string
  enabledAt?: string
  statsEnabled: boolean
  programs: ProgramStatus[]
  maps: MapStatus[]
  pods?: InstallState['pods']
  counters?: Record<CounterName, number>
  problems: string[]
  hints: string[]
}

/** Maps whose entries a dump cannot count (socket storage has no keys to walk). */
const UNCOUNTABLE = new Set<MapName>(['origin_store'])
const NEAR_FULL = 0.9

function statsEnabled(): boolean {
  try {
    return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1'
  } catch {
    return false
  }
}

/** Everything status shows, read from the kernel and the installation's record. */
export async function inspect(inst: Installation): Promise<StatusReport> {
  const state = await inst.readState()
  const report: StatusReport = {
    verdict: 'not-enabled',
    bpffs: inst.dir,
    cgroup: state?.cgroup,
    mesh: state?.mesh,
    node: state?.node,
    enabledAt: state?.enabledAt,
    statsEnabled: statsEnabled(),
    programs: [],
    maps: [],
    pods: state?.pods,
    problems: [],
    hints: [],
  }
  const pins = inst.exists() ? await inst.pinned() : {progs: [], maps: []}
  if (!state && pins.progs.length === 0 && pins.maps.length === 0) return report

  const attached = new Map<number, string>()
  if (state?.cgroup && existsSync(state.cgroup)) {
    for (const a of await bpftool.cgroupShow(state.cgroup)) attached.set(a.id, a.attach_type)
  }
  for (const spec of PROGRAMS) {
    const info: ProgInfo | undefined = await bpftool.progShowPinned(inst.prog(spec.name))
    const p: ProgramStatus = {name: spec.name, attachPoint: spec.target === 'cgroup' ? `${state?.cgroup ?? '?'} (${spec.attachType})` : 'sock_pair_map (msg_verdict)'}
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
    else if (p.attached === false) report.problems.push(`program ${spec.name} is pinned but not attached to ${state?.cgroup ?? 'the cgroup'}`)
  }
  for (const name of MAP_NAMES) {
    const info: MapInfo | undefined = await bpftool.mapShowPinned(inst.map(name))
    const m: MapStatus = {name, id: info?.id, type: info?.type, capacity: info?.max_entries || undefined}
    if (info && !UNCOUNTABLE.has(name) && info.type !== 'array' && info.type !== 'percpu_array') {
      m.entries = (await bpftool.mapDump(inst.map(name))).length
      if (m.capacity && m.entries >= m.capacity * NEAR_FULL) report.problems.push(`map ${name} is ${Math.round((100 * m.entries) / m.capacity)}% full (${m.entries}/${m.capacity})`)
    }
    if (!info) report.problems.push(`map ${name} is not pinned`)
    report.maps.push(m)
  }
  if (pins.maps.includes('counters')) report.counters = await readMaps.counters(inst).catch(() => undefined)

  if (!state) report.problems.push(`pins in ${inst.dir} but no record of an enable (an enable was interrupted)`)
  if (state && pins.progs.length === 0) report.problems.push(`recorded as enabled on ${state.cgroup}, but nothing is pinned in ${inst.dir} (stale record)`)
  const foreign = state?.cgroup && existsSync(state.cgroup) ? (await bpftool.cgroupShow(state.cgroup)).filter((a) => !report.programs.some((p) => p.id === a.id)) : []
  if (foreign.length > 0) report.hints.push(`other programs are attached to ${state!.cgroup}: ${foreign.map((f) => `${f.id} ${f.name} (${f.attach_type})`).join(', ')}; they may conflict`)
  if (state) {
    try {
      if ((await sourceHash()) !== state.objectHash) report.hints.push('the programs were built from older sources: run merbridge enable to replace them')
    } catch (error) {
      report.hints.push(`cannot tell whether the programs are current: ${describeError(error).message}`)
    }
  }
  if (!report.statsEnabled) report.hints.push('run counts and times are off: sysctl -w kernel.bpf_stats_enabled=1 turns them on')
  if ((state?.pods.unregistered.length ?? 0) > 0) report.hints.push(`${state!.pods.unregistered.length} meshed pod(s) were not found on this node at the last sync`)

  report.verdict = report.problems.length > 0 ? 'unhealthy' : 'healthy'
  if (report.problems.length > 0) report.hints.unshift('merbridge disable, then merbridge enable, rebuilds the installation')
  return report
}
