import {bpftool} from '../bpf/bpftool.js'
import {ipToSlot} from '../bpf/ip.js'
import {encodePodRules, encodeU64} from '../bpf/layout.js'
import {readMaps} from '../bpf/maps.js'
import type {PodSelection} from '../kube/pods.js'
import {listNetnsCandidates, namespacesByIp, netnsCookies} from '../node/netns.js'
import type {Installation, PodRecord} from './installation.js'

export interface SyncResult {
  /** meshed pods whose network namespace was found and registered */
  meshed: PodRecord[]
  /** meshed pods whose namespace is not on this node (yet): their IP is known, their identity is not */
  unregistered: PodRecord[]
  written: number
  deleted: number
}

/**
 * Make local_pod_ips and netns_pod_ips match the selected pods: one bpftool process for all
 * updates and deletes. Pod identity is registered by finding each pod's network namespace on the
 * node (the one holding its IP) and reading that namespace's cookie.
 */
export async function syncPods(inst: Installation, netnsHelper: string, selection: PodSelection): Promise<SyncResult> {
  const byIp = namespacesByIp(await listNetnsCandidates())
  const found = selection.meshed.map((pod) => ({pod, ns: byIp.get(pod.ip)}))
  const cookies = await netnsCookies(netnsHelper, found.flatMap((f) => (f.ns ? [f.ns.path] : [])))

  const result: SyncResult = {meshed: [], unregistered: [], written: 0, deleted: 0}
  const lines: string[] = []
  const wantIps = new Set<string>()
  const wantNetns = new Set<bigint>()
  for (const {pod, ns} of found) {
    wantIps.add(pod.ip)
    lines.push(bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot(pod.ip), encodePodRules(pod.rules)))
    const cookie = ns ? cookies.get(ns.path) : undefined
    const record: PodRecord = {namespace: pod.namespace, name: pod.name, ip: pod.ip}
    if (cookie === undefined) {
      result.unregistered.push(record)
      continue
    }
    wantNetns.add(cookie)
    lines.push(bpftool.mapUpdateLine(inst.map('netns_pod_ips'), encodeU64(cookie), ipToSlot(pod.ip)))
    result.meshed.push({...record, netns: cookie.toString()})
  }
  result.written = lines.length
  for (const {ip} of await readMaps.localPods(inst))
    if (!wantIps.has(ip)) lines.push(bpftool.mapDeleteLine(inst.map('local_pod_ips'), ipToSlot(ip)))
  for (const {netns} of await readMaps.netnsPods(inst))
    if (!wantNetns.has(netns)) lines.push(bpftool.mapDeleteLine(inst.map('netns_pod_ips'), encodeU64(netns)))
  result.deleted = lines.length - result.written
  await bpftool.batch(lines)
  return result
}
