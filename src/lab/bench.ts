/**
 * `merbridge bench`: the same requests through three interception modes of the lab, switched
 * between rounds: direct (no sidecars: the floor), iptables (Istio's rules, inside the pods only)
 * and ebpf (merbridge on the lab's cgroup). Each mode is checked to do what it says before it is
 * measured.
 */
import {mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {randomBytes} from 'node:crypto'
import {disable} from '../datapath/disable.js'
import {enable} from '../datapath/enable.js'
import {Installation} from '../datapath/installation.js'
import {bpftool} from '../bpf/bpftool.js'
import {readMaps} from '../bpf/maps.js'
import {statsEnabled} from '../datapath/status.js'
import {MerbridgeError} from '../errors.js'
import {meshProfile} from '../mesh/profiles.js'
import {requireTools, run} from '../exec.js'
import {redirectCounters} from './istio-iptables.js'
import {APP_PORT, Lab, NODE, NODE_IP} from './lab.js'
import type {ScaleReport} from './scale.js'
import {median, parseWrk, type WrkResult} from './wrk.js'

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
const ALL_MODES: Mode[] = [...MODES, SIDECARS, BASELINE]

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

/** A median of per-round ebpf/iptables ratios, with the lowest and highest round. */
export interface Ratio {
  median: number
  low: number
  high: number
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
  /** rounds left out, with the other CPU use and steal of their busiest sample */
  leftOut: {round: number; otherCpuPct: number; stealPct: number}[]
  /** fewer than 2 quiet rounds: the ratios say little */
  reliable: boolean
  /** outside the mesh: the ratios are ebpf/direct (merbridge enabled against not) */
  outside: boolean
  /** medians over quiet rounds of each round's ebpf/iptables ratio (ebpf/direct outside the mesh, ebpf/baseline for baseline*), with their spread */
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

const SERVER_PORT = APP_PORT
/** the unmeshed pod of the outside scenarios */
const PLAIN = 'plain'
const WHOAMI_PORT = APP_PORT + 1
/** the sidecars mode's fixed listeners: outbound in the client's sidecar, inbound in the server's */
const FIXED_OUTBOUND_PORT = 15101
const FIXED_INBOUND_PORT = 15106

/** The sidecars mode's fixed routes, in every sidecar of the lab (haproxy configuration). */
function fixedRoutes(serverIp: string): string {
  return `frontend fixed_outbound
  bind 127.0.0.1:${FIXED_OUTBOUND_PORT}
  default_backend fixed_outbound
frontend fixed_inbound
  bind 0.0.0.0:${FIXED_INBOUND_PORT}
  default_backend fixed_inbound
backend fixed_outbound
  server upstream ${serverIp}:${FIXED_INBOUND_PORT}
backend fixed_inbound
  source 127.0.0.6
  server app 127.0.0.1:${SERVER_PORT}
`
}

function nginxConfig(dir: string): string {
  return `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/nginx-body;
  proxy_temp_path ${dir}/nginx-proxy;
  fastcgi_temp_path ${dir}/nginx-fastcgi;
  uwsgi_temp_path ${dir}/nginx-uwsgi;
  scgi_temp_path ${dir}/nginx-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen ${SERVER_PORT};
    location / { return 200 "hello from the server pod\\n"; }
  }
}
`
}

export class Bench {
  readonly lab = new Lab(meshProfile('istio'))
  readonly inst = new Installation(`/sys/fs/bpf/merbridge-bench-${randomBytes(3).toString('hex')}`)
  private podsFile = ''

  private baselineUp = false
  readonly baselineDir = `/sys/fs/bpf/merbridge-bench-baseline-${randomBytes(3).toString('hex')}`

  /** `sidecarThreads`: each sidecar's worker threads (haproxy's nbthread); `sidecarsMode`: measure the sidecars mode too */
  constructor(
    readonly sidecarThreads = 1,
    readonly baseline?: Baseline,
    readonly sidecarsMode = false,
  ) {}

  /** The modes each round measures: the sidecars mode and the baseline's too when asked for. */
  get modes(): Mode[] {
    return ALL_MODES.filter(
      (m) =>
        (MODES as readonly Mode[]).includes(m) || (m === SIDECARS && this.sidecarsMode) || (m === BASELINE && this.baseline !== undefined),
    )
  }

  async setup(): Promise<void> {
    requireTools(
      ['haproxy', 'nginx', 'wrk', 'iptables-restore', 'ip', 'ss'],
      'the bench',
      'bash scripts/setup.sh installs them (apt-get install haproxy nginx wrk iptables iproute2)',
    )
    await this.lab.create([
      {name: 'client', meshed: true},
      {name: 'server', meshed: true},
      {name: PLAIN, meshed: false},
    ])
    for (const ns of this.namespaces()) {
      // without reuse, a connection per request measures TIME_WAIT port search, not the datapath
      await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.tcp_tw_reuse=1'])
    }
    for (const p of ['client', 'server']) {
      // the sidecars mode's routes are there in every mode: all modes run the same sidecar configuration
      await this.lab.startSidecar(p, {threads: this.sidecarThreads, extra: fixedRoutes(this.lab.pod('server').ip)})
    }
    const cfg = join(this.lab.tmp, 'nginx.conf')
    writeFileSync(cfg, nginxConfig(this.lab.tmp))
    this.lab.spawn('server', 'nginx', 'nginx', ['-c', cfg, '-e', join(this.lab.tmp, 'nginx-error.log')])
    await this.lab.waitListening('server', SERVER_PORT)
    // the whoami app answers the mode checks on another port
    await this.lab.startApp('server', WHOAMI_PORT)
    // the unmeshed pod the node calls in the outside scenarios: the same server, no sidecar
    const plainDir = join(this.lab.tmp, PLAIN)
    mkdirSync(plainDir)
    writeFileSync(join(plainDir, 'nginx.conf'), nginxConfig(plainDir))
    this.lab.spawn(PLAIN, 'nginx', 'nginx', ['-c', join(plainDir, 'nginx.conf'), '-e', join(plainDir, 'nginx-error.log')])
    await this.lab.waitListening(PLAIN, SERVER_PORT)
    await this.lab.startApp(PLAIN, WHOAMI_PORT)
    this.podsFile = this.lab.writePodList()
  }

  /** The network namespaces wrk's connections start or end in: the pods' and the node's. */
  private namespaces(): string[] {
    return [...['client', 'server', PLAIN].map((p) => this.lab.pod(p).netns), this.lab.bridgeNs]
  }

  get url(): string {
    return `http://${this.lab.pod('server').ip}:${SERVER_PORT}/`
  }

  /** Where the client sends its requests in a mode: the sidecars mode calls its sidecar's fixed listener; the node calls the unmeshed pod. */
  urlOf(mode: Mode, scenario?: Scenario): string {
    if (scenario && SCENARIOS[scenario].outside) return `http://${this.lab.pod(PLAIN).ip}:${SERVER_PORT}/`
    return mode === SIDECARS ? `http://127.0.0.1:${FIXED_OUTBOUND_PORT}/` : this.url
  }

  async setMode(mode: Mode): Promise<void> {
    await this.freshPorts(mode)
    await disable(this.inst, {drainMs: 0})
    await this.baselineDown()
    for (const p of ['client', 'server']) await this.lab.removeIstioIptables(p)
    if (mode === 'iptables') for (const p of ['client', 'server']) await this.lab.installIstioIptables(p)
    if (mode === 'ebpf') await enable({cgroup: this.lab.cgroup, bpffs: this.inst.dir, podsFile: this.podsFile})
    if (mode === BASELINE && this.baseline) {
      this.baselineUp = true
      await run(this.baseline.up, [this.lab.cgroup, this.baselineDir, ...['client', 'server'].map((p) => this.lab.pod(p).ip)])
    }
  }

  /**
   * Each mode starts without the TIME_WAIT sockets of the one before. They live a minute, and the
   * next mode's sockets on the same 4-tuple carry timestamps from another offset (the kernel
   * derives it from the addresses a socket connects to: the pod in one mode, 127.0.0.1:15001 in
   * another), so PAWS drops their SYNs and each waits for a retransmit: the 10-16 ms p90 of new
   * connections in every mode but the first of a lab (TcpExtPAWSTimewait and TCPSynRetrans in the
   * pods' nstat). They are destroyed (ss -K); where the kernel cannot, each mode connects from
   * its own share of the ephemeral ports instead.
   */
  private async freshPorts(mode: Mode): Promise<void> {
    for (const netns of this.namespaces()) {
      const ns = ['netns', 'exec', netns]
      await run('ip', [...ns, 'ss', '-K', '-t', 'state', 'time-wait'], {allowFailure: true})
      const left = (await run('ip', [...ns, 'ss', '-H', '-t', 'state', 'time-wait'])).stdout.trim()
      const size = Math.floor((65000 - 1024 + 1) / ALL_MODES.length)
      const first = 1024 + ALL_MODES.indexOf(mode) * size
      const range = left === '' ? '1024 65000' : `${first} ${first + size - 1}`
      await run('ip', [...ns, 'sysctl', '-q', '-w', `net.ipv4.ip_local_port_range=${range}`])
    }
  }

  private async baselineDown(): Promise<void> {
    if (!this.baselineUp || !this.baseline) return
    await run(this.baseline.down, [this.lab.cgroup, this.baselineDir])
    this.baselineUp = false
  }

  /**
   * Proof that a mode does what it says: a connection through it is seen by the server's sidecar
   * (or, for direct, not), and by the mechanism that should have carried it.
   */
  async verifyMode(mode: Mode): Promise<void> {
    if (mode === 'ebpf' && !this.inst.exists())
      throw new MerbridgeError('mode ebpf: merbridge is not enabled on the lab; refusing to report numbers')
    // outside the mesh in every mode: the unmeshed pod sees the node itself
    const outside = await this.lab.get(NODE, `http://${this.lab.pod(PLAIN).ip}:${WHOAMI_PORT}/whoami`)
    const from = outside.body ? (JSON.parse(outside.body) as {remoteAddress?: string}).remoteAddress : undefined
    if (from !== NODE_IP)
      throw new MerbridgeError(
        `mode ${mode}: the node's request to the unmeshed pod came from ${from ?? outside.error ?? 'nowhere'}, not the node; refusing to report numbers`,
      )
    if (mode === SIDECARS) return this.verifySidecarsMode()
    const beforeCounters = mode === 'ebpf' ? await readMaps.counters(this.inst) : undefined
    const r = await this.lab.exec('client', 'wrk', ['-t1', '-c1', '-d1s', '-H', 'Connection: close', this.url])
    const res = parseWrk(r.stdout)
    // the server app sees 127.0.0.6 exactly when a request came through its inbound sidecar
    const seen = await this.lab.get('client', `http://${this.lab.pod('server').ip}:${WHOAMI_PORT}/whoami`)
    if (seen.status !== 200 || !seen.body)
      throw new MerbridgeError(`mode ${mode}: the check request failed (${seen.error ?? String(seen.status)})`)
    const passedSidecar = (JSON.parse(seen.body) as {remoteAddress?: string}).remoteAddress === '127.0.0.6'
    if (res.requests === 0 || res.errors > 0)
      throw new MerbridgeError(`mode ${mode}: requests failed (${res.errors} errors of ${res.requests})`)
    if (mode === 'direct' && passedSidecar)
      throw new MerbridgeError('mode direct: requests went through the sidecar; refusing to report numbers')
    if (mode !== 'direct' && !passedSidecar)
      throw new MerbridgeError(`mode ${mode}: requests did not pass the server's sidecar; refusing to report numbers`)
    if (mode === 'iptables') {
      const redirects = redirectCounters(await this.lab.iptablesSave('client')).ISTIO_REDIRECT ?? 0
      if (redirects === 0)
        throw new MerbridgeError("mode iptables: the client's outbound REDIRECT rule caught nothing; refusing to report numbers")
    }
    if (mode === 'ebpf') {
      const after = await readMaps.counters(this.inst)
      if (!beforeCounters || after.connOutbound <= beforeCounters.connOutbound || after.msgRedirected <= beforeCounters.msgRedirected)
        throw new MerbridgeError('mode ebpf: merbridge did not redirect the connections; refusing to report numbers')
    }
  }

  /** The sidecars mode: requests pass both sidecars' fixed routes, and nothing intercepts (whoami sees the client pod itself). */
  private async verifySidecarsMode(): Promise<void> {
    const before = await this.lab.frontendSessions('server')
    const res = parseWrk(
      (await this.lab.exec('client', 'wrk', ['-t1', '-c1', '-d1s', '-H', 'Connection: close', this.urlOf(SIDECARS)])).stdout,
    )
    if (res.requests === 0 || res.errors > 0)
      throw new MerbridgeError(`mode ${SIDECARS}: requests failed (${res.errors} errors of ${res.requests})`)
    const passed = ((await this.lab.frontendSessions('server')).fixed_inbound ?? 0) - (before.fixed_inbound ?? 0)
    if (passed < res.requests)
      throw new MerbridgeError(
        `mode ${SIDECARS}: ${passed} of ${res.requests} requests passed the server's sidecar; refusing to report numbers`,
      )
    const seen = await this.lab.get('client', `http://${this.lab.pod('server').ip}:${WHOAMI_PORT}/whoami`)
    const via = seen.body ? (JSON.parse(seen.body) as {remoteAddress?: string}).remoteAddress : undefined
    if (via !== this.lab.pod('client').ip)
      throw new MerbridgeError(
        `mode ${SIDECARS}: a request to the server was intercepted (the server saw ${via ?? seen.error ?? 'nothing'}); refusing to report numbers`,
      )
  }

  cpuUsageUs(): number {
    const m = /usage_usec (\d+)/.exec(readFileSync(join(this.lab.cgroup, 'cpu.stat'), 'utf8'))
    return Number(m?.[1] ?? Number.NaN)
  }

  /** The programs of the datapath a mode runs, with their run counts (kernel.bpf_stats_enabled=1). */
  private async programRuns(mode: Mode): Promise<ProgramRuns[] | undefined> {
    const dir = mode === 'ebpf' ? this.inst.dir : mode === BASELINE ? this.baselineDir : undefined
    if (dir === undefined || !statsEnabled()) return undefined
    return (await bpftool.progsPinnedUnder(dir)).map((p) => ({name: p.name, runs: p.run_cnt ?? 0, ns: p.run_time_ns ?? 0}))
  }

  async measure(round: number, mode: Mode, scenario: Scenario, durationSec: number): Promise<Sample> {
    const runs0 = await this.programRuns(mode)
    const [cpu0, machine0, t0] = [this.cpuUsageUs(), machineTimesUs(), performance.now()]
    const from = SCENARIOS[scenario].outside ? NODE : 'client'
    const r = await this.lab.exec(
      from,
      'wrk',
      [...SCENARIOS[scenario].args, `-d${durationSec}s`, '--latency', this.urlOf(mode, scenario)],
      {timeoutMs: (durationSec + 30) * 1000},
    )
    const cpu = this.cpuUsageUs() - cpu0
    const wallUs = (performance.now() - t0) * 1000
    const machine1 = machineTimesUs()
    const otherUs = Math.max(0, machine1.busyUs - machine0.busyUs - cpu)
    const machineUs = wallUs * cpus().length
    const res = parseWrk(r.stdout)
    const runs1 = await this.programRuns(mode)
    const programs = runs0 && runs1 ? programDeltas(runs0, runs1) : undefined
    return {
      ...res,
      round,
      mode,
      scenario,
      sidecarThreads: this.sidecarThreads,
      cpuPerRequestUs: res.requests > 0 ? cpu / res.requests : Number.NaN,
      otherCpuPct: (100 * otherUs) / machineUs,
      stealPct: (100 * (machine1.stealUs - machine0.stealUs)) / machineUs,
      ...(programs ? {programs} : {}),
    }
  }

  async teardown(): Promise<void> {
    try {
      await disable(this.inst, {drainMs: 0})
      await this.baselineDown()
    } finally {
      await this.lab.destroy()
    }
  }
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
    // f of each quiet round's samples of the modes named; a round missing one of them counts as none
    const overRounds = (names: Mode[], f: (...x: Sample[]) => number): Ratio => {
      const values = quietRounds
        .map((r) => {
          const picked = names.map((m) => samples.find((s) => s.round === r && s.scenario === scenario && s.mode === m))
          return picked.every((x) => x !== undefined) ? f(...picked) : Number.NaN
        })
        .filter(Number.isFinite)
      return values.length
        ? {median: median(values), low: Math.min(...values), high: Math.max(...values)}
        : {median: Number.NaN, low: Number.NaN, high: Number.NaN}
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
      addedCpu: outside ? {median: Number.NaN, low: Number.NaN, high: Number.NaN} : perRound(added),
      cpuPerRequest: perRound((e, i) => e.cpuPerRequestUs / i.cpuPerRequestUs),
      baselineRequestsPerSec: perRound((e, b) => e.requestsPerSec / b.requestsPerSec, BASELINE),
      baselineP50: perRound((e, b) => e.p50 / b.p50, BASELINE),
    }
    const sidecars = modes.sidecars && {
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
      reliable: quietRounds.length >= 2,
      ratios,
      ...(sidecars ? {sidecars} : {}),
      ...programsOf(samples.filter((s) => s.scenario === scenario && quietRounds.includes(s.round))),
    }
  })
}

function programsOf(samples: Sample[]): Pick<ScenarioSummary, 'programs'> {
  const ebpf = programCosts(samples.filter((s) => s.mode === 'ebpf'))
  const baseline = programCosts(samples.filter((s) => s.mode === BASELINE))
  return ebpf ? {programs: {ebpf, ...(baseline ? {baseline} : {})}} : {}
}
