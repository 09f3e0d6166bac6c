/**
 * The lab's pods and their network: a node in miniature, pods as network namespaces on a bridge
 * that lives in a namespace of its own (the host's namespace and iptables are never touched),
 * each pod with its own cgroup under one parent cgroup that merbridge attaches to, and the
 * processes started in them. Everything is named with one random id and removed by destroy(),
 * which is safe to call at any point. The other rooms of the lab (links, sidecars, clients, DNS,
 * iptables) work on these pods; lab.ts puts them together.
 */
import {randomBytes} from 'node:crypto'
import {existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import type {MeshProfile} from '../mesh/profiles.js'
import {run} from '../exec.js'
import {findCgroup2, readMounts} from '../node/mounts.js'
import {LabProcess, POLL_DEADLINE_MS} from './process.js'

export interface LabPodSpec {
  name: string
  /** listed in the pods file with an injected sidecar */
  meshed: boolean
  /** the pod's own annotations (Istio's traffic.sidecar.istio.io/* and the like) */
  annotations?: Record<string, string>
  /** the proxy container's runAsUser/runAsGroup, when not the mesh's default */
  proxy?: {uid: number; gid: number}
  /** a gateway: the proxy container runs as a router */
  gateway?: boolean
  /** its proxy captures DNS (ISTIO_META_DNS_CAPTURE=true in the proxy container's env) */
  dnsCapture?: boolean
  /** in a dual-stack lab: only an IPv6 address (`ip` and `ip6` are both that address) */
  ipv6Only?: boolean
  /**
   * injected without Istio's CNI: the pods file holds its istio-init container, whose arguments
   * carry these mesh-wide values (keyed as the annotations they stand in for) where the pod's own
   * annotations say nothing, as the injector writes them; and `env`, its environment (the settings
   * istio-iptables reads only from there)
   */
  istioInit?: {meshDefaults?: Record<string, string>; env?: Record<string, string>}
  /**
   * in a dual-stack lab: its proxy lacks ISTIO_DUAL_STACK (every other one has it), so Istio writes
   * no ip6tables rules for it and its sidecar has no IPv6 half, as Envoy then listens on IPv4 only
   */
  noDualStack?: boolean
}

export interface LabPod extends LabPodSpec {
  netns: string
  ip: string
  /** in a dual-stack lab */
  ip6?: string
  cgroup: string
}

export const SUBNET = '10.77.0'
export const APP_PORT = 8080
/** The lab's stand-in for the node itself: the bridge namespace, with an address on the pods' subnet. */
export const NODE = 'node'
export const NODE_IP = `${SUBNET}.1`
/** Another node: a namespace routed through the lab's node, with its processes outside the lab's cgroup. */
export const REMOTE = 'remote'
export const REMOTE_IP = '10.78.0.2'
/** Dual-stack labs: the pods' IPv6 prefix, the node's and the remote node's IPv6 addresses. */
export const SUBNET6 = 'fd77::'
export const NODE_IP6 = 'fd77::1'
export const REMOTE_IP6 = 'fd78::2'
/** The remote node's second address: a DNS server the pods' resolv.conf does not name. */
export const REMOTE_IP_OTHER = '10.78.0.3'
export class LabPods {
  readonly id = `mb${randomBytes(3).toString('hex')}`
  readonly pods = new Map<string, LabPod>()
  readonly processes: LabProcess[] = []
  readonly tmp: string
  readonly cgroup: string
  readonly bridgeNs: string
  private created = false
  /** the remote node's cgroup, outside the lab's (addRemoteNode) */
  private remoteCgroup: string | undefined
  /** the nameservers every pod's resolv.conf names (set before create) */
  resolvers: string[] = []
  /** /etc/netns, if the lab made it (ip netns exec binds /etc/netns/NAME/resolv.conf) */
  private madeEtcNetns = false

  /** `dualStack`: every pod, the node and the remote node get an IPv6 address too, and sidecars an IPv6 half. */
  constructor(
    readonly mesh: MeshProfile,
    readonly dualStack = false,
  ) {
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
    // the node routes between its pods and other nodes
    await run('ip', ['netns', 'exec', this.bridgeNs, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'])
    if (this.dualStack) {
      await run('ip', ['netns', 'exec', this.bridgeNs, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1'])
      await run('ip', ['-n', this.bridgeNs, 'addr', 'add', `${NODE_IP6}/64`, 'dev', 'br0', 'nodad'])
    }
    for (const spec of specs) await this.addPod(spec)
    mkdirSync(join(this.cgroup, 'outside'))
  }

  /**
   * Give every pod created after this a resolv.conf naming the remote node's resolver (IPv4, and
   * IPv6 in a dual-stack lab), as the kubelet gives a pod the cluster DNS.
   */
  useRemoteResolver(): void {
    this.resolvers = [REMOTE_IP, ...(this.dualStack ? [REMOTE_IP6] : [])]
  }

  private writeResolvConf(netns: string): void {
    if (this.resolvers.length === 0) return
    if (!existsSync('/etc/netns')) {
      mkdirSync('/etc/netns')
      this.madeEtcNetns = true
    }
    mkdirSync(join('/etc/netns', netns))
    writeFileSync(join('/etc/netns', netns, 'resolv.conf'), this.resolvers.map((r) => `nameserver ${r}\n`).join(''))
  }

  /** The address the next pod will get. */
  nextIp(): string {
    return `${SUBNET}.${this.pods.size + 2}`
  }

  /** A pod joins the bridge: its namespace, veth pair, address and cgroup. */
  async addPod(spec: LabPodSpec): Promise<LabPod> {
    const n = this.pods.size + 2
    if (spec.ipv6Only && !this.dualStack) throw new Error('an IPv6-only pod needs a dual-stack lab')
    const ip6 = this.dualStack ? `${SUBNET6}${n}` : undefined
    const pod: LabPod = {
      ...spec,
      netns: `${this.id}-${spec.name}`,
      ip: spec.ipv6Only && ip6 ? ip6 : this.nextIp(),
      ...(ip6 ? {ip6} : {}),
      cgroup: join(this.cgroup, spec.name),
    }
    this.pods.set(spec.name, pod)
    mkdirSync(pod.cgroup)
    await run('ip', ['netns', 'add', pod.netns])
    this.writeResolvConf(pod.netns)
    const veth = `v${spec.name}`
    await run('ip', ['link', 'add', veth, 'netns', this.bridgeNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns])
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', veth, 'master', 'br0', 'up'])
    if (!spec.ipv6Only) await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'eth0', 'up'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'lo', 'up'])
    if (!spec.ipv6Only) await run('ip', ['-n', pod.netns, 'route', 'add', 'default', 'via', NODE_IP])
    if (pod.ip6) {
      await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip6}/64`, 'dev', 'eth0', 'nodad'])
      await run('ip', ['-n', pod.netns, '-6', 'route', 'add', 'default', 'via', NODE_IP6])
      // the inbound sidecar's IPv6 upstream source, as Istio adds it
      await run('ip', ['-n', pod.netns, 'addr', 'add', '::6/128', 'dev', 'lo'])
    }
    return pod
  }

  pod(name: string): LabPod {
    const p = this.pods.get(name)
    if (!p) throw new Error(`no lab pod ${name}`)
    return p
  }

  /** Make the remote node's cgroup, beside the lab's, and its namespace (links.addRemote wires it): returns the namespace. */
  async addRemoteNode(): Promise<string> {
    this.remoteCgroup = join(dirname(this.cgroup), `merbridge-lab-${this.id}-remote`)
    mkdirSync(this.remoteCgroup)
    const ns = `${this.id}-${REMOTE}`
    await run('ip', ['netns', 'add', ns])
    return ns
  }

  /**
   * Start a process inside a pod: in its cgroup first (while /sys is still the host's), then in
   * its network namespace. `cgroupName` lets a process sit in the pod's namespace but another cgroup
   * of the lab's, or (REMOTE) in the remote node's, outside the one merbridge is attached to.
   */
  spawn(podName: string, label: string, command: string, args: string[], cgroupName = podName === NODE ? 'outside' : podName): LabProcess {
    const netns = podName === NODE ? this.bridgeNs : podName === REMOTE ? `${this.id}-${REMOTE}` : this.pod(podName).netns
    const cgroup = podName === REMOTE || cgroupName === REMOTE ? this.remoteCgroup : join(this.cgroup, cgroupName)
    if (!cgroup) throw new Error('the lab has no remote node: addRemote() first')
    const procs = join(cgroup, 'cgroup.procs')
    // a fixed script; the arguments are passed as positional parameters, never interpolated
    const p = new LabProcess(label, 'sh', ['-c', 'echo $$ > "$0" && exec "$@"', procs, 'ip', 'netns', 'exec', netns, command, ...args])
    this.processes.push(p)
    return p
  }

  /** Run a command to completion inside a pod (in its cgroup and namespace); returns its output. */
  async exec(
    podName: string,
    command: string,
    args: string[],
    opts: {cgroupName?: string; timeoutMs?: number} = {},
  ): Promise<{code: number | null; stdout: string; stderr: string}> {
    const p = this.spawn(podName, `${command} in ${podName}`, command, args, opts.cgroupName)
    const timer = setTimeout(() => void p.stop(), opts.timeoutMs ?? 60_000)
    const code = await p.exited
    clearTimeout(timer)
    this.processes.splice(this.processes.indexOf(p), 1)
    return {code, stdout: p.stdout, stderr: p.stderr}
  }

  /** A pod's TCP sockets as `ss -tanpe` lists them, to explain a connection that did not go as expected. */
  async sockets(podName: string): Promise<string> {
    const r = await run('ip', ['netns', 'exec', this.pod(podName).netns, 'ss', '-tanpe'], {allowFailure: true})
    return r.stdout.trim()
  }

  /** What the lab's long-running processes wrote to stderr (the end of it), to explain a failure. */
  stderrTails(): string[] {
    return this.processes
      .filter((p) => p.stderr.trim() !== '')
      .map((p) => `${p.label}${p.running ? '' : ' (exited)'}: ${p.stderr.trim().slice(-400)}`)
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

  /** A pod's IPv6 link-local address on eth0 (once its duplicate address detection is done). */
  async linkLocal(podName: string): Promise<string> {
    const deadline = Date.now() + POLL_DEADLINE_MS
    for (;;) {
      const r = await run('ip', ['-n', this.pod(podName).netns, '-6', '-o', 'addr', 'show', 'dev', 'eth0', 'scope', 'link'], {
        allowFailure: true,
      })
      const m = /inet6 (fe80:[0-9a-f:]+)\/64 scope link(?! tentative)/.exec(r.stdout)
      if (m?.[1]) return m[1]
      if (Date.now() > deadline) throw new Error(`${podName} has no usable link-local address: ${r.stdout.trim()}`)
      await sleep(100)
    }
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
    for (const pod of this.pods.values()) {
      await run('ip', ['netns', 'del', pod.netns], {allowFailure: true})
      if (this.resolvers.length > 0) rmSync(join('/etc/netns', pod.netns), {recursive: true, force: true})
    }
    if (this.madeEtcNetns) {
      try {
        rmdirSync('/etc/netns') // only while empty: another lab may be using it
      } catch {
        // still in use
      }
    }
    if (this.remoteCgroup) await run('ip', ['netns', 'del', `${this.id}-${REMOTE}`], {allowFailure: true})
    await run('ip', ['netns', 'del', this.bridgeNs], {allowFailure: true})
    for (const name of [...this.pods.keys(), 'outside']) await removeCgroup(join(this.cgroup, name))
    await removeCgroup(this.cgroup)
    if (this.remoteCgroup) await removeCgroup(this.remoteCgroup)
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
        const procs = existsSync(join(path, 'cgroup.procs'))
          ? readFileSync(join(path, 'cgroup.procs'), 'utf8').trim().split('\n').join(', ')
          : ''
        throw new Error(`cannot remove cgroup ${path} (${(err as Error).message}; processes: ${procs || 'none'})`, {cause: err})
      }
      await sleep(20)
    }
  }
}
