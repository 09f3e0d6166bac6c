/**
 * The lab's DNS: a responder that plays both the cluster's resolver (on the remote node) and a
 * pod's DNS proxy (Istio's agent on localhost:15053, run as the proxy's user), answering every A
 * query with an address that names who answered; and a client that asks one query the way a
 * given resolver library would (UDP with connect() as glibc does, UDP with sendto(), or TCP)
 * and prints the answer, the address the reply came from and the socket's peer name.
 */

import type {LabPods} from './pods.js'
import {REMOTE, REMOTE_IP, REMOTE_IP_OTHER, REMOTE_IP6} from './pods.js'
import {labScript} from './scripts.js'
import {SYSTEM_PYTHON} from './sidecar6.js'

/** What the lab's DNS servers answer: who answered, in the A record. */
export const DNS_ANSWERS = {
  resolver: '203.0.113.53',
  other: '203.0.113.54',
  proxy: (podName: string) => `198.51.100.${podName.charCodeAt(0)}`,
  app: (podName: string) => `192.0.2.${podName.charCodeAt(0)}`,
}

/** How the client asks: glibc's way (connected UDP), an unconnected UDP sendto(), or TCP. */
export type DnsMode = 'udp-connect' | 'udp-sendto' | 'tcp'
/** IPv4 socket, IPv6 socket to a native IPv6 server, or IPv6 socket to the v4-mapped server. */
export type DnsFamily = '4' | '6' | 'mapped'

export interface DnsResult {
  /** the A record: names who answered */
  answer?: string
  /** where recvfrom() said the reply came from (UDP) */
  from?: string
  /** getpeername() of a connected socket */
  peer?: string
  error?: string
}

/** The lab's DNS servers and queries (py/dns.py). */
export class LabDns {
  constructor(private readonly lab: LabPods) {}

  private script(): string {
    return labScript(this.lab.tmp, 'dns.py')
  }

  /** The cluster's DNS on the remote node (the pods' resolver), and another DNS server beside it. */
  async startRemote(): Promise<void> {
    const resolver = this.lab.spawn(REMOTE, 'resolver on the remote node', SYSTEM_PYTHON, [
      this.script(),
      'serve',
      DNS_ANSWERS.resolver,
      `${REMOTE_IP}:53`,
      ...(this.lab.dualStack ? [`[${REMOTE_IP6}]:53`] : []),
    ])
    await resolver.waitFor(/listening/)
    const other = this.lab.spawn(REMOTE, 'other DNS server on the remote node', SYSTEM_PYTHON, [
      this.script(),
      'serve',
      DNS_ANSWERS.other,
      `${REMOTE_IP_OTHER}:53`,
    ])
    await other.waitFor(/listening/)
  }

  /** A pod's DNS proxy (Istio's agent) on localhost's DNS port, run as the pod's proxy user. */
  async startProxy(podName: string): Promise<void> {
    const proxy = this.lab.pod(podName).proxy ?? {uid: this.lab.mesh.sidecarUid, gid: this.lab.mesh.sidecarGid}
    const listen = [`127.0.0.1:${this.lab.mesh.dnsPort}`, ...(this.lab.dualStack ? [`[::1]:${this.lab.mesh.dnsPort}`] : [])]
    const p = this.lab.spawn(podName, `DNS proxy in ${podName}`, 'setpriv', [
      '--reuid',
      String(proxy.uid),
      '--regid',
      String(proxy.gid),
      '--clear-groups',
      SYSTEM_PYTHON,
      this.script(),
      'serve',
      DNS_ANSWERS.proxy(podName),
      ...listen,
    ])
    await p.waitFor(/listening/)
  }

  /** A DNS server run by a pod's app (as root, in its cgroup) on the pod's IPv4 address. */
  async startApp(podName: string): Promise<void> {
    const p = this.lab.spawn(podName, `DNS server app in ${podName}`, SYSTEM_PYTHON, [
      this.script(),
      'serve',
      DNS_ANSWERS.app(podName),
      `${this.lab.pod(podName).ip}:53`,
    ])
    await p.waitFor(/listening/)
  }

  /** One DNS query from a pod (its cgroup), as `as` if given: what came back and from where. */
  async query(podName: string, mode: DnsMode, family: DnsFamily, server: string, as?: {uid: number; gid: number}): Promise<DnsResult> {
    const query = [SYSTEM_PYTHON, this.script(), 'query', mode, family, server, '53']
    const [command, ...args] = as ? ['setpriv', '--reuid', String(as.uid), '--regid', String(as.gid), '--clear-groups', ...query] : query
    const r = await this.lab.exec(podName, command ?? SYSTEM_PYTHON, args)
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as DnsResult
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }
}
