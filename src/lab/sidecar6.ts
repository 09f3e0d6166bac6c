/**
 * The lab's IPv6 sidecar. Debian's haproxy does not ask IP6T_SO_ORIGINAL_DST for IPv6 clients (it
 * then forwards to itself), so IPv6 connections get this small forwarding proxy instead, run as
 * the pod's proxy user beside haproxy (which keeps IPv4): IPv6-only listeners on the outbound and
 * inbound ports, the original destination from getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST), inbound
 * upstreams from ::6 as Envoy's, and one line per accepted connection in a log file, written
 * before it connects upstream (so a test that got its response can count it without waiting).
 */
import type {MeshProfile} from '../mesh/profiles.js'

/** Debian's python3: the proxy runs as the mesh's user, who cannot reach root's own installs. */
export const SYSTEM_PYTHON = '/usr/bin/python3'

export interface Sidecar6Line {
  direction: 'outbound' | 'inbound'
  client: string
  originalDst?: string
  error?: string
}

export function parseSidecar6Log(text: string): Sidecar6Line[] {
  const out: Sidecar6Line[] = []
  for (const [, direction, client = '', rest = ''] of text.matchAll(/^(outbound|inbound) client=(\S+) (.*)$/gm)) {
    const dst = /^dst=(\S+)$/.exec(rest)?.[1]
    out.push({direction: direction as 'outbound' | 'inbound', client, ...(dst ? {originalDst: dst} : {error: rest.replace(/^error=/, '')})})
  }
  return out
}

/** python3 and its arguments for a pod's IPv6 sidecar. */
export function sidecar6Args(mesh: MeshProfile, script: string, log: string): string[] {
  return [script, String(mesh.outboundPort), String(mesh.inboundPort), log]
}
