/**
 * A sidecar for the lab that behaves like Envoy's ORIGINAL_DST listeners: Debian's haproxy in
 * TCP mode, running as the mesh's uid/gid, outbound on 15001 and inbound on 15006, forwarding to
 * the destination getsockopt(SO_ORIGINAL_DST) reports; inbound upstreams leave from 127.0.0.6.
 * Each connection is logged on stdout as: client frontend(original destination) backend server.
 */
import type {MeshProfile} from '../mesh/profiles.js'

export function haproxyConfig(mesh: MeshProfile): string {
  return `global
  uid ${mesh.sidecarUid}
  gid ${mesh.sidecarGid}
  maxconn 4096
  log stdout format raw local0
defaults
  mode tcp
  log global
  log-format "conn %ci:%cp dst=%fi:%fp via=%b server=%si:%sp bytes=%B"
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend outbound
  bind 0.0.0.0:${mesh.outboundPort}
  default_backend outbound_passthrough
frontend inbound
  bind 0.0.0.0:${mesh.inboundPort}
  default_backend inbound_passthrough
backend outbound_passthrough
  server original 0.0.0.0:0
backend inbound_passthrough
  source 127.0.0.6
  server original 0.0.0.0:0
`
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
