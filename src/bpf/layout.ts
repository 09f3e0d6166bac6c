/**
 * Mirrors of the structs in bpf/headers/types.h and constants in bpf/headers/consts.h, with
 * codecs. test/kernel/layout.test.ts checks every offset here against the object's BTF and
 * round-trips values through the kernel.
 */
import {Cidr, ipToSlot, isMappedV4, slotToIp} from './ip.js'

/** Map capacities (consts.h) */
export const MAX_PODS = 4096
export const MAX_PORTS = 16
export const MAX_CIDRS = 8
export const MAX_DNS = 4
export const MAX_GROUPS = 16

export const POD_OUT_ALL_CIDRS = 1 << 0
export const POD_IN_ALL_PORTS = 1 << 1
export const POD_DNS_CAPTURE = 1 << 2
export const POD_DNS_ALL = 1 << 3
export const POD_OUT_LOOPBACK = 1 << 4
export const POD_NO_IPV6 = 1 << 5
export const POD_GROUPS_ONLY = 1 << 6
export const SETTINGS_DRAINING = 1 << 0
export const SETTINGS_INBOUND_REWRITE = 1 << 1
export const SETTINGS_CNI = 1 << 2
export const ORIGIN_OUTBOUND = 1 << 0
export const ORIGIN_INBOUND = 1 << 1
export const ORIGIN_UNREGISTERED = 1 << 2
export const ORIGIN_OWN_POD = 1 << 3
export const ORIGIN_DNS = 1 << 4

/** enum mb_counter, in order. */
export const COUNTERS = [
  'connOutbound',
  'connInbound',
  'connUnregistered',
  'msgRedirected',
  'bytesRedirected',
  'redirectMiss',
  'getsockoptAnswered',
  'sockhashFull',
  'originLost',
  'connOwnInbound',
  'inboundAssigned',
  'inboundNoListener',
  'dnsRedirected',
  'dnsReplyRestored',
  'inboundUnparsed',
  'socketOverShare',
  'originOverShare',
  'inboundUncovered',
  'inboundRewritten',
  'inboundReopened',
] as const
export type CounterName = (typeof COUNTERS)[number]

/** Byte offsets of each field, and each struct's size, exactly as clang lays them out. */
export const LAYOUT = {
  mb_pair: {size: 48, fields: {netns: 0, local_ip: 8, remote_ip: 24, local_port: 40, remote_port: 42, pad: 44}},
  mb_queued: {size: 56, fields: {key: 0, queued: 48, pad: 52}},
  mb_origin: {size: 24, fields: {ip: 0, port: 16, flags: 18, pid: 20}},
  mb_cidr: {size: 20, fields: {ip: 0, prefix: 16, pad: 17}},
  mb_pod_config: {
    size: 632,
    fields: {
      flags: 0,
      n_out_include_ports: 4,
      n_out_exclude_ports: 5,
      n_in_include_ports: 6,
      n_in_exclude_ports: 7,
      n_out_include_cidrs: 8,
      n_out_exclude_cidrs: 9,
      pad: 10,
      out_include_ports: 12,
      out_exclude_ports: 44,
      in_include_ports: 76,
      in_exclude_ports: 108,
      out_include_cidrs: 140,
      out_exclude_cidrs: 300,
      proxy_uid: 460,
      proxy_gid: 464,
      n_dns: 468,
      pad2: 469,
      dns: 472,
      netns: 536,
      loopback: 544,
      n_owner_groups: 564,
      pad3: 565,
      owner_groups: 568,
    },
  },
  mb_process: {size: 24, fields: {pod_ip: 0, netns: 16}},
  mb_pod_id: {size: 32, fields: {ip: 0, ip6: 16}},
  mb_settings: {
    size: 32,
    fields: {
      sidecar_uid: 0,
      sidecar_gid: 4,
      outbound_port: 8,
      inbound_port: 10,
      flags: 12,
      host_netns: 16,
      dns_port: 24,
      pad: 26,
      pad2: 28,
    },
  },
  mb_usage: {size: 16, fields: {sockets: 0, origins: 8}},
  mb_iface: {size: 16, fields: {netns: 0, ifindex: 8, pad: 12}},
} as const

const F = {
  pair: LAYOUT.mb_pair.fields,
  origin: LAYOUT.mb_origin.fields,
  cidr: LAYOUT.mb_cidr.fields,
  pod: LAYOUT.mb_pod_config.fields,
  proc: LAYOUT.mb_process.fields,
  settings: LAYOUT.mb_settings.fields,
}

function ipAt(buf: Buffer, offset: number): string {
  return slotToIp(buf.subarray(offset, offset + 16))
}

// ---- struct mb_pair: one end's view of a connection -------------------------------------------
export interface Pair {
  /** the netns cookie of the socket whose view this is */
  netns: bigint
  localIp: string
  localPort: number
  remoteIp: string
  remotePort: number
}

export function encodePair(p: Pair): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_pair.size)
  b.writeBigUInt64LE(p.netns, F.pair.netns)
  ipToSlot(p.localIp).copy(b, F.pair.local_ip)
  ipToSlot(p.remoteIp).copy(b, F.pair.remote_ip)
  b.writeUInt16BE(p.localPort, F.pair.local_port) // network order
  b.writeUInt16BE(p.remotePort, F.pair.remote_port)
  return b
}

export function decodePair(b: Buffer): Pair {
  return {
    netns: b.readBigUInt64LE(F.pair.netns),
    localIp: ipAt(b, F.pair.local_ip),
    localPort: b.readUInt16BE(F.pair.local_port),
    remoteIp: ipAt(b, F.pair.remote_ip),
    remotePort: b.readUInt16BE(F.pair.remote_port),
  }
}

// ---- struct mb_queued: records of the sockhash-queued iterator ---------------------------------
export interface Queued {
  /** the socket's key in sock_pair_map, as the kernel holds it */
  key: Buffer
  /** bytes moved to it that it has not read */
  queued: number
}

export function decodeQueuedRecords(b: Buffer): Queued[] {
  const size = LAYOUT.mb_queued.size
  if (b.length % size !== 0) throw new Error(`sockhash-queued: ${b.length} bytes is not a whole number of ${size}-byte records`)
  const out: Queued[] = []
  for (let off = 0; off < b.length; off += size) {
    const r = b.subarray(off, off + size)
    out.push({
      key: Buffer.from(r.subarray(LAYOUT.mb_queued.fields.key, LAYOUT.mb_queued.fields.key + LAYOUT.mb_pair.size)),
      queued: r.readUInt32LE(LAYOUT.mb_queued.fields.queued),
    })
  }
  return out
}

// ---- struct mb_origin -------------------------------------------------------------------------
export interface Origin {
  ip: string
  port: number
  flags: number
  pid: number
}

export function encodeOrigin(o: Origin): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_origin.size)
  ipToSlot(o.ip).copy(b, F.origin.ip)
  b.writeUInt16BE(o.port, F.origin.port)
  b.writeUInt16LE(o.flags, F.origin.flags)
  b.writeUInt32LE(o.pid, F.origin.pid)
  return b
}

export function decodeOrigin(b: Buffer): Origin {
  return {
    ip: ipAt(b, F.origin.ip),
    port: b.readUInt16BE(F.origin.port),
    flags: b.readUInt16LE(F.origin.flags),
    pid: b.readUInt32LE(F.origin.pid),
  }
}

export function originFlagNames(flags: number): string[] {
  const names: string[] = []
  if (flags & ORIGIN_OUTBOUND) names.push('outbound')
  if (flags & ORIGIN_INBOUND) names.push('inbound')
  if (flags & ORIGIN_UNREGISTERED) names.push('unregistered')
  if (flags & ORIGIN_OWN_POD) names.push('own-pod')
  if (flags & ORIGIN_DNS) names.push('dns')
  return names
}

// ---- struct mb_pod_config ---------------------------------------------------------------------
export interface PodRules {
  /** includeOutboundIPRanges is '*' */
  outAllCidrs: boolean
  /** includeInboundPorts is '*' */
  inAllPorts: boolean
  outIncludePorts: number[]
  outExcludePorts: number[]
  inIncludePorts: number[]
  inExcludePorts: number[]
  outIncludeCidrs: Cidr[]
  outExcludeCidrs: Cidr[]
  /** the pod's proxy user and group (its spec; the mesh's default otherwise) */
  proxyUid: number
  proxyGid: number
  /**
   * The proxy captures DNS: port 53 to these resolvers (the pod's resolv.conf) goes to its DNS
   * port; `all` when they are unknown (fail closed: port 53 to any address). Absent: no capture.
   */
  dns?: {all: boolean; servers: string[]}
  /** the pod's network namespace cookie, once registered: only its sockets may key on its addresses */
  netns?: bigint
  /** Istio installed no ip6tables rules for it (dual-stack without ISTIO_DUAL_STACK): native IPv6 is left alone */
  noIpv6?: boolean
  /**
   * istio-init's ISTIO_OUTBOUND_OWNER_GROUPS (`only`: just these groups' outbound is captured) or
   * ..._EXCLUDE (these groups' is not). Absent: every group's.
   */
  ownerGroups?: {only: boolean; gids: number[]}
  /** istio-init's ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, where it is not 127.0.0.1/32 */
  loopback?: Cidr
}

/** Istio drops its "an app's traffic over lo goes direct" rules when an include range is loopback. */
export function includesLoopback(cidrs: Cidr[]): boolean {
  return cidrs.some((c) => c.ip.startsWith('127.') || c.ip === '::1')
}

export const CAPTURE_ALL: PodRules = {
  outAllCidrs: true,
  inAllPorts: true,
  outIncludePorts: [],
  outExcludePorts: [],
  inIncludePorts: [],
  inExcludePorts: [],
  outIncludeCidrs: [],
  outExcludeCidrs: [],
  proxyUid: 1337,
  proxyGid: 1337,
}

function writePorts(b: Buffer, offset: number, countOffset: number, ports: number[]): void {
  if (ports.length > MAX_PORTS) throw new RangeError(`at most ${MAX_PORTS} ports fit a rule, got ${ports.length}`)
  b.writeUInt8(ports.length, countOffset)
  ports.forEach((p, i) => b.writeUInt16LE(p, offset + 2 * i))
}

function readPorts(b: Buffer, offset: number, countOffset: number): number[] {
  const n = Math.min(b.readUInt8(countOffset), MAX_PORTS)
  return Array.from({length: n}, (_, i) => b.readUInt16LE(offset + 2 * i))
}

/** One struct mb_cidr at `at`: an IPv4 range as its v4-mapped form (a /24 is /120). */
function writeCidr(b: Buffer, at: number, c: Cidr): void {
  const slot = ipToSlot(c.ip)
  slot.copy(b, at + F.cidr.ip)
  b.writeUInt8(isMappedV4(slot) ? 96 + c.prefix : c.prefix, at + F.cidr.prefix)
}

function readCidr(b: Buffer, at: number): Cidr {
  const slot = b.subarray(at + F.cidr.ip, at + F.cidr.ip + 16)
  const prefix = b.readUInt8(at + F.cidr.prefix)
  return {ip: slotToIp(slot), prefix: isMappedV4(slot) ? prefix - 96 : prefix}
}

function writeCidrs(b: Buffer, offset: number, countOffset: number, cidrs: Cidr[]): void {
  if (cidrs.length > MAX_CIDRS) throw new RangeError(`at most ${MAX_CIDRS} CIDRs fit a rule, got ${cidrs.length}`)
  b.writeUInt8(cidrs.length, countOffset)
  cidrs.forEach((c, i) => writeCidr(b, offset + LAYOUT.mb_cidr.size * i, c))
}

function readCidrs(b: Buffer, offset: number, countOffset: number): Cidr[] {
  const n = Math.min(b.readUInt8(countOffset), MAX_CIDRS)
  return Array.from({length: n}, (_, i) => readCidr(b, offset + LAYOUT.mb_cidr.size * i))
}

export function encodePodRules(r: PodRules): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_pod_config.size)
  const flags =
    (r.outAllCidrs ? POD_OUT_ALL_CIDRS : 0) |
    (r.inAllPorts ? POD_IN_ALL_PORTS : 0) |
    (r.dns ? POD_DNS_CAPTURE : 0) |
    (r.dns?.all ? POD_DNS_ALL : 0) |
    (includesLoopback(r.outIncludeCidrs) ? POD_OUT_LOOPBACK : 0) |
    (r.noIpv6 ? POD_NO_IPV6 : 0) |
    (r.ownerGroups?.only ? POD_GROUPS_ONLY : 0)
  b.writeUInt32LE(flags, F.pod.flags)
  writePorts(b, F.pod.out_include_ports, F.pod.n_out_include_ports, r.outIncludePorts)
  writePorts(b, F.pod.out_exclude_ports, F.pod.n_out_exclude_ports, r.outExcludePorts)
  writePorts(b, F.pod.in_include_ports, F.pod.n_in_include_ports, r.inIncludePorts)
  writePorts(b, F.pod.in_exclude_ports, F.pod.n_in_exclude_ports, r.inExcludePorts)
  writeCidrs(b, F.pod.out_include_cidrs, F.pod.n_out_include_cidrs, r.outIncludeCidrs)
  writeCidrs(b, F.pod.out_exclude_cidrs, F.pod.n_out_exclude_cidrs, r.outExcludeCidrs)
  b.writeUInt32LE(r.proxyUid, F.pod.proxy_uid)
  b.writeUInt32LE(r.proxyGid, F.pod.proxy_gid)
  const servers = r.dns?.servers ?? []
  if (servers.length > MAX_DNS) throw new RangeError(`at most ${MAX_DNS} resolvers fit a pod, got ${servers.length}`)
  b.writeUInt8(servers.length, F.pod.n_dns)
  servers.forEach((ip, i) => ipToSlot(ip).copy(b, F.pod.dns + 16 * i))
  b.writeBigUInt64LE(r.netns ?? 0n, F.pod.netns)
  if (r.loopback) writeCidr(b, F.pod.loopback, r.loopback)
  const gids = r.ownerGroups?.gids ?? []
  if (gids.length > MAX_GROUPS) throw new RangeError(`at most ${MAX_GROUPS} owner groups fit a pod, got ${gids.length}`)
  b.writeUInt8(gids.length, F.pod.n_owner_groups)
  gids.forEach((g, i) => b.writeUInt32LE(g, F.pod.owner_groups + 4 * i))
  return b
}

export function decodePodRules(b: Buffer): PodRules {
  const flags = b.readUInt32LE(F.pod.flags)
  return {
    outAllCidrs: (flags & POD_OUT_ALL_CIDRS) !== 0,
    inAllPorts: (flags & POD_IN_ALL_PORTS) !== 0,
    outIncludePorts: readPorts(b, F.pod.out_include_ports, F.pod.n_out_include_ports),
    outExcludePorts: readPorts(b, F.pod.out_exclude_ports, F.pod.n_out_exclude_ports),
    inIncludePorts: readPorts(b, F.pod.in_include_ports, F.pod.n_in_include_ports),
    inExcludePorts: readPorts(b, F.pod.in_exclude_ports, F.pod.n_in_exclude_ports),
    outIncludeCidrs: readCidrs(b, F.pod.out_include_cidrs, F.pod.n_out_include_cidrs),
    outExcludeCidrs: readCidrs(b, F.pod.out_exclude_cidrs, F.pod.n_out_exclude_cidrs),
    proxyUid: b.readUInt32LE(F.pod.proxy_uid),
    proxyGid: b.readUInt32LE(F.pod.proxy_gid),
    ...(flags & POD_DNS_CAPTURE
      ? {
          dns: {
            all: (flags & POD_DNS_ALL) !== 0,
            servers: Array.from({length: Math.min(b.readUInt8(F.pod.n_dns), MAX_DNS)}, (_, i) => ipAt(b, F.pod.dns + 16 * i)),
          },
        }
      : {}),
    ...(b.readBigUInt64LE(F.pod.netns) !== 0n ? {netns: b.readBigUInt64LE(F.pod.netns)} : {}),
    ...(flags & POD_NO_IPV6 ? {noIpv6: true} : {}),
    ...(b.readUInt8(F.pod.n_owner_groups) > 0 || flags & POD_GROUPS_ONLY
      ? {
          ownerGroups: {
            only: (flags & POD_GROUPS_ONLY) !== 0,
            gids: Array.from({length: Math.min(b.readUInt8(F.pod.n_owner_groups), MAX_GROUPS)}, (_, i) =>
              b.readUInt32LE(F.pod.owner_groups + 4 * i),
            ),
          },
        }
      : {}),
    ...(b.readUInt8(F.pod.loopback + F.cidr.prefix) > 0 ? {loopback: readCidr(b, F.pod.loopback)} : {}),
  }
}

// ---- struct mb_pod_id -------------------------------------------------------------------------
/** A registered pod's addresses: its IPv4 address, and its IPv6 one on a dual-stack pod. */
export interface PodId {
  ip: string
  ip6?: string
}

export function encodePodId(id: PodId): Buffer {
  return Buffer.concat([ipToSlot(id.ip), id.ip6 ? ipToSlot(id.ip6) : Buffer.alloc(16)])
}

export function decodePodId(b: Buffer): PodId {
  const ip6 = b.subarray(LAYOUT.mb_pod_id.fields.ip6, LAYOUT.mb_pod_id.fields.ip6 + 16)
  return {ip: ipAt(b, LAYOUT.mb_pod_id.fields.ip), ...(ip6.some((x) => x !== 0) ? {ip6: slotToIp(ip6)} : {})}
}

// ---- struct mb_iface --------------------------------------------------------------------------
/** An interface of a registered pod's namespace: its netns cookie and the interface's index there. */
export interface Iface {
  netns: bigint
  ifindex: number
}

export function encodeIface(i: Iface): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_iface.size)
  b.writeBigUInt64LE(i.netns, LAYOUT.mb_iface.fields.netns)
  b.writeUInt32LE(i.ifindex, LAYOUT.mb_iface.fields.ifindex)
  return b
}

export function decodeIface(b: Buffer): Iface {
  return {netns: b.readBigUInt64LE(LAYOUT.mb_iface.fields.netns), ifindex: b.readUInt32LE(LAYOUT.mb_iface.fields.ifindex)}
}

// ---- struct mb_process ------------------------------------------------------------------------
export interface ProcessEntry {
  podIp: string
  netns: bigint
}

export function encodeProcess(p: ProcessEntry): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_process.size)
  ipToSlot(p.podIp).copy(b, F.proc.pod_ip)
  b.writeBigUInt64LE(p.netns, F.proc.netns)
  return b
}

export function decodeProcess(b: Buffer): ProcessEntry {
  return {podIp: ipAt(b, F.proc.pod_ip), netns: b.readBigUInt64LE(F.proc.netns)}
}

// ---- struct mb_settings -----------------------------------------------------------------------
export interface Settings {
  sidecarUid: number
  sidecarGid: number
  outboundPort: number
  inboundPort: number
  draining: boolean
  /** tc rewrites ports for every connection it hands over (MERBRIDGE_WITHOUT=reuseport-assign) */
  inboundRewrite: boolean
  /** CNI mode: no capture for a namespace that is not registered (no sidecar guess) */
  cni: boolean
  hostNetns: bigint
  /** the proxy's DNS listener, 0 for none */
  dnsPort: number
}

export function encodeSettings(s: Settings): Buffer {
  const b = Buffer.alloc(LAYOUT.mb_settings.size)
  b.writeUInt32LE(s.sidecarUid, F.settings.sidecar_uid)
  b.writeUInt32LE(s.sidecarGid, F.settings.sidecar_gid)
  b.writeUInt16LE(s.outboundPort, F.settings.outbound_port)
  b.writeUInt16LE(s.inboundPort, F.settings.inbound_port)
  b.writeUInt32LE(
    (s.draining ? SETTINGS_DRAINING : 0) | (s.inboundRewrite ? SETTINGS_INBOUND_REWRITE : 0) | (s.cni ? SETTINGS_CNI : 0),
    F.settings.flags,
  )
  b.writeBigUInt64LE(s.hostNetns, F.settings.host_netns)
  b.writeUInt16LE(s.dnsPort, F.settings.dns_port)
  return b
}

export function decodeSettings(b: Buffer): Settings {
  return {
    sidecarUid: b.readUInt32LE(F.settings.sidecar_uid),
    sidecarGid: b.readUInt32LE(F.settings.sidecar_gid),
    outboundPort: b.readUInt16LE(F.settings.outbound_port),
    inboundPort: b.readUInt16LE(F.settings.inbound_port),
    draining: (b.readUInt32LE(F.settings.flags) & SETTINGS_DRAINING) !== 0,
    inboundRewrite: (b.readUInt32LE(F.settings.flags) & SETTINGS_INBOUND_REWRITE) !== 0,
    cni: (b.readUInt32LE(F.settings.flags) & SETTINGS_CNI) !== 0,
    hostNetns: b.readBigUInt64LE(F.settings.host_netns),
    dnsPort: b.readUInt16LE(F.settings.dns_port),
  }
}

/**
 * The entries of each connection map a pod may always hold: a quarter of the capacity divided
 * among the meshed pods, found on the node or not (the datapath keeps that quarter for pods
 * under their share once the node holds three quarters). Mirrors MB_SHARED_CONNS in consts.h.
 */
export function podShare(capacity: number, pods: number): number {
  return Math.floor((capacity - sharedConnections(capacity)) / Math.max(1, pods))
}

/** MB_SHARED_CONNS: past this many entries, a pod takes more only within its share. */
export function sharedConnections(capacity: number): number {
  return capacity - Math.floor(capacity / 4)
}

// ---- struct mb_usage: a pod's entries in the connection maps (value of pod_usage) ----------------
export interface Usage {
  sockets: number
  origins: number
}

export function decodeUsage(b: Buffer): Usage {
  // a count below zero (its entry was evicted and made again) means none
  const at = (offset: number) => Math.max(0, Number(b.readBigInt64LE(offset)))
  return {sockets: at(LAYOUT.mb_usage.fields.sockets), origins: at(LAYOUT.mb_usage.fields.origins)}
}

// ---- scalar keys ------------------------------------------------------------------------------
export function encodeU32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}

export function encodeU64(n: bigint): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(n)
  return b
}
