/**
 * What the bench measures and reports: its modes and scenarios, a sample per run, and the
 * summary of a sidecar shape's samples (medians over quiet rounds, ratios with their spread,
 * programs per request). No lab here: bench.ts runs the rounds that make the samples.
 */
import {readFileSync} from 'node:fs'
import type {ScaleReport} from './scale.js'
import {median, type WrkResult} from './wrk.js'

export const MODES = ['direct', 'iptables', 'ebpf'] as const
/** A fourth mode on request: another datapath brought up and down by commands of the user's (bench --baseline-up/--baseline-down). */
export const BASELINE = 'baseline'
/**
 * A mode on request (bench --sidecars-mode): the sidecars without interception. The client calls
 * its sidecar's fixed listener, which forwards to the server's, which forwards to the app: the
 * same proxies, sockets and hops as an intercepting mode, with nothing deciding where a
 * connection goes. What a mode costs beyond it is its interception (less what its data path
 * saves over TCP); what it costs beyond direct is the least an interception that keeps TCP
 * between the sockets can add.
 */
export const SIDECARS = 'sidecars'
export type Mode = (typeof MODES)[number] | typeof SIDECARS | typeof BASELINE
export const ALL_MODES: Mode[] = [...MODES, SIDECARS, BASELINE]

/**
 * Another datapath to compare with, outside the product: `up CGROUP BPFFS_DIR POD_IP...` loads it
 * on the lab's cgroup, `down CGROUP BPFFS_DIR` removes it (the interface of the scripts that load
 * the original Merbridge programs).
 */
export interface Baseline {
  name: string
  up: string
  down: string
}

/**
 * What wrk does in each scenario. The `outside` ones are traffic the mesh does not own: a process
 * of the node to an unmeshed pod, both under the cgroup merbridge is attached to, as on a node
 * where it is attached at the root. There merbridge should cost nothing: their ratios are ebpf
 * against direct (merbridge enabled against not), where the others' are ebpf against iptables.
 */
export type Scenario = 'keepalive' | 'one-connection' | 'new-connection' | 'outside-keepalive' | 'outside-new-connection'
export const SCENARIOS: Record<Scenario, {title: string; args: readonly string[]; outside?: true}> = {
  keepalive: {title: 'keep-alive, 16 connections', args: ['-t2', '-c16']},
  'one-connection': {title: 'one connection, request/response', args: ['-t1', '-c1']},
  'new-connection': {title: 'new connection per request, 16 concurrent', args: ['-t2', '-c16', '-H', 'Connection: close']},
  'outside-keepalive': {
    title: 'outside the mesh: the node to an unmeshed pod, keep-alive, 16 connections',
    args: ['-t2', '-c16'],
    outside: true,
  },
  'outside-new-connection': {
    title: 'outside the mesh: the node to an unmeshed pod, new connection per request, 16 concurrent',
    args: ['-t2', '-c16', '-H', 'Connection: close'],
    outside: true,
  },
}

export interface Sample extends WrkResult {
  round: number
  mode: Mode
  scenario: Scenario
  /** worker threads of each sidecar */
  sidecarThreads: number
  /** CPU time of all the lab's processes (wrk, sidecars, nginx) per request, microseconds */
  cpuPerRequestUs: number
  /** CPU other processes used while this was measured, as a share of the machine (kernel interrupt work left out) */
  otherCpuPct: number
  /** CPU the hypervisor gave other guests while this was measured (steal), as a share of the machine */
  stealPct: number
  /** with kernel.bpf_stats_enabled=1, in the ebpf and baseline modes: the datapath's programs' runs and time during the run, by program name */
  programs?: ProgramRuns[]
}

export interface ProgramRuns {
  name: string
  runs: number
  ns: number
}

/** A program's cost per request: medians over quiet rounds. */
export interface ProgramCost {
  name: string
  runsPerRequest: number
  nsPerRun: number
  usPerRequest: number
}

/** A round in which other processes and the hypervisor's steal took more than this share of the machine is left out of the ratios. */
export const QUIET_OTHER_CPU_PCT = 10

/** A median of per-round ebpf/iptables ratios, with the lowest and highest round and how many rounds it is of. */
export interface Ratio {
  median: number
  low: number
  high: number
  rounds: number
}

export type RatioName = 'requestsPerSec' | 'p50' | 'p99' | 'addedCpu' | 'cpuPerRequest' | 'baselineRequestsPerSec' | 'baselineP50'

interface ModeFigures {
  requestsPerSec: number
  p50: number
  p90: number
  p99: number
  cpuPerRequestUs: number
  errors: number
}

export interface ScenarioSummary {
  scenario: Scenario
  title: string
  modes: Record<(typeof MODES)[number], ModeFigures> & {sidecars?: ModeFigures; baseline?: ModeFigures}
  /** rounds whose samples all had other CPU use and steal together at or under QUIET_OTHER_CPU_PCT */
  quietRounds: number[]
  /** the other rounds, with the other CPU use and steal of their busiest sample: a ratio leaves a round out where a sample it compares was that busy */
  leftOut: {round: number; otherCpuPct: number; stealPct: number}[]
  /** requests/s against the reference from fewer than 2 rounds: the ratios say little */
  reliable: boolean
  /** outside the mesh: the ratios are ebpf/direct (merbridge enabled against not) */
  outside: boolean
  /** medians of each round's ebpf/iptables ratio (ebpf/direct outside the mesh, ebpf/baseline for baseline*) over the rounds where the samples compared were quiet, with their spread */
  ratios: Record<RatioName, Ratio>
  /**
   * With the sidecars mode: the sidecars on plain TCP against iptables (requests/s, CPU added over
   * direct), which is all that removing interception alone can give; and each intercepting mode's
   * CPU per request beyond them, in µs (below zero where its data path saves more than its
   * interception costs). Medians of quiet rounds, with their spread.
   */
  sidecars?: {requestsPerSec: Ratio; addedCpu: Ratio; cpuBeyondUs: {iptables: Ratio; ebpf: Ratio; baseline?: Ratio}}
  /** with kernel.bpf_stats_enabled=1: each datapath's programs per request */
  programs?: {ebpf: ProgramCost[]; baseline?: ProgramCost[]}
}

export interface ShapeReport {
  sidecarThreads: number
  summary: ScenarioSummary[]
}

export interface BenchReport {
  /** the other datapath measured as a fourth mode, by the name the user gave it */
  baseline?: string
  rounds: number
  durationSec: number
  machine: {kernel: string; cpus: number; node: string}
  samples: Sample[]
  shapes: ShapeReport[]
  /** the scale scenario, when asked for */
  scale?: ScaleReport
}

/**
 * Time of every CPU since boot (/proc/stat), in microseconds: busy (user, nice and system) and
 * steal (what the hypervisor ran elsewhere while this guest wanted a CPU: on a shared host, the
 * noise this machine's own processes do not show). Interrupt and softirq time are left out: the
 * lab's own packets are processed there, and the lab's cgroup is not charged for them.
 */
export function machineTimesUs(stat = readFileSync('/proc/stat', 'utf8')): {busyUs: number; stealUs: number} {
  const fields = (/^cpu\s+(.*)$/m.exec(stat)?.[1] ?? '').trim().split(/\s+/).map(Number)
  const [user = 0, nice = 0, system = 0, , , , , steal = 0] = fields
  return {busyUs: ((user + nice + system) * 1e6) / CLOCK_TICKS, stealUs: (steal * 1e6) / CLOCK_TICKS}
}
const CLOCK_TICKS = 100 // USER_HZ on Linux

/** What each program (by name) ran between two readings of the same datapath's programs. */
export function programDeltas(before: ProgramRuns[], after: ProgramRuns[]): ProgramRuns[] {
  const sum = (list: ProgramRuns[], name: string, k: 'runs' | 'ns') => list.filter((p) => p.name === name).reduce((a, p) => a + p[k], 0)
  return [...new Set(after.map((p) => p.name))].sort().map((name) => ({
    name,
    runs: sum(after, name, 'runs') - sum(before, name, 'runs'),
    ns: sum(after, name, 'ns') - sum(before, name, 'ns'),
  }))
}

/** Each program's runs per request and time per run, medians over the samples given. */
export function programCosts(samples: Sample[]): ProgramCost[] | undefined {
  const withRuns = samples.filter((s) => s.programs && s.requests > 0)
  if (withRuns.length === 0) return undefined
  const names = [...new Set(withRuns.flatMap((s) => s.programs?.map((p) => p.name) ?? []))].sort()
  return names.map((name) => {
    const of = withRuns.map((s) => ({p: s.programs?.find((x) => x.name === name), requests: s.requests}))
    const runsPerRequest = median(of.map(({p, requests}) => (p?.runs ?? 0) / requests))
    const nsPerRun = median(of.filter(({p}) => (p?.runs ?? 0) > 0).map(({p}) => (p?.ns ?? 0) / (p?.runs ?? 1)))
    return {name, runsPerRequest, nsPerRun, usPerRequest: median(of.map(({p, requests}) => (p?.ns ?? 0) / requests / 1000))}
  })
}

const NO_RATIO: Ratio = {median: Number.NaN, low: Number.NaN, high: Number.NaN, rounds: 0}

/** Ratios and quiet rounds per scenario, for the samples of one sidecar shape. */
export function summarize(samples: Sample[], scenarios: Scenario[], opts: {quietOtherCpuPct?: number} = {}): ScenarioSummary[] {
  const quietPct = opts.quietOtherCpuPct ?? QUIET_OTHER_CPU_PCT
  return scenarios.map((scenario) => {
    const of = (mode: Mode) => samples.filter((s) => s.scenario === scenario && s.mode === mode)
    const med = (mode: Mode, k: keyof WrkResult | 'cpuPerRequestUs') => median(of(mode).map((s) => s[k]))
    const measured = ALL_MODES.filter((m) => (MODES as readonly Mode[]).includes(m) || samples.some((s) => s.mode === m))
    const modes = Object.fromEntries(
      measured.map((m) => [
        m,
        {
          requestsPerSec: med(m, 'requestsPerSec'),
          p50: med(m, 'p50'),
          p90: med(m, 'p90'),
          p99: med(m, 'p99'),
          cpuPerRequestUs: med(m, 'cpuPerRequestUs'),
          errors: of(m).reduce((a, s) => a + s.errors, 0),
        },
      ]),
    ) as ScenarioSummary['modes']
    const rounds = [...new Set(samples.map((s) => s.round))].sort((a, b) => a - b)
    const noise = (s: Sample) => s.otherCpuPct + s.stealPct
    const busiest = (r: number) =>
      samples.filter((s) => s.round === r && s.scenario === scenario).reduce((a, s) => (noise(s) > noise(a) ? s : a))
    const quietRounds = rounds.filter((r) => noise(busiest(r)) <= quietPct)
    // f of each round's samples of the modes named, where those samples were all quiet: a burst of
    // steal during another mode's run says nothing about this ratio. A round missing one counts as none.
    const overRounds = (names: Mode[], f: (...x: Sample[]) => number): Ratio => {
      const values = rounds
        .map((r) => {
          const picked = names.map((m) => samples.find((s) => s.round === r && s.scenario === scenario && s.mode === m))
          return picked.every((x) => x !== undefined && noise(x) <= quietPct) ? f(...(picked as Sample[])) : Number.NaN
        })
        .filter(Number.isFinite)
      return values.length ? {median: median(values), low: Math.min(...values), high: Math.max(...values), rounds: values.length} : NO_RATIO
    }
    // outside the mesh: merbridge enabled against not (direct); else against Istio's rules
    const outside = SCENARIOS[scenario].outside === true
    const perRound = (f: (e: Sample, i: Sample, d: Sample) => number, against: Mode = outside ? 'direct' : 'iptables') =>
      overRounds(['ebpf', against, 'direct'], f)
    const added = (m: Sample, i: Sample, d: Sample) => (m.cpuPerRequestUs - d.cpuPerRequestUs) / (i.cpuPerRequestUs - d.cpuPerRequestUs)
    const beyondSidecars = (m: Mode) => overRounds([m, SIDECARS], (x, sc) => x.cpuPerRequestUs - sc.cpuPerRequestUs)
    const ratios: Record<RatioName, Ratio> = {
      requestsPerSec: perRound((e, i) => e.requestsPerSec / i.requestsPerSec),
      p50: perRound((e, i) => e.p50 / i.p50),
      p99: perRound((e, i) => e.p99 / i.p99),
      // CPU added over direct, ebpf against iptables (nothing is added outside the mesh: see cpuPerRequest)
      addedCpu: outside ? NO_RATIO : perRound(added),
      cpuPerRequest: perRound((e, i) => e.cpuPerRequestUs / i.cpuPerRequestUs),
      baselineRequestsPerSec: perRound((e, b) => e.requestsPerSec / b.requestsPerSec, BASELINE),
      baselineP50: perRound((e, b) => e.p50 / b.p50, BASELINE),
    }
    // outside the mesh no sidecar is in the way: the split says nothing there
    const sidecars = !outside &&
      modes.sidecars && {
        requestsPerSec: overRounds([SIDECARS, 'iptables'], (sc, i) => sc.requestsPerSec / i.requestsPerSec),
        addedCpu: overRounds([SIDECARS, 'iptables', 'direct'], added),
        cpuBeyondUs: {
          iptables: beyondSidecars('iptables'),
          ebpf: beyondSidecars('ebpf'),
          ...(modes.baseline ? {baseline: beyondSidecars(BASELINE)} : {}),
        },
      }
    return {
      scenario,
      title: SCENARIOS[scenario].title,
      outside,
      modes,
      quietRounds,
      leftOut: rounds
        .filter((r) => !quietRounds.includes(r))
        .map((r) => ({round: r, otherCpuPct: busiest(r).otherCpuPct, stealPct: busiest(r).stealPct})),
      reliable: ratios.requestsPerSec.rounds >= 2,
      ratios,
      ...(sidecars ? {sidecars} : {}),
      ...programsOf(samples.filter((s) => s.scenario === scenario && noise(s) <= quietPct)),
    }
  })
}

function programsOf(samples: Sample[]): Pick<ScenarioSummary, 'programs'> {
  const ebpf = programCosts(samples.filter((s) => s.mode === 'ebpf'))
  const baseline = programCosts(samples.filter((s) => s.mode === BASELINE))
  return ebpf ? {programs: {ebpf, ...(baseline ? {baseline} : {})}} : {}
}
