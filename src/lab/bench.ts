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
import {parseWrk} from './wrk.js'
import {
  ALL_MODES,
  machineTimesUs,
  MODES,
  BASELINE,
  SIDECARS,
  type Mode,
  type Baseline,
  type Scenario,
  SCENARIOS,
  type Sample,
  type ProgramRuns,
  programDeltas,
} from './bench-report.js'

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
      await this.lab.sidecars.start(p, {threads: this.sidecarThreads, extra: fixedRoutes(this.lab.pod('server').ip)})
    }
    const cfg = join(this.lab.tmp, 'nginx.conf')
    writeFileSync(cfg, nginxConfig(this.lab.tmp))
    this.lab.spawn('server', 'nginx', 'nginx', ['-c', cfg, '-e', join(this.lab.tmp, 'nginx-error.log')])
    await this.lab.waitListening('server', SERVER_PORT)
    // the whoami app answers the mode checks on another port
    await this.lab.clients.startApp('server', WHOAMI_PORT)
    // the unmeshed pod the node calls in the outside scenarios: the same server, no sidecar
    const plainDir = join(this.lab.tmp, PLAIN)
    mkdirSync(plainDir)
    writeFileSync(join(plainDir, 'nginx.conf'), nginxConfig(plainDir))
    this.lab.spawn(PLAIN, 'nginx', 'nginx', ['-c', join(plainDir, 'nginx.conf'), '-e', join(plainDir, 'nginx-error.log')])
    await this.lab.waitListening(PLAIN, SERVER_PORT)
    await this.lab.clients.startApp(PLAIN, WHOAMI_PORT)
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
    for (const p of ['client', 'server']) await this.lab.iptables.remove(p)
    if (mode === 'iptables') for (const p of ['client', 'server']) await this.lab.iptables.install(p)
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
    const outside = await this.lab.clients.get(NODE, `http://${this.lab.pod(PLAIN).ip}:${WHOAMI_PORT}/whoami`)
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
    const seen = await this.lab.clients.get('client', `http://${this.lab.pod('server').ip}:${WHOAMI_PORT}/whoami`)
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
      const redirects = redirectCounters(await this.lab.iptables.save('client')).ISTIO_REDIRECT ?? 0
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
    const before = await this.lab.sidecars.frontendSessions('server')
    const res = parseWrk(
      (await this.lab.exec('client', 'wrk', ['-t1', '-c1', '-d1s', '-H', 'Connection: close', this.urlOf(SIDECARS)])).stdout,
    )
    if (res.requests === 0 || res.errors > 0)
      throw new MerbridgeError(`mode ${SIDECARS}: requests failed (${res.errors} errors of ${res.requests})`)
    const passed = ((await this.lab.sidecars.frontendSessions('server')).fixed_inbound ?? 0) - (before.fixed_inbound ?? 0)
    if (passed < res.requests)
      throw new MerbridgeError(
        `mode ${SIDECARS}: ${passed} of ${res.requests} requests passed the server's sidecar; refusing to report numbers`,
      )
    const seen = await this.lab.clients.get('client', `http://${this.lab.pod('server').ip}:${WHOAMI_PORT}/whoami`)
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
