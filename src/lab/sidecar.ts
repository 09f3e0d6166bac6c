/**
 * A sidecar for the lab that behaves like Envoy's ORIGINAL_DST listeners: Debian's haproxy in
 * TCP mode, running as the mesh's uid/gid, outbound on 15001 and inbound on 15006, forwarding to
 * the destination getsockopt(SO_ORIGINAL_DST) reports; inbound upstreams leave from 127.0.0.6.
 * Each connection is logged on stdout as: client frontend(original destination) backend server,
 * as soon as its upstream is connected (logasap): what a test reads is there while the
 * connection is still open, whenever it closes. A connection without an original destination
 * (haproxy then sees the listener's own address) is closed, as Envoy's blackhole filter chains
 * close it, instead of being forwarded to the sidecar itself in a loop.
 */
import type {MeshProfile} from '../mesh/profiles.js'

/** haproxy's connections when the lab names none. */
export const HAPROXY_MAXCONN = 4096

export function haproxyConfig(
  mesh: MeshProfile,
  opts: {statsSocket?: string; threads?: number; maxconn?: number; extra?: string} = {},
): string {
  // the stats socket counts sessions as they are accepted: proof that a connection passed, with no wait for a log line
  return `global
${opts.threads ? `  nbthread ${opts.threads}\n` : ''}  maxconn ${opts.maxconn ?? HAPROXY_MAXCONN}${
    opts.statsSocket
      ? `
  stats socket ${opts.statsSocket} mode 600 level user`
      : ''
  }
  log stdout format raw local0
defaults
  mode tcp
  log global
  option logasap
  log-format "conn %ci:%cp dst=%fi:%fp via=%b server=%si:%sp"
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend outbound
  bind 0.0.0.0:${mesh.outboundPort}
  tcp-request connection reject if { dst_port ${mesh.outboundPort} }
  default_backend outbound_passthrough
frontend inbound
  bind 0.0.0.0:${mesh.inboundPort}
  tcp-request connection reject if { dst_port ${mesh.inboundPort} }
  default_backend inbound_passthrough
backend outbound_passthrough
  server original 0.0.0.0:0
backend inbound_passthrough
  source 127.0.0.6
  server original 0.0.0.0:0
${opts.extra ?? ''}`
}

export interface SidecarLogLine {
  client: string
  originalDst: string
  backend: string
  server: string
}

export function parseSidecarLog(text: string): SidecarLogLine[] {
  const out: SidecarLogLine[] = []
  for (const [, client = '', originalDst = '', backend = '', server = ''] of text.matchAll(/conn (\S+) dst=(\S+) via=(\S+) server=(\S+)/g))
    out.push({client, originalDst, backend, server})
  return out
}

/** Sessions each frontend has accepted so far, by frontend name, from haproxy's `show stat` CSV. */
export function parseFrontendSessions(csv: string): Record<string, number> {
  const lines = csv.split('\n')
  const head = (lines[0] ?? '').replace(/^# /, '').split(',')
  const [name, type, stot] = ['pxname', 'svname', 'stot'].map((f) => head.indexOf(f))
  const out: Record<string, number> = {}
  for (const line of lines.slice(1)) {
    const cols = line.split(',')
    if (cols[type ?? -1] === 'FRONTEND') out[cols[name ?? -1] ?? ''] = Number(cols[stot ?? -1])
  }
  return out
}

/** Sessions the interception frontends (outbound, inbound) have accepted so far; NaN for one that is missing. */
export function parseSessionTotals(csv: string): {outbound: number; inbound: number} {
  const all = parseFrontendSessions(csv)
  return {outbound: all.outbound ?? Number.NaN, inbound: all.inbound ?? Number.NaN}
}
