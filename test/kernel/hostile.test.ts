// Hostile packets and sockets. Pair keys stay unique on the node when two sockets share a 4-tuple: a pod with NET_ADMIN puts
// two other pods' addresses on its own loopback and holds a connection between them, on the very
// ports a real connection between those pods then uses. The real connection must still reach the
// destination's sidecar, and the impostor must never receive its bytes.
import assert from 'node:assert/strict'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {readMaps} from '../../src/bpf/maps.js'
import {APP_PORT, Lab, NODE, NODE_IP, REMOTE} from '../../src/lab/lab.js'
import {SYSTEM_PYTHON} from '../../src/lab/sidecar6.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {cli, eventually, kernelSkipReason, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy'], [SYSTEM_PYTHON])

// the impostor's server: accepts on HOST:PORT and reports every byte it is sent
const SERVER_PY = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print('listening', flush=True)
while True:
    c, peer = s.accept()
    print('accepted %s:%d' % peer, flush=True)
    while True:
        d = c.recv(65536)
        if not d:
            break
        print('got %d bytes' % len(d), flush=True)
`
// a client from a fixed source address and port: HTTP/1.0 GET, prints the status line or the error
const CLIENT_PY = `
import socket, sys
src, sport, dst, dport, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == 'hold'
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(10)
s.bind((src, sport))
s.connect((dst, dport))
print('connected', flush=True)
if hold:
    sys.stdin.read()
else:
    try:
        s.sendall(b'GET /whoami HTTP/1.0\\r\\nHost: lab\\r\\n\\r\\n')
        data = b''
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        print('response: ' + data.split(b'\\r\\n')[0].decode(), flush=True)
    except OSError as e:
        print('error: %s' % (e.strerror or e), flush=True)
`

// a first fragment of a TCP SYN to DST:PORT (only the ports and sequence number fit), from SRC
const FRAGMENT_PY = `
import socket, struct, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
tcp8 = struct.pack('!HHI', 40000, port, 1)
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp8), 0x4d42, 0x2000, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + tcp8, (dst, 0))
print('sent', flush=True)
`

describe('hostile packets and sockets', {skip, timeout: 240_000}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const SPORT = 40123

  before(async () => {
    // x: an unmeshed pod that has NET_ADMIN in its own namespace, as any root container may
    await lab.create([{name: 'a', meshed: true}, {name: 'b', meshed: true}, {name: 'x', meshed: false}])
    await lab.addRemote()
    for (const p of ['a', 'b']) await lab.startSidecar(p)
    await lab.startApp('b')
    writeFileSync(join(lab.tmp, 'server.py'), SERVER_PY)
    writeFileSync(join(lab.tmp, 'client.py'), CLIENT_PY)
    writeFileSync(join(lab.tmp, 'fragment.py'), FRAGMENT_PY)
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'], install.env)
    assert.equal(r.code, 0, r.stderr + r.stdout)
  })

  after(async () => {
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await lab.destroy()
    install.cleanup()
  })

  // first: the impostor below answers ARP for the addresses it takes
  it('drops TCP fragments to a meshed pod, whose ports it cannot judge, and counts them (fail closed)', async () => {
    const before = (await readMaps.counters(inst)).inboundUnparsed
    const r = await lab.exec(NODE, SYSTEM_PYTHON, [join(lab.tmp, 'fragment.py'), NODE_IP, lab.pod('b').ip, String(APP_PORT)])
    assert.equal(r.code, 0, r.stderr)
    await eventually('the fragment counted', async () => (await readMaps.counters(inst)).inboundUnparsed > before)
  })

  it("never hands a connection's bytes to a socket in another namespace with the same 4-tuple", async () => {
    const a = lab.pod('a').ip
    const b = lab.pod('b').ip
    for (const ip of [a, b]) {
      const r = await lab.exec('x', 'ip', ['addr', 'add', `${ip}/32`, 'dev', 'lo'])
      assert.equal(r.code, 0, r.stderr)
    }
    // the impostor's end in the attached cgroup takes b's key first; its client sits outside
    // that cgroup, so only the end that would receive a's bytes is tracked
    const server = lab.spawn('x', "impostor's server", SYSTEM_PYTHON, [join(lab.tmp, 'server.py'), b, String(PROFILES.istio!.inboundPort)])
    await server.waitFor(/listening/)
    const holder = lab.spawn('x', "impostor's client", SYSTEM_PYTHON, [join(lab.tmp, 'client.py'), a, String(SPORT), b, String(PROFILES.istio!.inboundPort), 'hold'], REMOTE)
    await holder.waitFor(/connected/)
    await server.waitFor(/accepted/)

    // a's proxy calls b from the same address and port: its connect goes to b's inbound port,
    // the same 4-tuple as the impostor's
    const proxy = PROFILES.istio!
    const before = (await readMaps.counters(inst)).msgRedirected
    const r = await lab.exec('a', 'setpriv', ['--reuid', String(proxy.sidecarUid), '--regid', String(proxy.sidecarGid), '--clear-groups', SYSTEM_PYTHON, join(lab.tmp, 'client.py'), a, String(SPORT), b, String(APP_PORT), 'once'])
    assert.doesNotMatch(server.stdout, /got \d+ bytes/, "the impostor received a's bytes")
    assert.match(r.stdout, /response: HTTP\/1\.[01] 200/, `a's request reached b's sidecar and app: ${r.stdout}${r.stderr}`)
    // and went socket to socket: the impostor did not cost the real connection its acceleration
    assert.ok((await readMaps.counters(inst)).msgRedirected > before, 'messages of the real connection were redirected')
  })

})
