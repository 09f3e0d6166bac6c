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

/** The proxy's source, for python3, with its ports and log file as arguments. */
export const SIDECAR6_PY = `
import os, socket, struct, sys, threading
outbound, inbound, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass

def handle(conn, direction):
    try:
        forward(conn, direction)
    finally:
        conn.close()

def forward(conn, direction):
    client = conn.getpeername()
    try:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
    except OSError as e:
        with lock, open(log, 'a') as f:
            f.write('%s client=[%s]:%d error=%s\\n' % (direction, client[0], client[1], e.strerror))
        return
    port = struct.unpack('!H', raw[2:4])[0]
    addr = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    with lock, open(log, 'a') as f:
        f.write('%s client=[%s]:%d dst=[%s]:%d\\n' % (direction, client[0], client[1], addr, port))
    up = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        if direction == 'inbound':
            up.bind(('::6', 0))
        up.connect((addr, port))
    except OSError:
        up.close()
        return
    a = threading.Thread(target=pump, args=(conn, up), daemon=True)
    b = threading.Thread(target=pump, args=(up, conn), daemon=True)
    a.start(); b.start(); a.join(); b.join()
    up.close()

def serve(port, direction):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port))
    s.listen(128)
    while True:
        try:
            conn, _ = s.accept()
        except OSError:
            continue  # a connection reset before it was accepted: keep serving, as a proxy does
        threading.Thread(target=handle, args=(conn, direction), daemon=True).start()

for port, direction in ((outbound, 'outbound'), (inbound, 'inbound')):
    threading.Thread(target=serve, args=(port, direction), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
`

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
