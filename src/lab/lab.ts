/**
 * The lab: a node in miniature for the demo, the bench and the tests. Its pods and their network
 * are pods.ts; each other concern is a room of its own, reached as a field: links (other
 * interfaces, another node), sidecars, clients (apps and requests), dns, iptables (Istio's rules,
 * the baseline merbridge replaces).
 */
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {LabClients} from './clients.js'
import {LabDns} from './dns.js'
import {LabIptables} from './iptables.js'
import {LabLinks} from './links.js'
import {podList} from './pod-list.js'
import {LabPods} from './pods.js'
import {LabSidecars} from './sidecars.js'

export {
  APP_PORT,
  type LabPod,
  type LabPodSpec,
  NODE,
  NODE_IP,
  NODE_IP6,
  REMOTE,
  REMOTE_IP,
  REMOTE_IP_OTHER,
  REMOTE_IP6,
  SUBNET,
  SUBNET6,
} from './pods.js'
export {HeldStream, type RawGetMode} from './clients.js'
export {DNS_ANSWERS} from './dns.js'
export {captureOptions, istioInitArgs} from './pod-list.js'

export class Lab extends LabPods {
  readonly links = new LabLinks(this)
  readonly sidecars = new LabSidecars(this)
  readonly clients = new LabClients(this)
  readonly dns = new LabDns(this)
  readonly iptables = new LabIptables(this)

  /** The pods as `kubectl get pods -A -o json` would list them for this node. */
  podList(node?: string): string {
    return podList(this, node)
  }

  /** podList() in a file of the lab's, for --pods-file. */
  writePodList(node?: string): string {
    const file = join(this.tmp, 'pods.json')
    writeFileSync(file, this.podList(node))
    return file
  }
}
