/**
 * A node in miniature: pods as network namespaces on a bridge that lives in a namespace of its
 * own (the host's namespace and iptables are never touched), each pod with its own cgroup under
 * one parent cgroup that merbridge attaches to. Everything is named with one random id and
 * removed by destroy(), which is safe to call at any point.
 */
import {randomBytes} from 'node:crypto'
import {existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import type {MeshProfile} from '../mesh/profiles.js'
import {run} from '../node/exec.js'
import {findCgroup2, readMounts} from '../node/mounts.js'
import {PACKAGE_ROOT} from '../paths.js'
import {LabProcess, POLL_DEADLINE_MS} from './process.js'
import {haproxyConfig} from './sidecar.js'
import {istioNatRules} from './istio-iptables.js'

export interface LabPodSpec {
  name: string
  /** listed in the pods file with an injected sidecar */
  meshed: boolean
}

export interface LabPod {
  name: string
  netns: string
  ip: string
  cgroup: string
  meshed: boolean
}

const SUBNET = '10.77.0'
export const APP_PORT = 8080
/** The lab's stand-in for the node itself: the bridge namespace, with an address on the pods' subnet. */
export const NODE = 'node'
export const NODE_IP = `${SUBNET}.1`

export class Lab {
  readonly id = `mb${randomBytes(3).toString('hex')}`
  readonly pods = new Map<string, LabPod>()
  readonly processes: LabProcess[] = []
  readonly tmp: string
  readonly cgroup: string
  readonly bridgeNs: string
  private created = false

  constructor(readonly mesh: MeshProfile) {
    const cg = findCgroup2(readMounts())
    if (!cg.path) throw new Error('no cgroup v2 mount on this machine')
    this.cgroup = join(cg.path, `merbridge-lab-${this.id}`)
    this.tmp = join(tmpdir(), `merbridge-lab-${this.id}`)
    this.bridgeNs = `${this.id}-br`
  }

  /** Build the bridge and the pods. */
  async create(specs: LabPodSpec[]): Promise<void> {
    this.created = true
    mkdirSync(this.tmp, {recursive: true})
    mkdirSync(this.cgroup)
    await run('ip', ['netns', 'add', this.bridgeNs])
    await run('ip', ['-n', this.bridgeNs, 'link', 'add', 'br0', 'type', 'bridge'])
    await run('ip', ['-n', this.bridgeNs, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'br0'])
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', 'br0', 'up'])
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', 'lo', 'up'])
    for (const spec of specs) await this.addPod(spec)
    mkdirSync(join(this.cgroup, 'outside'))
  }

  /** The address the next pod will get. */
  nextIp(): string {
    return `${SUBNET}.${this.pods.size + 2}`
  }

  /** A pod joins the bridge: its namespace, veth pair, address and cgroup. */
  async addPod(spec: LabPodSpec): Promise<LabPod> {
    const pod: LabPod = {name: spec.name, netns: `${this.id}-${spec.name}`, ip: this.nextIp(), cgroup: join(this.cgroup, spec.name), meshed: spec.meshed}
    this.pods.set(spec.name, pod)
    mkdirSync(pod.cgroup)
    await run('ip', ['netns', 'add', pod.netns])
    const veth = `v${spec.name}`
    await run('ip', ['link', 'add', veth, 'netns', this.bridgeNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns])
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', veth, 'master', 'br0', 'up'])
    await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'eth0', 'up'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'lo', 'up'])
    return pod
  }

  pod(name: string): LabPod {
    const p = this.pods.get(name)
    if (!p) throw new Error(`no lab pod ${name}`)
    return p
  }

  /**
   * Start a process inside a pod: in its cgroup first (while /sys is still the host's), then in
   * its network namespace. `cgroupName` lets a process sit in the pod's namespace but another cgroup.
   */
  spawn(podName: string, label: string, command: string, args: string[], cgroupName = podName === NODE ? 'outside' : podName): LabProcess {
    const netns = podName === NODE ? this.bridgeNs : this.pod(podName).netns
    const procs = join(this.cgroup, cgroupName, 'cgroup.procs')
    // a fixed script; the arguments are passed as positional parameters, never interpolated
    const p = new LabProcess(label, 'sh', ['-c', 'echo $$ > "$0" && exec "$@"', procs, 'ip', 'netns', 'exec', netns, command, ...args])
    this.processes.push(p)
    return p
  }

  /** Run a command to completion inside a pod (in its cgroup and namespace); returns its output. */
  async exec(podName: string, command: string, args: string[], opts: {cgroupName?: string; timeoutMs?: number} = {}): Promise<{code: number | null; stdout: string; stderr: string}> {
    const p = this.spawn(podName, `${command} in ${podName}`, command, args, opts.cgroupName)
    const timer = setTimeout(() => void p.stop(), opts.timeoutMs ?? 60_000)
    const code = await p.exited
    clearTimeout(timer)
    this.processes.splice(this.processes.indexOf(p), 1)
    return {code, stdout: p.stdout, stderr: p.stderr}
  }

  appScript(): string {
    return join(PACKAGE_ROOT, 'dist', 'lab', 'http-app.js')
  }

  async startApp(podName: string, port = APP_PORT): Promise<LabProcess> {
    const p = this.spawn(podName, `app ${port} in ${podName}`, process.execPath, [this.appScript(), 'serve', String(port), this.tmp])
    await p.waitFor(/listening on/)
    return p
  }

  /**
   * A GET of the app's held stream from one pod's app to another pod: it flows until release(),
   * so what a test inspects stays open for as long as the test takes.
   */
  openStream(from: string, url: string): HeldStream {
    const gate = `gate-${randomBytes(4).toString('hex')}`
    const p = this.spawn(from, `stream ${from} -> ${url}`, process.execPath, [this.appScript(), 'get', `${url}/stream?gate=${gate}`])
    return new HeldStream(p, join(this.tmp, gate))
  }

  /** GET a URL from a pod's app container (its cgroup, unless told otherwise). */
  async get(podName: string, url: string, cgroupName?: string): Promise<{status?: number; bytes?: number; sha256?: string; body?: string; error?: string}> {
    const r = await this.exec(podName, process.execPath, [this.appScript(), 'get', url], {cgroupName})
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as {status?: number; bytes?: number; sha256?: string; body?: string; error?: string}
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }

  async startSidecar(podName: string): Promise<LabProcess> {
    const cfg = join(this.tmp, `haproxy-${podName}.cfg`)
    writeFileSync(cfg, haproxyConfig(this.mesh))
    const p = this.spawn(podName, `sidecar in ${podName}`, 'haproxy', ['-db', '-f', cfg])
    await this.waitListening(podName, this.mesh.outboundPort)
    await this.waitListening(podName, this.mesh.inboundPort)
    return p
  }

  async waitListening(podName: string, port: number, timeoutMs = POLL_DEADLINE_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const r = await run('ip', ['netns', 'exec', this.pod(podName).netns, 'ss', '-Htln', `sport = :${port}`], {allowFailure: true})
      if (r.stdout.trim()) return
      if (Date.now() > deadline) throw new Error(`nothing listens on ${podName}:${port}`)
      await sleep(25)
    }
  }

  /** The pods as `kubectl get pods -A -o json` would list them for this node. */
  podList(node = hostname()): string {
    const items = [...this.pods.values()].map((p) => ({
      kind: 'Pod',
      metadata: {name: p.name, namespace: 'lab', annotations: p.meshed ? {[this.mesh.injectedAnnotation]: '{"containers":["istio-proxy"]}'} : {}},
      spec: {nodeName: node, containers: [{name: 'app'}, ...(p.meshed ? [{name: this.mesh.sidecarContainer}] : [])]},
      status: {phase: 'Running', podIP: p.ip, podIPs: [{ip: p.ip}]},
    }))
    return JSON.stringify({apiVersion: 'v1', kind: 'List', items})
  }

  writePodList(node?: string): string {
    const file = join(this.tmp, 'pods.json')
    writeFileSync(file, this.podList(node))
    return file
  }

  async installIstioIptables(podName: string): Promise<void> {
    await run('ip', ['netns', 'exec', this.pod(podName).netns, 'iptables-restore', '--noflush'], {input: istioNatRules(this.mesh)})
  }

  async removeIstioIptables(podName: string): Promise<void> {
    const ns = this.pod(podName).netns
    await run('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-F'], {allowFailure: true})
    await run('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-X'], {allowFailure: true})
    // with the nft backend, -F/-X leave the nat base chains registered
    await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'ip', 'nat'], {allowFailure: true})
  }

  async iptablesSave(podName: string): Promise<string> {
    return (await run('ip', ['netns', 'exec', this.pod(podName).netns, 'iptables-save', '-c', '-t', 'nat'])).stdout
  }

  /** Packets through a pod's eth0 so far (received + sent). */
  async packets(podName: string): Promise<number> {
    const ns = this.pod(podName).netns
    const r = await run('ip', ['-n', ns, '-j', '-s', 'link', 'show', 'eth0'])
    const [link] = JSON.parse(r.stdout) as {stats64?: {rx: {packets: number}; tx: {packets: number}}}[]
    return (link?.stats64?.rx.packets ?? 0) + (link?.stats64?.tx.packets ?? 0)
  }

  /** Remove everything the lab made; safe to call twice and after a partial create. */
  async destroy(): Promise<void> {
    for (const p of [...this.processes].reverse()) await p.stop()
    this.processes.length = 0
    if (!this.created) return
    for (const pod of this.pods.values()) await run('ip', ['netns', 'del', pod.netns], {allowFailure: true})
    await run('ip', ['netns', 'del', this.bridgeNs], {allowFailure: true})
    for (const name of [...this.pods.keys(), 'outside']) await removeCgroup(join(this.cgroup, name))
    await removeCgroup(this.cgroup)
    rmSync(this.tmp, {recursive: true, force: true})
  }
}

/** rmdir a cgroup once its processes are gone (they may take a moment to leave, on a busy machine longer). */
async function removeCgroup(path: string): Promise<void> {
  const deadline = Date.now() + POLL_DEADLINE_MS
  while (existsSync(path)) {
    try {
      rmdirSync(path)
      return
    } catch (err) {
      if (Date.now() > deadline) {
        const procs = existsSync(join(path, 'cgroup.procs')) ? readFileSync(join(path, 'cgroup.procs'), 'utf8').trim().split('\n').join(', ') : ''
        throw new Error(`cannot remove cgroup ${path} (${(err as Error).message}; processes: ${procs || 'none'})`, {cause: err})
      }
      await sleep(20)
    }
  }
}

/** A stream from the lab app that flows until released; see openStream. */
export class HeldStream {
  constructor(readonly process: LabProcess, private readonly gateFile: string) {}

  /** Bytes received so far, from the client's progress lines. */
  get bytes(): number {
    let last = 0
    for (const line of this.process.stdout.split('\n')) {
      const m = /^\{"progress":(\d+)\}$/.exec(line)
      if (m) last = Number(m[1])
    }
    return last
  }

  /** Wait until more than `n` bytes have arrived (the stream is flowing), or fail saying so. */
  async flowingPast(n: number, what: string): Promise<number> {
    await this.process.waitFor(() => this.bytes > n, `more than ${n} bytes of the held stream (${what})`)
    return this.bytes
  }

  /** Let the server finish the response, then the client's result: bytes and digest. */
  async release(): Promise<{code: number | null; bytes?: number; sha256?: string; error?: string}> {
    writeFileSync(this.gateFile, '')
    const code = await this.process.exited
    const last = this.process.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return {code, ...(JSON.parse(last) as {bytes?: number; sha256?: string; error?: string})}
    } catch {
      return {code, error: `no result: ${this.process.stderr.trim() || last}`}
    }
  }
}

