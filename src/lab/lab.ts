/**
 * A node in miniature: pods as network namespaces on a bridge that lives in a namespace of its
 * own (the host's namespace and iptables are never touched), each pod with its own cgroup under
 * one parent cgroup that merbridge attaches to. Everything is named with one random id and
 * removed by destroy(), which is safe to call at any point.
 */
import {randomBytes} from 'node:crypto'
import {chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import type {MeshProfile} from '../mesh/profiles.js'
import {run} from '../exec.js'
import {findCgroup2, readMounts} from '../node/mounts.js'
import {PACKAGE_ROOT} from '../paths.js'
import {LabProcess, POLL_DEADLINE_MS} from './process.js'
import {connect} from 'node:net'
import {HAPROXY_MAXCONN, haproxyConfig, parseFrontendSessions, parseSessionTotals} from './sidecar.js'
import {parseSidecar6Log, SIDECAR6_PY, type Sidecar6Line, sidecar6Args, SYSTEM_PYTHON} from './sidecar6.js'
import {defaultCaptureOptions, type IstioCaptureOptions, istioNatRules} from './istio-iptables.js'
import {DNS_PY, type DnsFamily, type DnsMode, type DnsResult} from './dns.js'

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
/** What the lab's DNS servers answer: who answered, in the A record. */
/** How rawGet opens its connection. */
export type RawGetMode = 'plain' | 'dstopts' | 'mptcp' | 'fastopen'

export const DNS_ANSWERS = {
  resolver: '203.0.113.53',
  other: '203.0.113.54',
  proxy: (podName: string) => `198.51.100.${podName.charCodeAt(0)}`,
  app: (podName: string) => `192.0.2.${podName.charCodeAt(0)}`,
}

export class Lab {
  readonly id = `mb${randomBytes(3).toString('hex')}`
  readonly pods = new Map<string, LabPod>()
  readonly processes: LabProcess[] = []
  readonly tmp: string
  readonly cgroup: string
  readonly bridgeNs: string
  private created = false
  private remoteCgroup: string | undefined
  /** pod -> the log file of its IPv6 sidecar */
  private readonly sidecar6Logs = new Map<string, string>()
  /** the nameservers every pod's resolv.conf names (set before create) */
  private resolvers: string[] = []
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

  /** An unmeshed lab pod of its own (namespace, cgroup) to be wired to pod `to`; K numbers its link. */
  private async addPeerNamespace(
    spec: Omit<LabPodSpec, 'meshed'>,
    to: string,
    ip: (k: number) => string,
  ): Promise<{k: number; peer: LabPod; pod: LabPod}> {
    const k = this.pods.size + 2
    const peer = this.pod(to)
    const pod: LabPod = {...spec, meshed: false, netns: `${this.id}-${spec.name}`, ip: ip(k), cgroup: join(this.cgroup, spec.name)}
    this.pods.set(spec.name, pod)
    mkdirSync(pod.cgroup)
    await run('ip', ['netns', 'add', pod.netns])
    return {k, peer, pod}
  }

  /**
   * A namespace wired straight to a pod's second interface `dev` instead of to the bridge, as a
   * virtual machine's tap or a secondary network would be: 10.79.K.1 on the pod's side, 10.79.K.2
   * (the linked pod's `ip`) on its own, which reaches the pods' subnet through that pod.
   */
  async addLinkedPod(spec: Omit<LabPodSpec, 'meshed'>, to: string, dev: string): Promise<LabPod> {
    const {k, peer, pod} = await this.addPeerNamespace(spec, to, (k) => `10.79.${k}.2`)
    await run('ip', ['link', 'add', dev, 'netns', peer.netns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns])
    await run('ip', ['-n', peer.netns, 'addr', 'add', `10.79.${k}.1/24`, 'dev', dev])
    await run('ip', ['-n', peer.netns, 'link', 'set', dev, 'up'])
    await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'eth0', 'up'])
    await run('ip', ['-n', pod.netns, 'link', 'set', 'lo', 'up'])
    await run('ip', ['-n', pod.netns, 'route', 'add', `${SUBNET}.0/24`, 'via', `10.79.${k}.1`])
    return pod
  }

  /**
   * A namespace that reaches a pod over a pair of tun devices, whose packets carry no Ethernet
   * header (as over WireGuard or an IP-in-IP tunnel): the pod's `dev` and the namespace's tun0,
   * with a relay copying packets between them. The namespace's address is 10.80.K.1, the pod's
   * on `dev` 10.80.K.2.
   */
  async addTunnelPod(spec: Omit<LabPodSpec, 'meshed'>, to: string, dev: string): Promise<LabPod> {
    const {k, peer, pod} = await this.addPeerNamespace(spec, to, (k) => `10.80.${k}.1`)
    await run('ip', ['-n', pod.netns, 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun'])
    await run('ip', ['-n', peer.netns, 'tuntap', 'add', 'dev', dev, 'mode', 'tun'])
    const script = join(this.tmp, 'tun-relay.py')
    if (!existsSync(script)) writeFileSync(script, TUN_RELAY_PY)
    const relay = this.spawn(spec.name, `tun relay ${spec.name} <-> ${to}`, SYSTEM_PYTHON, [
      script,
      'tun0',
      `/run/netns/${peer.netns}`,
      dev,
    ])
    await relay.waitFor(/relaying/)
    for (const [ns, link] of [
      [pod.netns, 'tun0'],
      [pod.netns, 'lo'],
      [peer.netns, dev],
    ] as const)
      await run('ip', ['-n', ns, 'link', 'set', link, 'up'])
    await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip}/32`, 'dev', 'tun0'])
    await run('ip', ['-n', pod.netns, 'route', 'add', `${peer.ip}/32`, 'dev', 'tun0', 'src', pod.ip])
    await run('ip', ['-n', peer.netns, 'route', 'add', `${pod.ip}/32`, 'dev', dev])
    // an address of its own, as a tunnel's interface has: REDIRECT in PREROUTING sends to the
    // arrival interface's first address, and drops what arrives on one without any
    await run('ip', ['-n', peer.netns, 'addr', 'add', `10.80.${k}.2/32`, 'dev', dev])
    return pod
  }

  /**
   * Another node: a namespace on a routed link to the lab's node (10.78.0.0/24), whose processes
   * run in a cgroup outside the one merbridge is attached to, as another node's would.
   */
  async addRemote(): Promise<void> {
    const cg = findCgroup2(readMounts()).path
    if (!cg) throw new Error('no cgroup v2 mount on this machine')
    this.remoteCgroup = join(cg, `merbridge-lab-${this.id}-remote`)
    mkdirSync(this.remoteCgroup)
    const ns = `${this.id}-${REMOTE}`
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['link', 'add', 'vremote', 'netns', this.bridgeNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
    await run('ip', ['-n', this.bridgeNs, 'addr', 'add', '10.78.0.1/24', 'dev', 'vremote'])
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', 'vremote', 'up'])
    await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP_OTHER}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', '10.78.0.1'])
    if (this.dualStack) {
      await run('ip', ['-n', this.bridgeNs, 'addr', 'add', 'fd78::1/64', 'dev', 'vremote', 'nodad'])
      await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP6}/64`, 'dev', 'eth0', 'nodad'])
      await run('ip', ['-n', ns, '-6', 'route', 'add', 'default', 'via', 'fd78::1'])
    }
  }

  pod(name: string): LabPod {
    const p = this.pods.get(name)
    if (!p) throw new Error(`no lab pod ${name}`)
    return p
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
  async get(
    podName: string,
    url: string,
    cgroupName?: string,
    as?: {uid: number; gid: number},
    waitMs?: number,
  ): Promise<{status?: number; bytes?: number; sha256?: string; body?: string; error?: string}> {
    // `as`: the client runs with that user and group (a sidecar's identity, say); `waitMs`: how
    // long its connection may be held before it is accepted (SYNs dropped meanwhile)
    const get = [this.appScript(), 'get', url, ...(waitMs === undefined ? [] : [String(waitMs)])]
    const [command, args] = as
      ? ['setpriv', ['--reuid', String(as.uid), '--regid', String(as.gid), '--clear-groups', process.execPath, ...get]]
      : [process.execPath, get]
    const r = await this.exec(podName, command, args, {cgroupName, ...(waitMs === undefined ? {} : {timeoutMs: waitMs + 30_000})})
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as {status?: number; bytes?: number; sha256?: string; body?: string; error?: string}
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }

  /**
   * The pod's sidecar; `threads` sets its worker threads (a user's Envoy runs 2 by default). One by
   * default: the tests read its log, and a multi-threaded haproxy drops a log line now and then when
   * two sessions log at once (its DroppedLogs counter), which a test would take for a lost session.
   */
  async startSidecar(podName: string, opts: {threads?: number; maxconn?: number; extra?: string} = {}): Promise<LabProcess> {
    const cfg = join(this.tmp, `haproxy-${podName}.cfg`)
    const proxy = this.pod(podName).proxy
    const id = {uid: proxy?.uid ?? this.mesh.sidecarUid, gid: proxy?.gid ?? this.mesh.sidecarGid}
    // its own folder for the stats socket, which it makes as the proxy's user
    mkdirSync(dirname(this.statsSocket(podName)), {recursive: true})
    chownSync(dirname(this.statsSocket(podName)), id.uid, id.gid)
    writeFileSync(
      cfg,
      haproxyConfig(this.mesh, {
        statsSocket: this.statsSocket(podName),
        threads: opts.threads ?? 1,
        maxconn: opts.maxconn,
        extra: opts.extra,
      }),
    )
    // as the proxy's user from the start, as istio-proxy runs: its listeners are that user's sockets.
    // Unprivileged, it cannot raise its descriptor limit past the hard one (4096 on a fresh boot):
    // set for it first, two per connection and some
    const fds = 2 * (opts.maxconn ?? HAPROXY_MAXCONN) + 1024
    const p = this.spawn(podName, `sidecar in ${podName}`, 'prlimit', [
      `--nofile=${fds}:${fds}`,
      'setpriv',
      '--reuid',
      String(id.uid),
      '--regid',
      String(id.gid),
      '--clear-groups',
      'haproxy',
      '-db',
      '-f',
      cfg,
    ])
    await this.waitListening(podName, this.mesh.outboundPort)
    await this.waitListening(podName, this.mesh.inboundPort)
    if (this.dualStack && !this.pod(podName).noDualStack) {
      const script = join(this.tmp, 'sidecar6.py')
      writeFileSync(script, SIDECAR6_PY)
      const log = join(this.tmp, `sidecar6-${podName}.log`)
      writeFileSync(log, '')
      chmodSync(log, 0o666) // written by the proxy's user
      this.sidecar6Logs.set(podName, log)
      const p6 = this.spawn(podName, `IPv6 sidecar in ${podName}`, 'setpriv', [
        '--reuid',
        String(id.uid),
        '--regid',
        String(id.gid),
        '--clear-groups',
        SYSTEM_PYTHON,
        ...sidecar6Args(this.mesh, script, log),
      ])
      await p6.waitFor(/listening/)
    }
    return p
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

  /** What a pod's IPv6 sidecar accepted so far (empty outside a dual-stack lab). */
  sidecar6Lines(podName: string): Sidecar6Line[] {
    const log = this.sidecar6Logs.get(podName)
    return log ? parseSidecar6Log(readFileSync(log, 'utf8')) : []
  }

  private statsSocket(podName: string): string {
    return join(this.tmp, `haproxy-${podName}`, 'stats.sock')
  }

  private dnsScript(): string {
    const script = join(this.tmp, 'dns.py')
    if (!existsSync(script)) writeFileSync(script, DNS_PY)
    return script
  }

  /** The cluster's DNS on the remote node (the pods' resolver), and another DNS server beside it. */
  async startRemoteDns(): Promise<void> {
    const resolver = this.spawn(REMOTE, 'resolver on the remote node', SYSTEM_PYTHON, [
      this.dnsScript(),
      'serve',
      DNS_ANSWERS.resolver,
      `${REMOTE_IP}:53`,
      ...(this.dualStack ? [`[${REMOTE_IP6}]:53`] : []),
    ])
    await resolver.waitFor(/listening/)
    const other = this.spawn(REMOTE, 'other DNS server on the remote node', SYSTEM_PYTHON, [
      this.dnsScript(),
      'serve',
      DNS_ANSWERS.other,
      `${REMOTE_IP_OTHER}:53`,
    ])
    await other.waitFor(/listening/)
  }

  /** A pod's DNS proxy (Istio's agent) on localhost's DNS port, run as the pod's proxy user. */
  async startDnsProxy(podName: string): Promise<void> {
    const proxy = this.pod(podName).proxy ?? {uid: this.mesh.sidecarUid, gid: this.mesh.sidecarGid}
    const listen = [`127.0.0.1:${this.mesh.dnsPort}`, ...(this.dualStack ? [`[::1]:${this.mesh.dnsPort}`] : [])]
    const p = this.spawn(podName, `DNS proxy in ${podName}`, 'setpriv', [
      '--reuid',
      String(proxy.uid),
      '--regid',
      String(proxy.gid),
      '--clear-groups',
      SYSTEM_PYTHON,
      this.dnsScript(),
      'serve',
      DNS_ANSWERS.proxy(podName),
      ...listen,
    ])
    await p.waitFor(/listening/)
  }

  /** A DNS server run by a pod's app (as root, in its cgroup) on the pod's IPv4 address. */
  async startAppDns(podName: string): Promise<void> {
    const p = this.spawn(podName, `DNS server app in ${podName}`, SYSTEM_PYTHON, [
      this.dnsScript(),
      'serve',
      DNS_ANSWERS.app(podName),
      `${this.pod(podName).ip}:53`,
    ])
    await p.waitFor(/listening/)
  }

  /**
   * A GET from a pod (or the remote node) over a connection opened as `mode` says (RAW_GET_PY):
   * what netfilter's `-p tcp` still matches.
   */
  async rawGet(
    podName: string,
    mode: RawGetMode,
    host: string,
    port: number,
    path: string,
    opts: {bind?: string; as?: {uid: number; gid: number}} = {},
  ): Promise<{status?: number; body?: string; error?: string}> {
    const script = join(this.tmp, 'raw-get.py')
    if (!existsSync(script)) writeFileSync(script, RAW_GET_PY)
    // `bind`: the socket is bound to that address (port 0) before it connects
    const get = [SYSTEM_PYTHON, script, mode, host, String(port), path, ...(opts.bind ? [opts.bind] : [])]
    const [command, ...args] = opts.as
      ? ['setpriv', '--reuid', String(opts.as.uid), '--regid', String(opts.as.gid), '--clear-groups', ...get]
      : get
    const r = await this.exec(podName, command ?? SYSTEM_PYTHON, args)
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as {status?: number; body?: string; error?: string}
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }

  /** One DNS query from a pod (its cgroup), as `as` if given: what came back and from where. */
  async dnsQuery(podName: string, mode: DnsMode, family: DnsFamily, server: string, as?: {uid: number; gid: number}): Promise<DnsResult> {
    const query = [SYSTEM_PYTHON, this.dnsScript(), 'query', mode, family, server, '53']
    const [command, ...args] = as ? ['setpriv', '--reuid', String(as.uid), '--regid', String(as.gid), '--clear-groups', ...query] : query
    const r = await this.exec(podName, command ?? SYSTEM_PYTHON, args)
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as DnsResult
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }

  /** Sessions a pod's sidecar has accepted so far on its outbound and inbound listeners. */
  /** One command to the sidecar's stats socket, and its answer. */
  private statsCommand(podName: string, command: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let text = ''
      const sock = connect(this.statsSocket(podName), () => sock.end(`${command}\n`))
      sock.setEncoding('utf8')
      sock.on('data', (d: string) => (text += d))
      sock.on('end', () => resolve(text))
      sock.on('error', reject)
    })
  }

  /** Log lines the sidecar could not write (haproxy's DroppedLogs): a missing line is then not a missing session. */
  async droppedLogs(podName: string): Promise<number> {
    const m = /^DroppedLogs: (\d+)$/m.exec(await this.statsCommand(podName, 'show info'))
    return Number(m?.[1] ?? Number.NaN)
  }

  /** Sessions each of the sidecar's frontends has accepted so far, by name. */
  async frontendSessions(podName: string): Promise<Record<string, number>> {
    return parseFrontendSessions(await this.statsCommand(podName, 'show stat'))
  }

  async sidecarSessions(podName: string): Promise<{outbound: number; inbound: number}> {
    const csv = await this.statsCommand(podName, 'show stat')
    const totals = parseSessionTotals(csv)
    if (!Number.isFinite(totals.outbound) || !Number.isFinite(totals.inbound))
      throw new Error(`no session totals from ${podName}'s sidecar: ${csv.slice(0, 200)}`)
    // the IPv6 half logs each connection as it accepts it
    for (const l of this.sidecar6Lines(podName)) totals[l.direction]++
    return totals
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

  /** The pods as `kubectl get pods -A -o json` would list them for this node. */
  podList(node = hostname()): string {
    const items = [...this.pods.values()].map((p) => {
      // the proxy's metadata, which the injector gives istio-init too
      const env = [
        ...(p.dnsCapture ? [{name: 'ISTIO_META_DNS_CAPTURE', value: 'true'}] : []),
        ...(this.dualStack && !p.noDualStack ? [{name: 'ISTIO_DUAL_STACK', value: 'true'}] : []),
      ]
      const proxy = {
        name: this.mesh.sidecarContainer,
        ...(p.gateway ? {args: ['proxy', 'router']} : {}),
        ...(p.proxy ? {securityContext: {runAsUser: p.proxy.uid, runAsGroup: p.proxy.gid}} : {}),
        ...(env.length > 0 ? {env} : {}),
      }
      const initEnv = [...env, ...Object.entries(p.istioInit?.env ?? {}).map(([name, value]) => ({name, value}))]
      const init =
        p.meshed && p.istioInit
          ? [
              {
                name: this.mesh.initContainer,
                args: istioInitArgs(this.mesh, captureOptions(this.mesh, p)),
                ...(initEnv.length > 0 ? {env: initEnv} : {}),
              },
            ]
          : []
      return {
        kind: 'Pod',
        metadata: {
          name: p.name,
          namespace: 'lab',
          annotations: {...(p.meshed ? {[this.mesh.injectedAnnotation]: '{"containers":["istio-proxy"]}'} : {}), ...p.annotations},
        },
        spec: {
          nodeName: node,
          ...(init.length > 0 ? {initContainers: init} : {}),
          containers: [{name: 'app'}, ...(p.meshed ? [proxy] : [])],
        },
        status: {phase: 'Running', podIP: p.ip, podIPs: [{ip: p.ip}, ...(p.ip6 && p.ip6 !== p.ip ? [{ip: p.ip6}] : [])]},
      }
    })
    return JSON.stringify({apiVersion: 'v1', kind: 'List', items})
  }

  writePodList(node?: string): string {
    const file = join(this.tmp, 'pods.json')
    writeFileSync(file, this.podList(node))
    return file
  }

  /** istio-init's rules for the pod, from the same annotations and spec merbridge reads. */
  async installIstioIptables(podName: string): Promise<void> {
    const pod = this.pod(podName)
    const options = captureOptions(this.mesh, pod, this.resolvers)
    await run('ip', ['netns', 'exec', pod.netns, 'iptables-restore', '--noflush'], {input: istioNatRules(this.mesh, options)})
    if (this.dualStack && !pod.noDualStack)
      await run('ip', ['netns', 'exec', pod.netns, 'ip6tables-restore', '--noflush'], {input: istioNatRules(this.mesh, options, 6)})
  }

  /**
   * A port-based NetworkPolicy as kube-router or Calico's iptables mode enforce it: the node's
   * bridge hands bridged packets to its FORWARD chain (br_netfilter), which admits TCP to the pod
   * only on `port`, and packets of connections already admitted. Returns what removes it.
   */
  async admitOnly(podName: string, port: number): Promise<() => Promise<void>> {
    const pod = this.pod(podName)
    const inBridge = (cmd: string, args: string[], allowFailure = false) =>
      run('ip', ['netns', 'exec', this.bridgeNs, cmd, ...args], {allowFailure})
    // a kernel with br_netfilter as a module (Debian's) has no bridge sysctls until it is loaded
    if ((await inBridge('sysctl', ['-n', 'net.bridge.bridge-nf-call-iptables'], true)).exitCode !== 0)
      await run('modprobe', ['br_netfilter'])
    const families = [
      {tool: 'iptables', ip: pod.ip, sysctl: 'net.bridge.bridge-nf-call-iptables'},
      ...(pod.ip6 ? [{tool: 'ip6tables', ip: pod.ip6, sysctl: 'net.bridge.bridge-nf-call-ip6tables'}] : []),
    ]
    const chain = `LAB-POLICY-${podName}`
    for (const f of families) {
      await inBridge('sysctl', ['-q', '-w', `${f.sysctl}=1`])
      await inBridge(f.tool, ['-N', chain])
      await inBridge(f.tool, ['-A', chain, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'RETURN'])
      await inBridge(f.tool, ['-A', chain, '-p', 'tcp', '--dport', String(port), '-j', 'RETURN'])
      await inBridge(f.tool, ['-A', chain, '-p', 'tcp', '-j', 'DROP'])
      await inBridge(f.tool, ['-I', 'FORWARD', '-d', f.ip, '-j', chain])
    }
    return async () => {
      for (const f of families) {
        await inBridge(f.tool, ['-D', 'FORWARD', '-d', f.ip, '-j', chain], true)
        await inBridge(f.tool, ['-F', chain], true)
        await inBridge(f.tool, ['-X', chain], true)
      }
    }
  }

  async removeIstioIptables(podName: string): Promise<void> {
    const ns = this.pod(podName).netns
    for (const [tool, family] of [['iptables', 'ip'], ...(this.dualStack ? [['ip6tables', 'ip6']] : [])] as const) {
      for (const table of ['nat', 'raw']) {
        await run('ip', ['netns', 'exec', ns, tool, '-t', table, '-F'], {allowFailure: true})
        await run('ip', ['netns', 'exec', ns, tool, '-t', table, '-X'], {allowFailure: true})
        // with the nft backend, -F/-X leave the base chains registered
        await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', family, table], {allowFailure: true})
      }
    }
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

/** python3 DEV NETNS_PATH PEER_DEV: copies IP packets between tun DEV here and tun PEER_DEV in NETNS_PATH. */
const TUN_RELAY_PY = `
import ctypes, fcntl, os, select, struct, sys
TUNSETIFF, IFF_TUN, IFF_NO_PI, CLONE_NEWNET = 0x400454ca, 0x1, 0x1000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
def attach(name):
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TUN | IFF_NO_PI))
    return fd
here = attach(sys.argv[1])
ns = os.open(sys.argv[2], os.O_RDONLY)
if libc.setns(ns, CLONE_NEWNET) != 0:
    raise OSError(ctypes.get_errno(), 'setns')
there = attach(sys.argv[3])
print('relaying', flush=True)
while True:
    for fd in select.select([here, there], [], [])[0]:
        packet = os.read(fd, 65536)
        try:
            os.write(there if fd == here else here, packet)
        except OSError:
            pass  # the other side is down (EIO): dropped, as a link would
`

/**
 * python3 MODE HOST PORT PATH: an HTTP/1.0 GET over a connection opened as some clients open them,
 * which an interception must not miss: `plain`, connect() (to a link-local address too, HOST
 * naming its interface); `dstopts`, IPv6 with a destination options header (PadN) on every packet;
 * `mptcp`, a Multipath TCP socket; `fastopen`, TCP Fast Open (sendto with MSG_FASTOPEN, no connect()).
 */
const RAW_GET_PY = `
import json, socket, struct, sys
mode, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
family = socket.AF_INET6 if ':' in host else socket.AF_INET
# a link-local address names its interface (fe80::1%eth0): getaddrinfo gives its scope
address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
s = socket.socket(family, socket.SOCK_STREAM, 262 if mode == 'mptcp' else 0)
# a blocking socket with the kernel's timeouts: a non-blocking Fast Open sendto without a cookie
# only starts the handshake (EINPROGRESS); a blocking one sends the request once connected
for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
    s.setsockopt(socket.SOL_SOCKET, option, struct.pack('ll', 10, 0))
if mode == 'dstopts':
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
if len(sys.argv) > 5:
    s.bind((sys.argv[5], 0))
request = ('GET %s HTTP/1.0\\r\\nHost: lab\\r\\n\\r\\n' % path).encode()
try:
    if mode == 'fastopen':
        s.sendto(request, socket.MSG_FASTOPEN, address)
    else:
        s.connect(address)
        s.sendall(request)
    data = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    if not data:
        raise ConnectionResetError()
    head, _, body = data.partition(b'\\r\\n\\r\\n')
    print(json.dumps({'status': int(head.split(b' ')[1]), 'body': body.decode()}))
except ConnectionResetError:
    # a peer that gives up closes with FIN or RST depending on whether it had read the request yet
    print(json.dumps({'error': 'closed without a reply'}))
except OSError as e:
    print(json.dumps({'error': e.strerror or str(e)}))
`

/** A stream from the lab app that flows until released; see openStream. */
export class HeldStream {
  constructor(
    readonly process: LabProcess,
    private readonly gateFile: string,
  ) {}

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

/** What istio-init would be told for this pod: the injector's reading of its annotations and spec. */
export function captureOptions(mesh: MeshProfile, pod: LabPodSpec, resolvers: string[] = []): IstioCaptureOptions {
  const a = {...pod.istioInit?.meshDefaults, ...pod.annotations}
  const initEnv = pod.istioInit?.env ?? {}
  const list = (key: string) =>
    (a[key] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  const ports = (key: string) => list(key).map(Number)
  const base = defaultCaptureOptions(mesh)
  const included = a['traffic.sidecar.istio.io/includeOutboundIPRanges']
  const inbound = a['traffic.sidecar.istio.io/includeInboundPorts']
  return {
    // as Istio's CNI reads the proxy container: an id of 0 (a proxy run as root) means the default
    proxyUids: pod.proxy?.uid ? [pod.proxy.uid] : base.proxyUids,
    proxyGids: pod.proxy?.gid ? [pod.proxy.gid] : base.proxyGids,
    inboundPorts: inbound === undefined || inbound.includes('*') ? '*' : ports('traffic.sidecar.istio.io/includeInboundPorts'),
    excludeInboundPorts: [...base.excludeInboundPorts, ...ports('traffic.sidecar.istio.io/excludeInboundPorts')],
    outboundCidrs: included === undefined || included.includes('*') ? '*' : list('traffic.sidecar.istio.io/includeOutboundIPRanges'),
    excludeOutboundCidrs: list('traffic.sidecar.istio.io/excludeOutboundIPRanges'),
    // Istio's CNI excludes the status port outbound when the pod names no port
    excludeOutboundPorts:
      a['traffic.sidecar.istio.io/excludeOutboundPorts'] === undefined && !pod.istioInit
        ? [15020]
        : ports('traffic.sidecar.istio.io/excludeOutboundPorts'),
    includeOutboundPorts: ports('traffic.sidecar.istio.io/includeOutboundPorts'),
    // Istio's CNI captures DNS to any address; istio-init to resolv.conf's servers
    ...(pod.dnsCapture ? {dnsServers: resolvers, captureAllDns: !pod.istioInit} : {}),
    ...(a['traffic.sidecar.istio.io/excludeInterfaces'] === undefined
      ? {}
      : {excludeInterfaces: list('traffic.sidecar.istio.io/excludeInterfaces')}),
    ...(a['istio.io/reroute-virtual-interfaces'] === undefined ? {} : {virtualInterfaces: list('istio.io/reroute-virtual-interfaces')}),
    // istio-iptables' environment-only settings, from istio-init's environment
    ...(initEnv.ISTIO_OUTBOUND_OWNER_GROUPS === undefined && initEnv.ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE === undefined
      ? {}
      : {ownerGroups: {include: initEnv.ISTIO_OUTBOUND_OWNER_GROUPS ?? '*', exclude: initEnv.ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE ?? ''}}),
    ...(initEnv.ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR === undefined ? {} : {loopbackCidr: initEnv.ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR}),
  }
}

/** The istio-init container's arguments for these options, as the injector writes them (its uid and gid for the proxy's). */
export function istioInitArgs(mesh: MeshProfile, o: IstioCaptureOptions): string[] {
  const list = (v: '*' | readonly (string | number)[]) => (v === '*' ? '*' : v.join(','))
  return [
    'istio-iptables',
    ...['-p', String(mesh.outboundPort), '-z', String(mesh.inboundPort)],
    ...['-u', list(o.proxyUids), '-g', list(o.proxyGids), '-m', 'REDIRECT'],
    ...['-i', list(o.outboundCidrs), '-x', list(o.excludeOutboundCidrs), '-b', list(o.inboundPorts), '-d', list(o.excludeInboundPorts)],
    ...(o.includeOutboundPorts.length > 0 ? ['-q', list(o.includeOutboundPorts)] : []),
    ...(o.excludeOutboundPorts.length > 0 ? ['-o', list(o.excludeOutboundPorts)] : []),
    ...(o.virtualInterfaces ? ['-k', list(o.virtualInterfaces)] : []),
    ...(o.excludeInterfaces ? ['-c', list(o.excludeInterfaces)] : []),
    '--log_output_level=default:info',
  ]
}
