/**
 * `merbridge bench`: the same requests through three interception modes of the lab, switched
 * between rounds: direct (no sidecars: the floor), iptables (Istio's rules, inside the pods only)
 * and ebpf (merbridge on the lab's cgroup). Each mode is checked to do what it says before it is
 * measured.
 */
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {randomBytes} from 'node:crypto'
import {disable} from '../datapath/disable.js'
import {enable} from '../datapath/enable.js'
import {Installation} from '../datapath/installation.js'
import {readMaps} from '../bpf/maps.js'
import {MerbridgeError} from '../errors.js'
import {meshProfile} from '../mesh/profiles.js'
import {requireTools, run} from '../exec.js'
import {redirectCounters} from './istio-iptables.js'
import {APP_PORT, Lab} from './lab.js'
import {median, parseWrk, type WrkResult} from './wrk.js'

export const MODES = ['direct', 'iptables', 'ebpf'] as const
export type Mode = (typeof MODES)[number]

export const SCENARIOS = {
  keepalive: {title: 'keep-alive, 16 connections', args: ['-t2', '-c16']},
  'one-connection': {title: 'one connection, request/response', args: ['-t1', '-c1']},
  'new-connection': {title: 'new connection per request, 16 concurrent', args: ['-t2', '-c16', '-H', 'Connection: close']},
} as const
export type Scenario = keyof typeof SCENARIOS

export interface Sample extends WrkResult {
  round: number
  mode: Mode
  scenario: Scenario
  /** CPU time of all the lab's processes (wrk, sidecars, nginx) per request, microseconds */
  cpuPerRequestUs: number
}

export interface ScenarioSummary {
  scenario: Scenario
  title: string
  modes: Record<Mode, {requestsPerSec: number; p50: number; p90: number; p99: number; cpuPerRequestUs: number; errors: number}>
  /** medians over rounds of each round's ebpf/iptables ratio */
  ratios: {requestsPerSec: number; p50: number; p99: number; addedCpu: number}
}

export interface BenchReport {
  rounds: number
  durationSec: number
  machine: {kernel: string; cpus: number; node: string}
  samples: Sample[]
  summary: ScenarioSummary[]
}

const SERVER_PORT = APP_PORT
const WHOAMI_PORT = APP_PORT + 1

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

  async setup(): Promise<void> {
    requireTools(['haproxy', 'nginx', 'wrk', 'iptables-restore', 'ip', 'ss'], 'the bench', 'bash scripts/setup.sh installs them (apt-get install haproxy nginx wrk iptables iproute2)')
    await this.lab.create([{name: 'client', meshed: true}, {name: 'server', meshed: true}])
    for (const p of ['client', 'server']) {
      // without reuse, a connection per request measures TIME_WAIT port search, not the datapath
      await run('ip', ['netns', 'exec', this.lab.pod(p).netns, 'sysctl', '-q', '-w', 'net.ipv4.tcp_tw_reuse=1'])
      await run('ip', ['netns', 'exec', this.lab.pod(p).netns, 'sysctl', '-q', '-w', 'net.ipv4.ip_local_port_range=1024 65000'])
      await this.lab.startSidecar(p)
    }
    const cfg = join(this.lab.tmp, 'nginx.conf')
    writeFileSync(cfg, nginxConfig(this.lab.tmp))
    this.lab.spawn('server', 'nginx', 'nginx', ['-c', cfg, '-e', join(this.lab.tmp, 'nginx-error.log')])
    await this.lab.waitListening('server', SERVER_PORT)
    // the whoami app answers the mode checks on another port
    await this.lab.startApp('server', WHOAMI_PORT)
    this.podsFile = this.lab.writePodList()
  }

  get url(): string {
    return `http://${this.lab.pod('server').ip}:${SERVER_PORT}/`
  }

  async setMode(mode: Mode): Promise<void> {
    await disable(this.inst, {drainMs: 0})
    for (const p of ['client', 'server']) await this.lab.removeIstioIptables(p)
    if (mode === 'iptables') for (const p of ['client', 'server']) await this.lab.installIstioIptables(p)
    if (mode === 'ebpf') await enable({cgroup: this.lab.cgroup, bpffs: this.inst.dir, podsFile: this.podsFile})
  }

  /**
   * Proof that a mode does what it says: a connection through it is seen by the server's sidecar
   * (or, for direct, not), and by the mechanism that should have carried it.
   */
  async verifyMode(mode: Mode): Promise<void> {
    if (mode === 'ebpf' && !this.inst.exists()) throw new MerbridgeError('mode ebpf: merbridge is not enabled on the lab; refusing to report numbers')
    const beforeCounters = mode === 'ebpf' ? await readMaps.counters(this.inst) : undefined
    const r = await this.lab.exec('client', 'wrk', ['-t1', '-c1', '-d1s', '-H', 'Connection: close', this.url])
    const res = parseWrk(r.stdout)
    // the server app sees 127.0.0.6 exactly when a request came through its inbound sidecar
    const seen = await this.lab.get('client', `http://${this.lab.pod('server').ip}:${WHOAMI_PORT}/whoami`)
    if (seen.status !== 200 || !seen.body) throw new MerbridgeError(`mode ${mode}: the check request failed (${seen.error ?? String(seen.status)})`)
    const passedSidecar = (JSON.parse(seen.body) as {remoteAddress?: string}).remoteAddress === '127.0.0.6'
    if (res.requests === 0 || res.errors > 0) throw new MerbridgeError(`mode ${mode}: requests failed (${res.errors} errors of ${res.requests})`)
    if (mode === 'direct' && passedSidecar) throw new MerbridgeError('mode direct: requests went through the sidecar; refusing to report numbers')
    if (mode !== 'direct' && !passedSidecar) throw new MerbridgeError(`mode ${mode}: requests did not pass the server's sidecar; refusing to report numbers`)
    if (mode === 'iptables') {
      const redirects = redirectCounters(await this.lab.iptablesSave('client')).ISTIO_REDIRECT ?? 0
      if (redirects === 0) throw new MerbridgeError("mode iptables: the client's outbound REDIRECT rule caught nothing; refusing to report numbers")
    }
    if (mode === 'ebpf') {
      const after = await readMaps.counters(this.inst)
      if (!beforeCounters || after.connOutbound <= beforeCounters.connOutbound || after.msgRedirected <= beforeCounters.msgRedirected)
        throw new MerbridgeError('mode ebpf: merbridge did not redirect the connections; refusing to report numbers')
    }
  }

  cpuUsageUs(): number {
    const m = /usage_usec (\d+)/.exec(readFileSync(join(this.lab.cgroup, 'cpu.stat'), 'utf8'))
    return Number(m?.[1] ?? Number.NaN)
  }

  async measure(round: number, mode: Mode, scenario: Scenario, durationSec: number): Promise<Sample> {
    const cpu0 = this.cpuUsageUs()
    const r = await this.lab.exec('client', 'wrk', [...SCENARIOS[scenario].args, `-d${durationSec}s`, '--latency', this.url], {timeoutMs: (durationSec + 30) * 1000})
    const cpu = this.cpuUsageUs() - cpu0
    const res = parseWrk(r.stdout)
    return {...res, round, mode, scenario, cpuPerRequestUs: res.requests > 0 ? cpu / res.requests : Number.NaN}
  }

  async teardown(): Promise<void> {
    try {
      await disable(this.inst, {drainMs: 0})
    } finally {
      await this.lab.destroy()
    }
  }
}

export function summarize(samples: Sample[], scenarios: Scenario[]): ScenarioSummary[] {
  return scenarios.map((scenario) => {
    const of = (mode: Mode) => samples.filter((s) => s.scenario === scenario && s.mode === mode)
    const med = (mode: Mode, k: keyof WrkResult | 'cpuPerRequestUs') => median(of(mode).map((s) => s[k]))
    const modes = Object.fromEntries(
      MODES.map((m) => [m, {requestsPerSec: med(m, 'requestsPerSec'), p50: med(m, 'p50'), p90: med(m, 'p90'), p99: med(m, 'p99'), cpuPerRequestUs: med(m, 'cpuPerRequestUs'), errors: of(m).reduce((a, s) => a + s.errors, 0)}]),
    ) as ScenarioSummary['modes']
    const rounds = [...new Set(samples.map((s) => s.round))]
    const perRound = (f: (e: Sample, i: Sample, d: Sample) => number) =>
      median(
        rounds.map((r) => {
          const pick = (m: Mode) => samples.find((s) => s.round === r && s.scenario === scenario && s.mode === m)
          const [e, i, d] = [pick('ebpf'), pick('iptables'), pick('direct')]
          return e && i && d ? f(e, i, d) : Number.NaN
        }),
      )
    return {
      scenario,
      title: SCENARIOS[scenario].title,
      modes,
      ratios: {
        requestsPerSec: perRound((e, i) => e.requestsPerSec / i.requestsPerSec),
        p50: perRound((e, i) => e.p50 / i.p50),
        p99: perRound((e, i) => e.p99 / i.p99),
        // CPU added over direct, ebpf against iptables
        addedCpu: perRound((e, i, d) => (e.cpuPerRequestUs - d.cpuPerRequestUs) / (i.cpuPerRequestUs - d.cpuPerRequestUs)),
      },
    }
  })
}
