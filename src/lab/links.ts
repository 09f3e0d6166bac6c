/**
 * The lab's other links: namespaces wired to a pod's second interface (a veth, or tun devices
 * without Ethernet headers) instead of to the bridge, and another node routed through the lab's.
 */
import {mkdirSync} from 'node:fs'
import {join} from 'node:path'
import {run} from '../exec.js'
import {type LabPod, type LabPodSpec, type LabPods, REMOTE_IP, REMOTE_IP_OTHER, REMOTE_IP6, SUBNET} from './pods.js'
import {labScript} from './scripts.js'
import {SYSTEM_PYTHON} from './sidecar6.js'

export class LabLinks {
  constructor(private readonly lab: LabPods) {}

  /** An unmeshed lab pod of its own (namespace, cgroup) to be wired to pod `to`; K numbers its link. */
  private async addPeerNamespace(
    spec: Omit<LabPodSpec, 'meshed'>,
    to: string,
    ip: (k: number) => string,
  ): Promise<{k: number; peer: LabPod; pod: LabPod}> {
    const k = this.lab.pods.size + 2
    const peer = this.lab.pod(to)
    const pod: LabPod = {...spec, meshed: false, netns: `${this.lab.id}-${spec.name}`, ip: ip(k), cgroup: join(this.lab.cgroup, spec.name)}
    this.lab.pods.set(spec.name, pod)
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
    const relay = this.lab.spawn(spec.name, `tun relay ${spec.name} <-> ${to}`, SYSTEM_PYTHON, [
      labScript(this.lab.tmp, 'tun_relay.py'),
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
    const ns = await this.lab.addRemoteNode()
    await run('ip', ['link', 'add', 'vremote', 'netns', this.lab.bridgeNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
    await run('ip', ['-n', this.lab.bridgeNs, 'addr', 'add', '10.78.0.1/24', 'dev', 'vremote'])
    await run('ip', ['-n', this.lab.bridgeNs, 'link', 'set', 'vremote', 'up'])
    await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP_OTHER}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', '10.78.0.1'])
    if (this.lab.dualStack) {
      await run('ip', ['-n', this.lab.bridgeNs, 'addr', 'add', 'fd78::1/64', 'dev', 'vremote', 'nodad'])
      await run('ip', ['-n', ns, 'addr', 'add', `${REMOTE_IP6}/64`, 'dev', 'eth0', 'nodad'])
      await run('ip', ['-n', ns, '-6', 'route', 'add', 'default', 'via', 'fd78::1'])
    }
  }
}
