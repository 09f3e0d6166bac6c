/** The iptables baseline in the lab's pods (istio-init's rules, istio-iptables.ts), and a NetworkPolicy on the node's bridge. */
import {run} from '../exec.js'
import {istioNatRules} from './istio-iptables.js'
import type {LabPods} from './pods.js'
import {captureOptions} from './pod-list.js'

export class LabIptables {
  constructor(private readonly lab: LabPods) {}

  /** istio-init's rules for the pod, from the same annotations and spec merbridge reads. */
  async install(podName: string): Promise<void> {
    const pod = this.lab.pod(podName)
    const options = captureOptions(this.lab.mesh, pod, this.lab.resolvers)
    await run('ip', ['netns', 'exec', pod.netns, 'iptables-restore', '--noflush'], {input: istioNatRules(this.lab.mesh, options)})
    if (this.lab.dualStack && !pod.noDualStack)
      await run('ip', ['netns', 'exec', pod.netns, 'ip6tables-restore', '--noflush'], {input: istioNatRules(this.lab.mesh, options, 6)})
  }

  /**
   * A port-based NetworkPolicy as kube-router or Calico's iptables mode enforce it: the node's
   * bridge hands bridged packets to its FORWARD chain (br_netfilter), which admits TCP to the pod
   * only on `port`, and packets of connections already admitted. Returns what removes it.
   */
  async admitOnly(podName: string, port: number): Promise<() => Promise<void>> {
    const pod = this.lab.pod(podName)
    const inBridge = (cmd: string, args: string[], allowFailure = false) =>
      run('ip', ['netns', 'exec', this.lab.bridgeNs, cmd, ...args], {allowFailure})
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

  async remove(podName: string): Promise<void> {
    const ns = this.lab.pod(podName).netns
    for (const [tool, family] of [['iptables', 'ip'], ...(this.lab.dualStack ? [['ip6tables', 'ip6']] : [])] as const) {
      for (const table of ['nat', 'raw']) {
        await run('ip', ['netns', 'exec', ns, tool, '-t', table, '-F'], {allowFailure: true})
        await run('ip', ['netns', 'exec', ns, tool, '-t', table, '-X'], {allowFailure: true})
        // with the nft backend, -F/-X leave the base chains registered
        await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', family, table], {allowFailure: true})
      }
    }
  }

  async save(podName: string): Promise<string> {
    return (await run('ip', ['netns', 'exec', this.lab.pod(podName).netns, 'iptables-save', '-c', '-t', 'nat'])).stdout
  }
}
