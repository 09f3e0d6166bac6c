import {bpftool} from '../bpf/bpftool.js'
import {ipToSlot} from '../bpf/ip.js'
import {encodePodId, encodePodRules, encodeU64, MAX_DNS, MAX_PODS, type PodRules} from '../bpf/layout.js'
import {MerbridgeError} from '../errors.js'
import {readMaps} from '../bpf/maps.js'
import type {MeshedPod, PodSelection} from '../kube/pods.js'
import type {Helpers} from '../bpf/objects.js'
import {listNetnsCandidates, namespaceResolvers, namespacesByIp, type NetnsCandidate, netnsCookies, normalIp} from '../node/netns.js'
import {attachInbound} from '../node/tc-inbound.js'
import type {Installation, PodRecord} from './installation.js'

/** What the two pod maps hold: pod IP -> encoded rules (hex), netns cookie -> encoded pod IPs (hex). */
export interface PodMapsView {
  rules: Map<string, string>
  netns: Map<bigint, string>
}

export interface SyncResult {
  /** meshed pods whose network namespace was found and registered */
  meshed: PodRecord[]
  /** meshed pods whose namespace is not on this node (yet): their IP is known, their identity is not */
  unregistered: PodRecord[]
  written: number
  deleted: number
  /** network namespaces of the registered pods (for attaching inbound capture) */
  registeredPaths: string[]
  /** what the node itself changed about pods: inbound capture not attached, DNS capture widened */
  nodeWarnings: string[]
  /** the maps as this sync left them, for the next sync of a long-running process */
  view: PodMapsView
}

/**
 * A pod's rules with its DNS capture: to the resolvers of its resolv.conf, as istio-init reads
 * them. When they cannot be read (or do not fit), port 53 to any address is captured instead:
 * never less than Istio would.
 */
export function podRulesWithDns(pod: MeshedPod, ns: NetnsCandidate | undefined, resolvers = namespaceResolvers): {rules: PodRules; warning?: string} {
  if (!pod.dnsCapture) return {rules: pod.rules}
  const id = `${pod.namespace}/${pod.name}`
  // not on the node yet: its rules serve only as a destination's, where DNS plays no part
  if (!ns) return {rules: {...pod.rules, dns: {all: true, servers: []}}}
  const found = resolvers(ns)
  if (!found) return {rules: {...pod.rules, dns: {all: true, servers: []}}, warning: `${id}: DNS capture: its resolv.conf cannot be read; capturing port 53 to any address (fail closed)`}
  // istio-init turns DNS capture off when resolv.conf names no server
  if (found.servers.length === 0) return {rules: pod.rules, warning: `${id}: DNS capture: ${found.from} names no nameserver, so Istio captures no DNS either`}
  if (found.servers.length > MAX_DNS) return {rules: {...pod.rules, dns: {all: true, servers: []}}, warning: `${id}: DNS capture: ${found.servers.length} nameservers, the datapath holds ${MAX_DNS}; capturing port 53 to any address (fail closed)`}
  return {rules: {...pod.rules, dns: {all: false, servers: found.servers}}}
}

/**
 * Refuse, before anything is written, pods that do not fit the maps: a batch that fails halfway
 * would leave the maps and the record disagreeing.
 */
export function checkCapacity(selection: PodSelection): void {
  const addresses = selection.meshed.reduce((n, p) => n + (p.ip6 ? 2 : 1), 0)
  if (addresses > MAX_PODS)
    throw new MerbridgeError(`${selection.meshed.length} meshed pods on this node (${addresses} addresses); the datapath holds ${MAX_PODS} addresses`, {
      code: 'TOO_MANY_PODS',
      suggestion: "check the node's pod limit and the pods list (--node, --pods-file); nothing was changed",
    })
}

async function readView(inst: Installation): Promise<PodMapsView> {
  const rules = new Map<string, string>()
  for (const p of await readMaps.localPods(inst)) rules.set(p.ip, encodePodRules(p.rules).toString('hex'))
  const netns = new Map<bigint, string>()
  for (const n of await readMaps.netnsPods(inst)) netns.set(n.netns, encodePodId(n).toString('hex'))
  return {rules, netns}
}

/**
 * Make local_pod_ips and netns_pod_ips match the selected pods, writing only what changed, in
 * one bpftool process. Pod identity is registered by finding each pod's network namespace on the
 * node (the one holding its IP) and reading that namespace's cookie. `known` (what the previous
 * sync of this process left) saves reading the maps back.
 */
export async function syncPods(inst: Installation, objects: Helpers, selection: PodSelection, opts: {known?: PodMapsView; attachInbound: boolean}): Promise<SyncResult> {
  checkCapacity(selection)
  const byIp = namespacesByIp(await listNetnsCandidates())
  const found = selection.meshed.map((pod) => ({pod, ns: byIp.get(normalIp(pod.ip))}))
  const cookies = await netnsCookies(objects.netnsCookie, found.flatMap((f) => (f.ns ? [f.ns.path] : [])))
  const current = opts.known ?? (await readView(inst))

  const view: PodMapsView = {rules: new Map(), netns: new Map()}
  const result: SyncResult = {meshed: [], unregistered: [], written: 0, deleted: 0, view, registeredPaths: [], nodeWarnings: []}
  // pods registered by this sync get inbound capture; without a view of the last sync, all do
  const attach: {path: string; id: string}[] = []
  const updates: string[] = []
  for (const {pod, ns} of found) {
    const {rules: podRules, warning} = podRulesWithDns(pod, ns)
    if (warning) result.nodeWarnings.push(warning)
    const cookie = ns ? cookies.get(ns.path) : undefined
    // with its namespace: only that namespace's sockets may key connections on the pod's addresses
    const rules = encodePodRules({...podRules, ...(cookie === undefined ? {} : {netns: cookie})})
    // a dual-stack pod's two addresses share its rules
    for (const ip of [pod.ip, ...(pod.ip6 ? [pod.ip6] : [])]) {
      view.rules.set(ip, rules.toString('hex'))
      if (current.rules.get(ip) !== view.rules.get(ip)) updates.push(bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot(ip), rules))
    }
    const record: PodRecord = {namespace: pod.namespace, name: pod.name, ip: pod.ip, ...(pod.ip6 ? {ip6: pod.ip6} : {})}
    if (cookie === undefined) {
      result.unregistered.push(record)
      continue
    }
    const id = encodePodId({ip: pod.ip, ip6: pod.ip6})
    view.netns.set(cookie, id.toString('hex'))
    const changed = current.netns.get(cookie) !== view.netns.get(cookie)
    if (changed) updates.push(bpftool.mapUpdateLine(inst.map('netns_pod_ips'), encodeU64(cookie), id))
    result.meshed.push({...record, netns: cookie.toString()})
    if (ns) {
      result.registeredPaths.push(ns.path)
      if (!opts.known || changed) attach.push({path: ns.path, id: `${pod.namespace}/${pod.name}`})
    }
  }
  const deletes: string[] = []
  for (const ip of current.rules.keys()) if (!view.rules.has(ip)) deletes.push(bpftool.mapDeleteLine(inst.map('local_pod_ips'), ipToSlot(ip)))
  for (const cookie of current.netns.keys()) if (!view.netns.has(cookie)) deletes.push(bpftool.mapDeleteLine(inst.map('netns_pod_ips'), encodeU64(cookie)))
  result.written = updates.length
  result.deleted = deletes.length
  await bpftool.batch([...updates, ...deletes])
  // after the maps: the program acts on the pods it finds in local_pod_ips
  if (opts.attachInbound && attach.length > 0) {
    const tc = await attachInbound(objects.tcInbound, inst.prog('mb_tc_inbound'), attach.map((a) => a.path))
    for (const a of attach) {
      const why = tc.failed.get(a.path)
      if (why !== undefined) result.nodeWarnings.push(`${a.id}: inbound capture not attached: ${why}`)
    }
  }
  return result
}
