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
import type {PreflightResult} from '../../src/datapath/doctor.js'
import {cli, eventually, kernelSkipReason, parseJson, uniqueInstall, suiteTimeout} from '../helpers.js'

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
/** A TCP SYN from src to dst:port in two IPv4 fragments (8 bytes of TCP header, then the rest), then
 * up to WAIT seconds for the SYN-ACK: prints "answered" or "no answer". */
const FRAGMENT_PY = `
import os, select, socket, struct, sys, time
src, dst, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sport, seq = 40000 + os.getpid() % 20000, 12345
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
tcp = struct.pack('!HHIIBBHHH', sport, port, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
def fragment(payload, offset8, more):
    return struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 0x4d42, (0x2000 if more else 0) | offset8, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)) + payload
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
tx.sendto(fragment(tcp[:8], 0, True), (dst, 0))
tx.sendto(fragment(tcp[8:], 1, False), (dst, 0))
print('sent', flush=True)
deadline = time.time() + wait
while select.select([rx], [], [], max(0, deadline - time.time()))[0]:
    pkt, (addr, _) = rx.recvfrom(65535)
    ihl = (pkt[0] & 0xf) * 4
    sp, dp, _, ack, _, flags = struct.unpack('!HHIIBB', pkt[ihl:ihl + 14])
    if addr == dst and (sp, dp, ack) == (port, sport, seq + 1) and flags & 0x12 == 0x12:
        print('answered', flush=True)
        sys.exit(0)
print('no answer', flush=True)
`

// An app that fills its socket's option memory (TCP_MD5SIG keys, as an unprivileged user may)
// before connect(): the socket storage for the original destination cannot be had.
const FILL_PY = `
import errno, socket, struct, sys
s = socket.socket()
keys = 0
while True:
    addr = struct.pack('=H', socket.AF_INET) + struct.pack('!H', 0) + socket.inet_aton('10.%d.%d.%d' % (keys >> 16 & 255, keys >> 8 & 255, keys & 255))
    md5 = addr.ljust(128, b'\\0') + struct.pack('=BBHI', 0, 0, 80, 0) + b'k' * 80
    try:
        s.setsockopt(socket.IPPROTO_TCP, 14, md5)
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        break
    keys += 1
print('keys', keys, flush=True)
s.settimeout(10)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b'GET /whoami HTTP/1.0\\r\\n\\r\\n')
    print('response: ' + s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)
except OSError as e:
    print('refused: ' + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
`

describe('hostile packets and sockets', {skip, timeout: suiteTimeout(240_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const SPORT = 40123

  before(async () => {
    // x: an unmeshed pod that has NET_ADMIN in its own namespace, as any root container may
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'x', meshed: false},
    ])
    await lab.addRemote()
    for (const p of ['a', 'b']) await lab.startSidecar(p)
    await lab.startApp('b')
    writeFileSync(join(lab.tmp, 'server.py'), SERVER_PY)
    writeFileSync(join(lab.tmp, 'client.py'), CLIENT_PY)
    writeFileSync(join(lab.tmp, 'fragment.py'), FRAGMENT_PY)
    writeFileSync(join(lab.tmp, 'fill.py'), FILL_PY)
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
  })

  after(async () => {
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await lab.destroy()
    install.cleanup()
  })

  // first: the impostor below answers ARP for the addresses it takes
  it('drops a SYN in fragments for a captured port, which tc cannot hand over (fail closed), and lets one for an excluded port through as Istio does', async () => {
    const fragmentedSyn = async (port: number, waitSeconds: number) => {
      const r = await lab.exec(
        NODE,
        SYSTEM_PYTHON,
        [join(lab.tmp, 'fragment.py'), NODE_IP, lab.pod('b').ip, String(port), String(waitSeconds)],
        {timeoutMs: (waitSeconds + 30) * 1000},
      )
      assert.equal(r.code, 0, r.stderr)
      return r.stdout.trim().split('\n').at(-1)
    }
    // reassembled, it reaches the app's listener: the cgroup's guard drops it there
    const before = (await readMaps.counters(inst)).inboundUncovered
    await fragmentedSyn(APP_PORT, 0)
    await eventually('the reassembled SYN dropped', async () => (await readMaps.counters(inst)).inboundUncovered > before)
    // 15020 (the agent's, excluded inbound): netfilter reassembles it and Istio's rules let it in
    const agent = await lab.startApp('b', 15020)
    try {
      assert.equal(await fragmentedSyn(15020, 60), 'answered')
    } finally {
      await agent.stop()
    }
  })

  it("keeps a pod's registration when another namespace puts the pod's address on its own loopback", async () => {
    const registeredAt = async () => new Map((await readMaps.netnsPods(inst)).map((n) => [n.ip, n.netns]))
    const before = await registeredAt()
    assert.equal(before.size, 2)
    try {
      for (const p of ['a', 'b']) {
        const r = await lab.exec('x', 'ip', ['addr', 'add', `${lab.pod(p).ip}/32`, 'dev', 'lo'])
        assert.equal(r.code, 0, r.stderr)
      }
      const r = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], install.env)
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.deepEqual(await registeredAt(), before, 'every pod still registered to its own namespace')
      for (const p of ['a', 'b'])
        assert.match(
          r.stdout + r.stderr,
          new RegExp(
            `lab/${p}: its address ${lab.pod(p).ip.replaceAll('.', '\\.')} is also held by 1 other network namespace\\(s\\) .*: kept in .*, where it is registered`,
          ),
        )
      // and the pods' traffic still passes their sidecars
      const ok = await lab.get('a', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)
      assert.equal(ok.status, 200, ok.error)
      // doctor looks for inbound capture where each pod is registered, not in the claimant's namespace
      const d = await cli(['doctor', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--json'], install.env)
      const inbound = parseJson<PreflightResult>(d.stdout).checks.find((c) => c.id === 'inbound')
      assert.equal(inbound?.status, 'pass', d.stdout)
      assert.match(inbound.detail, /the 2 registered pod\(s\)/)
    } finally {
      for (const p of ['a', 'b']) await lab.exec('x', 'ip', ['addr', 'del', `${lab.pod(p).ip}/32`, 'dev', 'lo'])
    }
  })

  it('refuses a connect whose socket has no room for its original destination, rather than let it skip the sidecar', async () => {
    const counters0 = await readMaps.counters(inst)
    const sessions0 = await lab.sidecarSessions('a')
    const r = await lab.exec('a', 'setpriv', [
      '--reuid',
      '1000',
      '--regid',
      '1000',
      '--clear-groups',
      SYSTEM_PYTHON,
      join(lab.tmp, 'fill.py'),
      lab.pod('b').ip,
      String(APP_PORT),
    ])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^keys [1-9]\d*$/m, 'the app filled its socket option memory')
    assert.match(r.stdout, /^refused: EPERM$/m, `the connect went somewhere: ${r.stdout}`)
    assert.equal((await readMaps.counters(inst)).originLost, counters0.originLost + 1)
    assert.equal((await lab.sidecarSessions('a')).outbound, sessions0.outbound, 'nothing reached the sidecar either')
    const st = await cli(['status', '--bpffs', install.bpffs], install.env)
    assert.match(st.stdout, /1 connect\(s\) or datagram\(s\) were refused \(EPERM\)/)
    // an ordinary request from the same pod still passes its sidecar
    const ok = await lab.get('a', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)
    assert.equal(ok.status, 200, ok.error)
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
    const holder = lab.spawn(
      'x',
      "impostor's client",
      SYSTEM_PYTHON,
      [join(lab.tmp, 'client.py'), a, String(SPORT), b, String(PROFILES.istio!.inboundPort), 'hold'],
      REMOTE,
    )
    await holder.waitFor(/connected/)
    await server.waitFor(/accepted/)

    // a's proxy calls b from the same address and port: its connect goes to b's inbound port,
    // the same 4-tuple as the impostor's
    const proxy = PROFILES.istio!
    const before = (await readMaps.counters(inst)).msgRedirected
    const r = await lab.exec('a', 'setpriv', [
      '--reuid',
      String(proxy.sidecarUid),
      '--regid',
      String(proxy.sidecarGid),
      '--clear-groups',
      SYSTEM_PYTHON,
      join(lab.tmp, 'client.py'),
      a,
      String(SPORT),
      b,
      String(APP_PORT),
      'once',
    ])
    assert.doesNotMatch(server.stdout, /got \d+ bytes/, "the impostor received a's bytes")
    assert.match(r.stdout, /response: HTTP\/1\.[01] 200/, `a's request reached b's sidecar and app: ${r.stdout}${r.stderr}`)
    // and went socket to socket: the impostor did not cost the real connection its acceleration
    assert.ok((await readMaps.counters(inst)).msgRedirected > before, 'messages of the real connection were redirected')
  })
})
