import {existsSync, statSync} from 'node:fs'
import {bpftool} from '../bpf/bpftool.js'
import {ipToSlot} from '../bpf/ip.js'
import {
  decodePodId,
  encodeIface,
  encodePodId,
  encodePodRules,
  encodeU32,
  encodeU64,
  MAX_DNS,
  MAX_PODS,
  podShare,
  type PodId,
  type PodRules,
} from '../bpf/layout.js'
import {MerbridgeError} from '../errors.js'
import {readMaps} from '../bpf/maps.js'
import type {MeshedPod, PodSelection} from '../kube/pods.js'
import type {Helpers} from '../bpf/objects.js'
import {
  interfaceIndexes,
  listNetnsCandidates,
  namespaceHolders,
  namespaceResolvers,
  type NetnsCandidate,
  netnsCookies,
  normalIp,
} from '../node/netns.js'
import {attachInbound, type InboundTarget} from '../node/tc-inbound.js'
import type {Installation, PodRecord} from './installation.js'

/** What the two pod maps hold: pod IP -> encoded rules (hex), netns cookie -> encoded pod IPs (hex). */
export interface PodMapsView {
  rules: Map<string, string>
  netns: Map<bigint, string>
  /** pod_other_ips: another address of a registered pod's namespace -> the pod's IP ('' when pods of separate networks share it) */
  others?: Map<string, string>
  /** pod_share: the entries of each connection map a pod may always hold */
  share?: number
  /** inbound_skip: the interfaces registered pods exclude from inbound capture (encoded keys, hex) */
  skips?: Set<string>
}

export interface SyncResult {
  /** meshed pods whose network namespace was found and registered */
  meshed: PodRecord[]
  /** meshed pods whose namespace is not on this node (yet): their IP is known, their identity is not */
  unregistered: PodRecord[]
  written: number
  deleted: number
  /** network namespaces of the registered pods, with the interfaces to leave alone (for attaching inbound capture) */
  registered: InboundTarget[]
  /** what the node itself changed about pods: inbound capture not attached, DNS capture widened */
  nodeWarnings: string[]
  /** the maps as this sync left them, for the next sync of a long-running process */
  view: PodMapsView
}

/**
 * A pod's rules with its DNS capture: to any address where Istio's CNI set the pod up (or istio-init
 * was told to), else to the resolvers of its resolv.conf, as istio-init reads them. When they
 * cannot be read (or do not fit), port 53 to any address is captured instead: never less than
 * Istio would.
 */
export function podRulesWithDns(
  pod: MeshedPod,
  ns: NetnsCandidate | undefined,
  resolvers = namespaceResolvers,
): {rules: PodRules; warning?: string} {
  if (!pod.dnsCapture) return {rules: pod.rules}
  if (pod.dnsToAny) return {rules: {...pod.rules, dns: {all: true, servers: []}}}
  const id = `${pod.namespace}/${pod.name}`
  // not on the node yet: its rules serve only as a destination's, where DNS plays no part
  if (!ns) return {rules: {...pod.rules, dns: {all: true, servers: []}}}
  const found = resolvers(ns)
  if (!found)
    return {
      rules: {...pod.rules, dns: {all: true, servers: []}},
      warning: `${id}: DNS capture: its resolv.conf cannot be read; capturing port 53 to any address (fail closed)`,
    }
  // istio-init turns DNS capture off when resolv.conf names no server
  if (found.servers.length === 0)
    return {rules: pod.rules, warning: `${id}: DNS capture: ${found.from} names no nameserver, so Istio captures no DNS either`}
  if (found.servers.length > MAX_DNS)
    return {
      rules: {...pod.rules, dns: {all: true, servers: []}},
      warning: `${id}: DNS capture: ${found.servers.length} nameservers, the datapath holds ${MAX_DNS}; capturing port 53 to any address (fail closed)`,
    }
  return {rules: {...pod.rules, dns: {all: false, servers: found.servers}}}
}

/**
 * A registered pod's namespace's other addresses, link-local ones included: not its pod IPs, not
 * loopback, and no IPv6 where Istio wrote no ip6tables rules for it.
 */
export function otherAddresses(pod: MeshedPod, ns: Pick<NetnsCandidate, 'addresses' | 'linkLocal'>): string[] {
  const own = new Set([pod.ip, pod.ip6].filter((a): a is string => a !== undefined).map(normalIp))
  return [...new Set([...ns.addresses, ...ns.linkLocal].map(normalIp))].filter(
    (a) => !own.has(a) && !a.startsWith('127.') && a !== '::1' && !(pod.rules.noIpv6 && a.includes(':')),
  )
}

/**
 * Refuse, before anything is written, pods that do not fit the maps: a batch that fails halfway
 * would leave the maps and the record disagreeing.
 */
export function checkCapacity(selection: PodSelection): void {
  const addresses = selection.meshed.reduce((n, p) => n + (p.ip6 ? 2 : 1), 0)
  if (addresses > MAX_PODS)
    throw new MerbridgeError(
      `${selection.meshed.length} meshed pods on this node (${addresses} addresses); the datapath holds ${MAX_PODS} addresses`,
      {
        code: 'TOO_MANY_PODS',
        suggestion: "check the node's pod limit and the pods list (--node, --pods-file); nothing was changed",
      },
    )
}

async function readView(inst: Installation): Promise<PodMapsView> {
  const maps = await readMaps.podMaps(inst)
  return {
    rules: new Map(maps.localPods.map((p) => [p.ip, encodePodRules(p.rules).toString('hex')])),
    netns: new Map(maps.netnsPods.map((n) => [n.netns, encodePodId(n).toString('hex')])),
    others: new Map(maps.otherIps?.map((o) => [o.ip, o.owner ?? ''])),
    // an installation enabled by an older merbridge has no shares until enable replaces it
    skips: new Set(maps.inboundSkips?.map((s) => encodeIface(s).toString('hex'))),
    share: maps.podShare,
  }
}

/** One meshed pod as the node found it: its namespace (if found), that namespace's cookie, its encoded rules. */
export interface FoundPod {
  pod: MeshedPod
  nsPath?: string
  cookie?: bigint
  rules: Buffer
  /** the namespace's other addresses (a second network's), which Istio captures inbound too */
  otherIps?: string[]
  /** the indexes of the interfaces it excludes from inbound capture, as its namespace has them now */
  skipIndexes?: number[]
}

/** What a sync must write and remove to make the two pod maps match the pods, without I/O. */
export interface SyncPlan {
  view: PodMapsView
  ruleWrites: [ip: string, rules: Buffer][]
  netnsWrites: [cookie: bigint, podIps: Buffer][]
  ruleDeletes: string[]
  netnsDeletes: bigint[]
  otherWrites: [ip: string, owner: string][]
  otherDeletes: string[]
  skipWrites: Buffer[]
  skipDeletes: Buffer[]
  /** addresses that registered pods of separate networks share: captured on every port there */
  shared: {ip: string; pods: string[]}[]
  /** other addresses beyond what pod_other_ips holds */
  unheld: string[]
  meshed: PodRecord[]
  unregistered: PodRecord[]
  registered: InboundTarget[]
  /** namespaces that get inbound capture: the newly registered ones, or all without a known view */
  attach: (InboundTarget & {id: string})[]
}

/**
 * Plan a sync: every meshed pod's addresses keep its rules (a pod not found on the node is still
 * captured as a destination: fail closed), a found pod's namespace is registered under its
 * cookie, and entries of pods that are gone are removed. Only what differs from `current` is
 * written; `known` says `current` is what this process's last sync left.
 */
export function planSync(found: FoundPod[], current: PodMapsView, known: boolean): SyncPlan {
  const plan: SyncPlan = {
    view: {rules: new Map(), netns: new Map(), others: new Map(), skips: new Set()},
    ...{
      ruleWrites: [],
      netnsWrites: [],
      ruleDeletes: [],
      netnsDeletes: [],
      otherWrites: [],
      otherDeletes: [],
      skipWrites: [],
      skipDeletes: [],
    },
    ...{shared: [], unheld: [], meshed: [], unregistered: [], registered: [], attach: []},
  }
  const owners = new Map<string, {ip: string; id: string}[]>()
  for (const {pod, nsPath, cookie, rules, otherIps = [], skipIndexes = []} of found) {
    // a dual-stack pod's two addresses share its rules
    for (const ip of [pod.ip, ...(pod.ip6 ? [pod.ip6] : [])]) {
      plan.view.rules.set(ip, rules.toString('hex'))
      if (current.rules.get(ip) !== plan.view.rules.get(ip)) plan.ruleWrites.push([ip, rules])
    }
    const record: PodRecord = {
      namespace: pod.namespace,
      name: pod.name,
      ip: pod.ip,
      ...(pod.ip6 ? {ip6: pod.ip6} : {}),
      ...(pod.noInboundCapture.length > 0 ? {noInboundCapture: pod.noInboundCapture} : {}),
    }
    if (cookie === undefined) {
      plan.unregistered.push(record)
      continue
    }
    const id = encodePodId({ip: pod.ip, ip6: pod.ip6})
    plan.view.netns.set(cookie, id.toString('hex'))
    const changed = current.netns.get(cookie) !== plan.view.netns.get(cookie)
    if (changed) plan.netnsWrites.push([cookie, id])
    plan.meshed.push({...record, netns: cookie.toString()})
    for (const ifindex of skipIndexes) {
      const key = encodeIface({netns: cookie, ifindex})
      plan.view.skips?.add(key.toString('hex'))
      if (!current.skips?.has(key.toString('hex'))) plan.skipWrites.push(key)
    }
    for (const a of otherIps) owners.set(a, [...(owners.get(a) ?? []), {ip: pod.ip, id: `${pod.namespace}/${pod.name}`}])
    if (nsPath) {
      const target = {path: nsPath, skip: pod.noInboundCapture}
      plan.registered.push(target)
      if (!known || changed) plan.attach.push({...target, id: `${pod.namespace}/${pod.name}`})
    }
  }
  for (const [ip, pods] of owners) {
    if (plan.view.rules.has(ip)) continue // a registered pod's own IP (overlapping networks): its entry decides
    if ((plan.view.others?.size ?? 0) >= MAX_PODS) {
      plan.unheld.push(ip)
      continue
    }
    const owner = pods.length === 1 ? (pods[0]?.ip ?? '') : ''
    if (pods.length > 1) plan.shared.push({ip, pods: pods.map((p) => p.id)})
    plan.view.others?.set(ip, owner)
    if (current.others?.get(ip) !== owner) plan.otherWrites.push([ip, owner])
  }
  for (const ip of current.others?.keys() ?? []) if (!plan.view.others?.has(ip)) plan.otherDeletes.push(ip)
  for (const ip of current.rules.keys()) if (!plan.view.rules.has(ip)) plan.ruleDeletes.push(ip)
  for (const cookie of current.netns.keys()) if (!plan.view.netns.has(cookie)) plan.netnsDeletes.push(cookie)
  for (const key of current.skips ?? []) if (!plan.view.skips?.has(key)) plan.skipDeletes.push(Buffer.from(key, 'hex'))
  return plan
}

/** Each registered address (canonical), and the cookie of the namespace it is registered to. */
function registeredCookies(registrations: Iterable<{netns: bigint} & PodId>): Map<string, bigint> {
  const out = new Map<string, bigint>()
  for (const pod of registrations) {
    out.set(normalIp(pod.ip), pod.netns)
    if (pod.ip6) out.set(normalIp(pod.ip6), pod.netns)
  }
  return out
}

/**
 * Where pods are registered in another installation's maps (the one a replacement on maps of its
 * own takes over from), read only where its pod map has today's layout: an older version's maps
 * keep no stickiness, and each pod goes to the oldest namespace holding its address.
 */
async function registeredElsewhere(inst: Installation): Promise<Map<string, bigint>> {
  const info = await bpftool.mapShowPinned(inst.map('netns_pod_ips')).catch(() => undefined)
  if (info?.bytes_key !== 8 || info.bytes_value !== encodePodId({ip: '0.0.0.0'}).length) return new Map()
  return registeredCookies(await readMaps.netnsPods(inst))
}

/** The namespace at a path the runtime named, as the scan found it (none if it is gone). */
function namespaceAt(path: string, candidates: readonly NetnsCandidate[]): NetnsCandidate[] {
  let inode: number
  try {
    inode = statSync(path).ino
  } catch {
    return []
  }
  const known = candidates.find((c) => c.inode === inode)
  return [known ? {...known, path} : {inode, path, addresses: [], linkLocal: [], pids: []}]
}

/**
 * The namespace a pod is, among those holding its address. More than one is a claim, made on
 * purpose or not: a registration never moves away from a namespace that still holds the address
 * (an address put on another namespace's loopback must not take the pod's identity, its inbound
 * guard and its DNS capture); a pod not registered yet goes to the oldest namespace (the lowest
 * cookie: cookies only grow), which held the address first unless a claim was made before the
 * pod existed. Either way the node is warned, naming the others.
 */
export function pickNamespace(
  pod: MeshedPod,
  holders: readonly NetnsCandidate[],
  cookies: ReadonlyMap<string, bigint>,
  registered: bigint | undefined,
): {ns?: NetnsCandidate; warning?: string} {
  if (holders.length <= 1) return {ns: holders[0]}
  const withCookie = holders.flatMap((h) => {
    const cookie = cookies.get(h.path)
    return cookie === undefined ? [] : [{h, cookie}]
  })
  const kept = (withCookie.find((w) => w.cookie === registered) ?? withCookie.sort((a, b) => (a.cookie < b.cookie ? -1 : 1))[0])?.h
  if (!kept) return {ns: holders[0]}
  const others = holders.filter((h) => h !== kept).map((h) => h.path)
  const why = cookies.get(kept.path) === registered ? 'where it is registered' : 'the oldest of them'
  return {
    ns: kept,
    warning: `${pod.namespace}/${pod.name}: its address ${pod.ip} is also held by ${others.length} other network namespace(s) (${others.slice(0, 3).join(', ')}): kept in ${kept.path}, ${why}`,
  }
}

/**
 * Make local_pod_ips and netns_pod_ips match the selected pods, writing only what changed, in
 * one bpftool process. Pod identity is registered by finding each pod's network namespace on the
 * node (the one holding its IP) and reading that namespace's cookie. `known` (what the previous
 * sync of this process left) saves reading the maps back.
 */
export async function syncPods(
  inst: Installation,
  objects: Helpers,
  selection: PodSelection,
  opts: {
    known?: PodMapsView
    attachInbound: boolean
    capacity: number
    /** where pods are registered now, when not in `inst` (a replacement's own maps) */
    registeredIn?: Installation
    /** namespace/name -> the network namespace the runtime named for it (CNI mode): no address decides */
    pinned?: ReadonlyMap<string, string>
  },
): Promise<SyncResult> {
  checkCapacity(selection)
  const candidates = await listNetnsCandidates({helper: objects.netnsCookie})
  const holders = namespaceHolders(candidates)
  const held = selection.meshed.map((pod) => {
    const path = opts.pinned?.get(`${pod.namespace}/${pod.name}`)
    return {pod, holders: path === undefined ? (holders.get(normalIp(pod.ip)) ?? []) : namespaceAt(path, candidates)}
  })
  const cookies = await netnsCookies(objects.netnsCookie, [...new Set(held.flatMap((h) => h.holders.map((c) => c.path)))])
  const current = opts.known ?? (await readView(inst))
  const nodeWarnings: string[] = []
  const registeredAt = opts.registeredIn
    ? await registeredElsewhere(opts.registeredIn)
    : registeredCookies([...current.netns].map(([netns, id]) => ({netns, ...decodePodId(Buffer.from(id, 'hex'))})))
  const located = held.map(({pod, holders: hs}) => {
    const {ns, warning} = pickNamespace(pod, hs, cookies, registeredAt.get(normalIp(pod.ip)))
    if (warning) nodeWarnings.push(warning)
    return {pod, ns}
  })
  const found: FoundPod[] = []
  for (const {pod, ns} of located) {
    const {rules, warning} = podRulesWithDns(pod, ns)
    if (warning) nodeWarnings.push(warning)
    const cookie = ns ? cookies.get(ns.path) : undefined
    // the interfaces it excludes, for the cgroup's guard (tc stays off them itself, by name)
    const skipIndexes =
      ns && cookie !== undefined && pod.noInboundCapture.length > 0
        ? [...(await interfaceIndexes(ns.path, pod.noInboundCapture)).values()]
        : []
    // with its namespace: only that namespace's sockets may key connections on the pod's addresses
    found.push({
      pod,
      nsPath: ns?.path,
      cookie,
      rules: encodePodRules({...rules, ...(cookie === undefined ? {} : {netns: cookie})}),
      otherIps: ns ? otherAddresses(pod, ns) : [],
      skipIndexes,
    })
  }
  const plan = planSync(found, current, opts.known !== undefined)
  // every meshed pod counts, found or not: its share is kept for it either way
  plan.view.share = podShare(opts.capacity, selection.meshed.length)
  const lines = [
    // before a namespace is registered: the guard acts on registered ones
    ...(existsSync(inst.map('inbound_skip'))
      ? [
          ...plan.skipWrites.map((key) => bpftool.mapUpdateLine(inst.map('inbound_skip'), key, encodeU32(1))),
          ...plan.skipDeletes.map((key) => bpftool.mapDeleteLine(inst.map('inbound_skip'), key)),
        ]
      : []),
    ...(plan.view.share === current.share || !existsSync(inst.map('pod_share'))
      ? []
      : [bpftool.mapUpdateLine(inst.map('pod_share'), encodeU32(0), encodeU32(plan.view.share))]),
    ...plan.ruleWrites.map(([ip, rules]) => bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot(ip), rules)),
    ...plan.netnsWrites.map(([cookie, id]) => bpftool.mapUpdateLine(inst.map('netns_pod_ips'), encodeU64(cookie), id)),
    ...plan.ruleDeletes.map((ip) => bpftool.mapDeleteLine(inst.map('local_pod_ips'), ipToSlot(ip))),
    ...plan.netnsDeletes.map((cookie) => bpftool.mapDeleteLine(inst.map('netns_pod_ips'), encodeU64(cookie))),
    // an installation enabled by an older merbridge has no such map until enable replaces it
    ...(existsSync(inst.map('pod_other_ips'))
      ? [
          ...plan.otherWrites.map(([ip, owner]) =>
            bpftool.mapUpdateLine(inst.map('pod_other_ips'), ipToSlot(ip), owner ? ipToSlot(owner) : Buffer.alloc(16)),
          ),
          ...plan.otherDeletes.map((ip) => bpftool.mapDeleteLine(inst.map('pod_other_ips'), ipToSlot(ip))),
        ]
      : []),
  ]
  await bpftool.batch(lines)
  const result: SyncResult = {
    meshed: plan.meshed,
    unregistered: plan.unregistered,
    written: plan.ruleWrites.length + plan.netnsWrites.length + plan.otherWrites.length + plan.skipWrites.length,
    deleted: plan.ruleDeletes.length + plan.netnsDeletes.length + plan.otherDeletes.length + plan.skipDeletes.length,
    view: plan.view,
    registered: plan.registered,
    // an address pods of separate networks share is captured under the rules of the pod it arrives at: nothing to warn of
    nodeWarnings: [
      ...nodeWarnings,
      ...(plan.unheld.length > 0
        ? [
            `${plan.unheld.length} other addresses of pods (${plan.unheld.slice(0, 3).join(', ')}${plan.unheld.length > 3 ? ', ...' : ''}) do not fit pod_other_ips (${MAX_PODS}): a proxy's connection to one of its own pod's goes to the app directly`,
          ]
        : []),
    ],
  }
  // after the maps: the program acts on the pods it finds in local_pod_ips
  if (opts.attachInbound && plan.attach.length > 0) {
    const tc = await attachInbound(objects.tcInbound, inst.prog('mb_tc_inbound'), plan.attach, inst.dir)
    for (const a of plan.attach) {
      const why = tc.failed.get(a.path)
      if (why !== undefined) result.nodeWarnings.push(`${a.id}: inbound capture not attached: ${why}`)
    }
  }
  return result
}
