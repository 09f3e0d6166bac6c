// The datapath on the real kernel, end to end: a lab of pods (network namespaces on a bridge,
// each in its own cgroup below a test parent cgroup), haproxy sidecars as uid 1337 that forward
// to the original destination, an HTTP app, and `merbridge enable` attached to the test cgroup.
import assert from 'node:assert/strict'
import {chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {bpftool} from '../../src/bpf/bpftool.js'
import {encodeProcess, encodeU32} from '../../src/bpf/layout.js'
import {readMaps} from '../../src/bpf/maps.js'
import {writeSettings} from '../../src/datapath/settings.js'
import {patternSha256} from '../../src/lab/http-app.js'
import {redirectCounters} from '../../src/lab/istio-iptables.js'
import {APP_PORT, Lab, NODE, NODE_IP} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {EnableResult} from '../../src/commands/enable.js'
import type {DisableResult} from '../../src/datapath/disable.js'
import type {MapDump} from '../../src/datapath/dump-maps.js'
import type {StatusReport} from '../../src/datapath/status.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import {
  assertAllThroughSidecars,
  BIN,
  cli,
  eventually,
  kernelSkipReason,
  MATRIX_QUICK,
  parseJson,
  requestsDuring,
  ROOT,
  rowsOf,
  uniqueInstall,
  suiteTimeout,
  removeLab,
} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'python3', 'iptables-legacy'])
// written out, not taken from PROGRAMS: a program that is not loaded or attached must fail these
const ALL_PROGRAMS = [
  'mb_connect4',
  'mb_connect6',
  'mb_getpeername4',
  'mb_getpeername6',
  'mb_getsockopt',
  'mb_inbound_guard',
  'mb_msg_redirect',
  'mb_recvmsg4',
  'mb_recvmsg6',
  'mb_sendmsg4',
  'mb_sendmsg6',
  'mb_sockops',
  'mb_tc_inbound',
]

// about 70 s here; in the kernel matrix's emulated VM (time scale 8) 25 min of its 48
describe('datapath on the kernel', {skip, timeout: suiteTimeout(360_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const sidecars = new Map<string, LabProcess>()
  const url = (pod: string, path = '/whoami') => `http://${lab.pod(pod).ip}:${APP_PORT}${path}`
  const whoami = async (from: string, to: string, cgroup?: string) => {
    const r = await lab.clients.get(from, url(to), cgroup)
    assert.equal(r.status, 200, `request ${from} -> ${to}: ${r.error ?? ''}`)
    return JSON.parse(r.body!) as {remoteAddress: string}
  }
  /** Log lines a sidecar printed since `mark` characters, once there are `want` (haproxy logs a connection once its upstream is connected). */
  const logSince = async (pod: string, mark: number, want = 1) => {
    const p = sidecars.get(pod)!
    await p.waitFor(() => parseSidecarLog(p.stdout.slice(mark)).length >= want, `${want} connection log line(s) from ${pod}'s sidecar`)
    return parseSidecarLog(p.stdout.slice(mark))
  }
  const mark = (pod: string) => sidecars.get(pod)!.stdout.length
  /** A stream from a to b held open through `op`: still open when it ends, still flowing after, intact. */
  const streamThrough = async (what: string, op: () => Promise<void>, to = 'b') => {
    const stream = lab.clients.openStream('a', url(to, ''))
    const atStart = await stream.flowingPast(0, `before ${what}`)
    await op()
    // the connection cannot end before release: running means it was open through the whole operation
    assert.ok(stream.process.running, `the stream ended during ${what}: ${stream.process.stdout.slice(-300)}`)
    const atEnd = stream.bytes
    await stream.flowingPast(atEnd + 1024 * 1024, `after ${what}`)
    const got = await stream.release()
    assert.equal(got.code, 0, JSON.stringify(got))
    assert.ok(got.bytes! > atEnd && atEnd >= atStart, JSON.stringify({got, atStart, atEnd}))
    assert.equal(got.sha256, patternSha256(got.bytes!))
  }

  before(async () => {
    // a, b: meshed with sidecars; c: no sidecar; d: a pod merbridge was not told about
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'c', meshed: false},
      {name: 'd', meshed: false},
    ])
    for (const p of ['a', 'b']) sidecars.set(p, await lab.sidecars.start(p))
    for (const p of ['b', 'c']) await lab.clients.startApp(p)
  })

  after(() => removeLab(lab, install))

  const TEN_MIB = 10 * 1024 * 1024
  const EIGHT_MIB = 8 * 1024 * 1024
  let directPackets = 0
  /** Packets through pod b's interface while a 10 MiB body goes from b's app to a's. */
  const tenMiB = async () => {
    const before = await lab.packets('b')
    const r = await lab.clients.get('a', url('b', `/bytes?n=${TEN_MIB}`))
    assert.equal(r.bytes, TEN_MIB)
    assert.equal(r.sha256, patternSha256(TEN_MIB))
    return (await lab.packets('b')) - before
  }

  it('goes direct before merbridge is enabled (the lab has no iptables rules)', async (t) => {
    assert.equal((await whoami('a', 'b')).remoteAddress, lab.pod('a').ip)
    directPackets = await tenMiB()
    t.diagnostic(`10 MiB direct over TCP: ${directPackets} packets on pod b's eth0`)
  })

  it('enables on the test cgroup and registers both meshed pods', async () => {
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const out = parseJson<EnableResult>(r.stdout)
    assert.equal(out.cgroup, lab.cgroup)
    assert.deepEqual(out.pods.meshed.map((p: {name: string}) => p.name).sort(), ['a', 'b'])
    assert.deepEqual(out.pods.skipped.map((p: {name: string}) => p.name).sort(), ['c', 'd'])
    assert.equal((await readMaps.netnsPods(inst)).length, 2)
    // doctor's probe (throwaway maps) and enable's loads (the installation's) agree on what this kernel goes without
    const doctor = parseJson<PreflightResult>((await cli(['doctor', '--json'], install.env)).stdout)
    const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
    assert.deepEqual(
      doctor.checks
        .filter((c) => c.optional && c.status !== 'pass')
        .map((c) => c.id)
        .sort(),
      status.unavailable.map((u) => u.feature).sort(),
    )
  })

  it('sends the first request through both sidecars with the right original destination', async () => {
    const [ma, mb] = [mark('a'), mark('b')]
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6', 'the app sees its inbound sidecar')
    const outbound = await logSince('a', ma)
    assert.equal(outbound[0]!.backend, 'outbound_passthrough')
    assert.equal(outbound[0]!.originalDst, `${lab.pod('b').ip}:${APP_PORT}`)
    const inbound = await logSince('b', mb)
    assert.equal(inbound[0]!.backend, 'inbound_passthrough')
    assert.equal(inbound[0]!.originalDst, `${lab.pod('b').ip}:${APP_PORT}`)
    assert.equal(inbound[0]!.client.split(':')[0], lab.pod('a').ip)
  })

  it('is safe to enable again: reports it and reloads the pods', async () => {
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr)
    assert.equal(parseJson<EnableResult>(r.stdout).mode, 'resync')
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')
  })

  it('moves a 10 MiB body socket to socket, intact, without crossing TCP', async (t) => {
    const packets = await tenMiB()
    t.diagnostic(`10 MiB through both sidecars with merbridge: ${packets} packets on pod b's eth0 (direct: ${directPackets})`)
    // redirected, only handshakes, window updates and FINs remain
    assert.ok(packets < 100 && packets * 10 < directPackets, `${packets} packets crossed pod b's interface (direct: ${directPackets})`)
  })

  it('holds the connection sockets in sock_pair_map during traffic', async () => {
    const stream = lab.clients.openStream('a', url('b', ''))
    try {
      await stream.flowingPast(0, 'before reading the maps')
      // the stream is held open: every socket of its four legs is in the map now
      const sockets = await readMaps.sockets(inst)
      const has = (local: string, remote: string) =>
        sockets.some(
          (s) =>
            `${s.pair.localIp}:${s.pair.localPort}` === local &&
            s.pair.remoteIp === remote.split(':')[0] &&
            (remote.includes(':') ? String(s.pair.remotePort) === remote.split(':')[1] : true),
        )
      // the app's connection keeps the pod's address as its source, as REDIRECT would leave it
      assert.ok(has(`127.0.0.1:15001`, lab.pod('a').ip), 'the outbound sidecar end of the app connection')
      // a's sidecar calls b:8080 and b's capture hands it over: b's end is keyed at the port called
      // (where tc rewrote it to 15006 too), so each end finds the other
      assert.ok(has(`${lab.pod('b').ip}:${APP_PORT}`, lab.pod('a').ip), "pod b's inbound sidecar end")
      assert.ok(
        sockets.some((s) => s.pair.localIp === lab.pod('a').ip && s.pair.remoteIp === lab.pod('b').ip && s.pair.remotePort === APP_PORT),
        "pod a's sidecar end",
      )
      const originals = await readMaps.originals(inst)
      assert.ok(originals.some((o) => o.origin.ip === lab.pod('b').ip && o.origin.port === APP_PORT))
    } finally {
      const got = await stream.release()
      assert.equal(got.sha256, patternSha256(got.bytes ?? -1), JSON.stringify(got))
    }
  })

  it("process_ip names each sidecar's pod, and a record that says otherwise is corrected at its next connect", async () => {
    await whoami('a', 'b')
    const [a, b] = [lab.pod('a').ip, lab.pod('b').ip]
    const mine = (await readMaps.processes(inst)).find((p) => p.entry.podIp === a)
    assert.ok(mine, "a's sidecar recorded at its connect")
    // the connect program writes only a record that differs: make it differ
    await bpftool.batch([bpftool.mapUpdateLine(inst.map('process_ip'), encodeU32(mine.pid), encodeProcess({podIp: b, netns: 1n}))])
    await whoami('a', 'b')
    const now = (await readMaps.processes(inst)).find((p) => p.pid === mine.pid)
    assert.deepEqual(now?.entry, mine.entry)
  })

  it('dump-maps shows the live connections with their addresses, original destinations and pods', async () => {
    const stream = lab.clients.openStream('a', url('b', ''))
    try {
      const [a, b] = [lab.pod('a').ip, lab.pod('b').ip]
      await stream.flowingPast(0, 'before dumping the maps')
      const r = await cli(['dump-maps', '--bpffs', install.bpffs, '--json'], install.env)
      assert.equal(r.code, 0, r.stderr)
      const maps = parseJson<{maps: MapDump[]}>(r.stdout).maps
      const sockets = rowsOf(maps, 'sock_pair_map')
      const inbound = sockets.find((x) => x.local.ip === b && x.local.port === APP_PORT && x.remote.ip === a)
      assert.ok(inbound, JSON.stringify(sockets))
      assert.equal(inbound.local.pod, 'lab/b')
      assert.equal(inbound.remote.pod, 'lab/a')
      // each end is keyed in its own namespace: b's, as registered
      assert.equal(inbound.netns, rowsOf(maps, 'netns_pod_ips').find((x) => x.ip === b)?.netns)
      const loop = sockets.find((x) => x.local.ip === '127.0.0.1' && x.local.port === 15001)
      assert.ok(loop, `no loopback leg to 15001 in ${JSON.stringify(sockets)}`)
      assert.match(loop.netns, /^[1-9]\d*$/, 'loopback legs carry the netns cookie')
      const orig = rowsOf(maps, 'pair_original_dst').filter((x) => x.originalDst.ip === b && x.originalDst.port === APP_PORT)
      assert.ok(
        orig.some((x) => x.flags.includes('outbound') && x.process === 'node'),
        JSON.stringify(orig),
      )
      // a's sidecar connected to b:8080 itself: b's capture, not a rewrite at a, took it to b's sidecar
      assert.ok(!orig.some((x) => x.flags.includes('inbound')), JSON.stringify(orig))
      assert.ok(rowsOf(maps, 'process_ip').some((x) => x.process === 'haproxy' && x.pod === 'lab/a' && x.podIp === a))
      const localPods = rowsOf(maps, 'local_pod_ips')
      assert.deepEqual(localPods.map((x) => x.pod).sort(), ['lab/a', 'lab/b'])
      assert.equal(localPods[0]!.rules.outboundCidrs, '*')
      assert.deepEqual(
        rowsOf(maps, 'netns_pod_ips')
          .map((x) => x.pod)
          .sort(),
        ['lab/a', 'lab/b'],
      )
      assert.equal(rowsOf(maps, 'settings')[0]!.outboundPort, 15001)

      const only = parseJson<{maps: MapDump[]}>(
        (
          await cli(
            ['dump-maps', 'pair_original_dst', 'sock_pair_map', '--pod', 'a', '--limit', '1', '--json', '--bpffs', install.bpffs],
            install.env,
          )
        ).stdout,
      ).maps
      assert.deepEqual(
        only.map((m) => m.map),
        ['pair_original_dst', 'sock_pair_map'],
      )
      // one row of pod a from each map; sock_pair_map has more of a's, so the limit did cut
      for (const m of only) {
        assert.equal(m.rows.length, 1, `${m.map}: ${JSON.stringify(m.rows)}`)
        assert.match(JSON.stringify(m.rows[0]), /"lab\/a"/)
      }
      const socketsOfA = sockets.filter((x) => x.local.pod === 'lab/a' || x.remote.pod === 'lab/a').length
      assert.ok(socketsOfA > 1, `sock_pair_map has ${socketsOfA} socket(s) of pod a without --limit: the limit would prove nothing`)
      const text = await cli(['dump-maps', 'pair_original_dst', '--bpffs', install.bpffs], install.env)
      assert.match(text.stdout, new RegExp(`${b.replaceAll('.', '\\.')}:${APP_PORT} lab/b`))

      // a reader that has gone before the output (`| head`): a quiet exit 0, with or without --json
      for (const args of [['--json'], []]) {
        const child = execa(process.execPath, [BIN, 'dump-maps', '--bpffs', install.bpffs, ...args], {
          env: install.env,
          reject: false,
          stdin: 'ignore',
        })
        child.stdout.destroy()
        const r = await child
        assert.equal(r.exitCode, 0, `dump-maps ${args.join(' ')} into a closed pipe: ${r.stderr}`)
        assert.equal(r.stderr, '')
      }
    } finally {
      const got = await stream.release()
      assert.equal(got.sha256, patternSha256(got.bytes ?? -1), JSON.stringify(got))
    }
  })

  it('status is healthy and its counters rise with traffic', async () => {
    const before = await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)
    assert.equal(before.code, 0, before.stdout)
    const b0 = parseJson<StatusReport>(before.stdout)
    assert.equal(b0.verdict, 'healthy')
    assert.deepEqual(b0.programs.map((p) => p.name).sort(), ALL_PROGRAMS)
    for (const p of b0.programs) {
      assert.ok(p.id !== undefined && p.id > 0, JSON.stringify(p))
      // the cgroup programs must be attached; sk_msg (on a sockhash) and tc (per pod) have no one place to ask
      assert.equal(p.attached, p.type === 'sk_msg' || p.type === 'sched_cls' ? undefined : true, JSON.stringify(p))
    }
    assert.equal(b0.maps.find((m) => m.name === 'local_pod_ips')?.entries, 2)
    for (let i = 0; i < 3; i++) await whoami('a', 'b')
    const b1 = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
    const [c0, c1] = [b0.counters, b1.counters]
    assert.ok(c0 && c1, 'status reports the counters')
    assert.ok(c1.connOutbound >= c0.connOutbound + 3)
    // b is registered: a's sidecar connects to b:8080 and b's own capture hands it over
    assert.equal(c1.connInbound, c0.connInbound)
    assert.ok(c1.inboundAssigned + c1.inboundRewritten >= c0.inboundAssigned + c0.inboundRewritten + 3)
    assert.ok(c1.msgRedirected > c0.msgRedirected)
    const text = await cli(['status', '--bpffs', install.bpffs], install.env)
    assert.match(text.stdout, /✔ merbridge is enabled and healthy/)
    assert.match(text.stdout, /lab\/a 10\.77\.0\.2/)
  })

  it('status reads a healthy node with one bpftool process, and counts entries as bpftool sees them', async () => {
    const stream = lab.clients.openStream('a', url('b', ''))
    const tmp = mkdtempSync(join(tmpdir(), 'mb-status-'))
    const calls = join(tmp, 'calls')
    const counting = join(tmp, 'counting-bpftool')
    writeFileSync(counting, `#!/bin/sh\necho "$*" >> "${calls}"\nexec bpftool "$@"\n`)
    chmodSync(counting, 0o755)
    try {
      await stream.flowingPast(0, 'before status')
      const r = await cli(['status', '--bpffs', install.bpffs, '--json'], {...install.env, MERBRIDGE_BPFTOOL: counting})
      const report = parseJson<StatusReport>(r.stdout)
      assert.equal(report.verdict, 'healthy', r.stdout)
      // one batch for programs, maps, counters, settings and attachments; counts come from the
      // pinned iterators, and where this kernel lacks one, from a dump of each map it would count
      const without = new Set(report.unavailable.map((u) => u.feature))
      const dumps = report.maps
        .filter((m) =>
          m.type === 'sockhash'
            ? without.has('sockhash-size')
            : without.has('map-element-count') && !['array', 'percpu_array', 'array_of_maps', 'sk_storage'].includes(m.type ?? ''),
        )
        .map((m) => `map dump pinned ${install.installation().map(m.name)} -j`)
      assert.deepEqual(readFileSync(calls, 'utf8').trim().split('\n').sort(), ['-j batch file -', ...dumps].sort())
      // the same counts as a dump of each map (read again if a connection of an earlier test was
      // still closing between the two reads)
      const names = ['sock_pair_map', 'local_pod_ips', 'netns_pod_ips', 'process_ip'] as const
      let counts: {status: (number | undefined)[]; dumped: number[]} = {status: [], dumped: []}
      for (let attempt = 0; attempt < 5; attempt++) {
        const again = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
        const dumped = await Promise.all(names.map(async (n) => (await bpftool.mapDumpBytes(install.installation().map(n))).length))
        counts = {status: names.map((n) => again.maps.find((m) => m.name === n)?.entries), dumped}
        if (counts.status.every((c, i) => c === dumped[i])) break
      }
      assert.ok((counts.dumped[0] ?? 0) > 0, 'the held stream has sockets in sock_pair_map')
      assert.deepEqual(counts.status, counts.dumped, names.join(', '))
    } finally {
      rmSync(tmp, {recursive: true, force: true})
      const got = await stream.release()
      assert.equal(got.sha256, patternSha256(got.bytes ?? -1), JSON.stringify(got))
    }
  })

  it("leaves a pod without a sidecar alone, and sends traffic from outside the mesh through the destination's inbound sidecar, as Istio does", async () => {
    // a -> c: through a's outbound sidecar, but c has no inbound sidecar to send it to
    const mc = mark('a')
    assert.equal((await whoami('a', 'c')).remoteAddress, lab.pod('a').ip)
    assert.equal((await logSince('a', mc))[0]?.originalDst, `${lab.pod('c').ip}:${APP_PORT}`)
    // c's own process and a node process: b's PREROUTING would send them to its sidecar; so does merbridge
    for (const [from, source] of [
      ['c', lab.pod('c').ip],
      [NODE, NODE_IP],
    ] as const) {
      const mb = mark('b')
      assert.equal((await whoami(from, 'b')).remoteAddress, '127.0.0.6', `${from} -> b passes b's inbound sidecar`)
      const inbound = (await logSince('b', mb))[0]!
      assert.equal(inbound.client.split(':')[0], source)
      assert.equal(inbound.originalDst, `${lab.pod('b').ip}:${APP_PORT}`, "b's sidecar was told the original destination")
    }
  })

  it('intercepts an app that connected before its sidecar listened, once the sidecar is up', async () => {
    // d is not registered: before its sidecar listens its connections leave it directly (b's
    // inbound sidecar takes them, as b's PREROUTING would)...
    const mb = mark('b')
    assert.equal((await whoami('d', 'b')).remoteAddress, '127.0.0.6')
    assert.equal((await logSince('b', mb))[0]?.client.split(':')[0], lab.pod('d').ip, "straight from d's app, no sidecar of d on the way")
    // a listener on 15001 that is not the proxy user's (an app's, ztunnel's in an ambient pod) is no sidecar
    const squatter = await lab.clients.startApp('d', 15001)
    try {
      const ms = mark('b')
      assert.equal((await whoami('d', 'b')).remoteAddress, '127.0.0.6', "b's inbound sidecar, not d's root-owned listener, answered")
      assert.equal((await logSince('b', ms))[0]?.client.split(':')[0], lab.pod('d').ip, 'still straight from d')
    } finally {
      await squatter.stop()
    }
    sidecars.set('d', await lab.sidecars.start('d'))
    // ...and the same app's next connection goes to the sidecar, with no "not in mesh" remembered
    const r = await lab.clients.get('d', url('b'))
    assert.equal(r.status, 200)
    assert.equal((await logSince('d', 0))[0]?.originalDst, `${lab.pod('b').ip}:${APP_PORT}`)
  })

  it("refuses a registered pod's app while its sidecar is down, like iptables, and recovers", async () => {
    await sidecars.get('a')!.stop()
    const refused = await lab.clients.get('a', url('b'))
    assert.equal(refused.error, 'ECONNREFUSED')
    sidecars.set('a', await lab.sidecars.start('a'))
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')
  })

  it('leaves other socket options and large getsockopt results untouched', async () => {
    const script = join(ROOT, 'test', 'fixtures', 'getsockopt.py')
    const inPod = await lab.exec('a', 'python3', [script, lab.pod('b').ip, String(APP_PORT)])
    assert.equal(inPod.code, 0, inPod.stderr)
    const opts = parseJson<{so_type: number; tcp_info_len: number; original_dst: number}>(inPod.stdout)
    assert.equal(opts.so_type, 1)
    assert.ok(opts.tcp_info_len > 200, `TCP_INFO came back with ${opts.tcp_info_len} bytes`)
    // the kernel's own answer for a socket merbridge did not rewrite: ENOENT from conntrack, or
    // ENOPROTOOPT where no module registered the option (a kernel that loaded no netfilter yet)
    const conntrack = existsSync('/proc/sys/net/netfilter/nf_conntrack_max')
    assert.equal(opts.original_dst, conntrack ? 2 : 92, "the kernel's own error for a socket merbridge did not rewrite")

    // iptables-legacy reads its table with getsockopt: a result far larger than a page
    const ns = lab.pod('a').netns
    const rules = Array.from(
      {length: 150},
      (_, i) => `-A INPUT -p tcp --dport ${20000 + i} -m comment --comment "merbridge-large-getsockopt-check-${i}" -j ACCEPT`,
    )
    await execa('ip', ['netns', 'exec', ns, 'iptables-legacy-restore'], {input: `*filter\n${rules.join('\n')}\nCOMMIT\n`})
    try {
      const inside = await lab.exec('a', 'iptables-legacy-save', ['-t', 'filter'])
      const outside = await execa('ip', ['netns', 'exec', ns, 'iptables-legacy-save', '-t', 'filter'])
      const strip = (s: string) =>
        s
          .trim()
          .split('\n')
          .filter((l) => !l.startsWith('#'))
          .join('\n')
      assert.equal((inside.stdout.match(/merbridge-large-getsockopt-check/g) ?? []).length, 150)
      assert.equal(strip(inside.stdout), strip(outside.stdout))
    } finally {
      await execa('ip', ['netns', 'exec', ns, 'iptables-legacy', '-F', 'INPUT'], {reject: false})
    }
  })

  it("takes over the local hops from Istio's iptables rules, and every request still passes both sidecars", async () => {
    for (const p of ['a', 'b']) await lab.iptables.install(p)
    try {
      const [ma, mb] = [mark('a'), mark('b')]
      for (let i = 0; i < 3; i++) assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')
      assert.equal((await logSince('a', ma, 3)).length, 3)
      assert.ok((await logSince('b', mb, 3)).every((l) => l.originalDst === `${lab.pod('b').ip}:${APP_PORT}`))
      // the rule is there (undefined would mean it is not) and caught nothing: eBPF took the hop first
      for (const p of ['a', 'b']) assert.equal(redirectCounters(await lab.iptables.save(p)).ISTIO_REDIRECT, 0, `outbound REDIRECT in ${p}`)
    } finally {
      for (const p of ['a', 'b']) await lab.iptables.remove(p)
    }
  })

  it('counts what it did', async () => {
    const c = await readMaps.counters(inst)
    // handed over untouched, or (a kernel before 6.6, the sidecar's listener reuseport) by rewriting
    assert.ok(c.connOutbound > 0 && c.connUnregistered > 0 && c.inboundAssigned + c.inboundRewritten > 0, JSON.stringify(c))
    assert.equal(c.inboundNoListener, 0, JSON.stringify(c))
    assert.ok(c.msgRedirected > 0 && c.bytesRedirected > 10 * 1024 * 1024, JSON.stringify(c))
    assert.ok(c.getsockoptAnswered >= c.connInbound, JSON.stringify(c))
  })

  it('replaces changed programs in place, under load: no request fails or skips a sidecar, a stream keeps its bytes', async () => {
    const before = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout).programs.map(
      (p) => p.id,
    )
    const mapId = async () => (await bpftool.mapShowPinned(inst.map('sock_pair_map')))?.id
    const sockhash = await mapId()
    let seen = {peers: [] as string[], outbound: 0}
    await streamThrough('the replacement', async () => {
      seen = await requestsDuring(lab, 'a', url('b'), async () => {
        // --rebuild stands in for changed sources: the installation is replaced, not resynced
        const r = await cli(
          ['enable', '--rebuild', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
          install.env,
        )
        assert.equal(r.code, 0, r.stderr + r.stdout)
        assert.equal(parseJson<EnableResult>(r.stdout).mode, 'replace')
        assert.deepEqual(parseJson<EnableResult>(r.stdout).replaced, {how: 'in place'})
      })
    })
    assertAllThroughSidecars(seen)
    assert.equal(await mapId(), sockhash, "the maps were kept: the new programs took the old ones' places on them")
    assert.ok(!existsSync(join(install.bpffs, 'next')), 'no staged pins left')
    const after = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout).programs.map(
      (p) => p.id,
    )
    assert.equal(after.length, ALL_PROGRAMS.length)
    for (const id of after) assert.ok(id !== undefined && !before.includes(id), `program ${id} is new (before: ${before.join(', ')})`)
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')
  })

  it("replaces across a change of the maps' layout on new maps, under load: every new connection passes both sidecars, a stream keeps its bytes", async () => {
    const mapId = async () => (await bpftool.mapShowPinned(inst.map('sock_pair_map')))?.id
    const capacity = async () => (await bpftool.mapShowPinned(inst.map('pair_original_dst')))?.max_entries
    const ready = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], install.env)
    assert.equal(ready.code, 0, ready.stderr)
    const before = await capacity()
    // another capacity changes the connection maps' definitions, as a new version's structs would;
    // the way back, from a cached build, only outside the kernel matrix (under emulation: two minutes)
    for (const size of MATRIX_QUICK ? [70_000] : [70_000, before ?? 65_535]) {
      const sockhash = await mapId()
      let seen = {peers: [] as string[], outbound: 0}
      await streamThrough(`the replacement on maps of ${size} entries`, async () => {
        seen = await requestsDuring(lab, 'a', url('b'), async () => {
          const r = await cli(
            [
              'enable',
              '--max-connections',
              String(size),
              '--cgroup',
              lab.cgroup,
              '--bpffs',
              install.bpffs,
              '--pods-file',
              lab.writePodList(),
              '--json',
            ],
            install.env,
          )
          assert.equal(r.code, 0, r.stderr + r.stdout)
          const replaced = parseJson<EnableResult>(r.stdout).replaced
          assert.equal(replaced?.how, 'new maps', JSON.stringify(replaced))
          assert.match(replaced.why ?? '', /max_entries \d+ -> \d+/)
        })
      })
      assertAllThroughSidecars(seen)
      assert.notEqual(await mapId(), sockhash, 'new maps')
      assert.equal(await capacity(), size)
      assert.ok(!existsSync(join(install.bpffs, 'next')), 'no staged pins left')
      const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
      assert.equal(status.verdict, 'healthy', status.problems.join('; '))
      // only this installation's programs: the previous ones are detached
      const attached = (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout) as {id: number}[])
        .map((p) => p.id)
        .sort()
      assert.deepEqual(
        attached,
        status.programs
          .filter((p) => p.name !== 'mb_msg_redirect' && p.name !== 'mb_tc_inbound')
          .map((p) => p.id)
          .sort(),
      )
    }
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')
  })

  it('status says which program is not attached, with a distinct exit code', async () => {
    const id = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout).programs.find(
      (p) => p.name === 'mb_connect4',
    )?.id
    assert.ok(id, 'mb_connect4 has an id')
    await execa('bpftool', ['cgroup', 'detach', lab.cgroup, 'connect4', 'id', String(id)])
    try {
      const r = await cli(['status', '--bpffs', install.bpffs], install.env)
      assert.equal(r.code, 4)
      assert.match(r.stdout, /program mb_connect4 is pinned but not attached/)
    } finally {
      await execa('bpftool', ['cgroup', 'attach', lab.cgroup, 'connect4', 'pinned', `${install.bpffs}/progs/mb_connect4`, 'multi'])
    }
    assert.equal((await cli(['status', '--bpffs', install.bpffs], install.env)).code, 0)
  })

  it('repairs, on the next enable, a node left draining by a killed disable or with a program detached', async () => {
    const enable = async () => {
      const r = await cli(
        ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
        install.env,
      )
      assert.equal(r.code, 0, r.stderr)
      return parseJson<EnableResult>(r.stdout)
    }
    // what a disable killed after its first step leaves: everything in place, draining
    const settings = await readMaps.settings(inst)
    assert.ok(settings)
    await writeSettings(inst, {...settings, draining: true})
    const status = await cli(['status', '--bpffs', install.bpffs], install.env)
    assert.equal(status.code, 4, status.stdout)
    assert.match(status.stdout, /the datapath is draining: nothing is intercepted \(a disable was interrupted\)/)
    assert.equal((await whoami('a', 'b')).remoteAddress, lab.pod('a').ip, 'nothing intercepted while draining')
    const drained = await enable()
    assert.equal(drained.mode, 'replace')
    assert.match(drained.repaired ?? '', /draining/)
    assert.equal((await whoami('a', 'b')).remoteAddress, '127.0.0.6')

    const id = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout).programs.find(
      (p) => p.name === 'mb_connect4',
    )?.id
    await execa('bpftool', ['cgroup', 'detach', lab.cgroup, 'connect4', 'id', String(id)])
    const detached = await enable()
    assert.equal(detached.mode, 'replace')
    assert.match(detached.repaired ?? '', /mb_connect4 is pinned but not attached/)
    assert.equal((await cli(['status', '--bpffs', install.bpffs], install.env)).code, 0)
    assert.equal(
      parseJson<EnableResult>(
        (await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'], install.env))
          .stdout,
      ).mode,
      'resync',
      'a healthy node is only resynced',
    )
  })

  it('keeps a long stream whole across disable, then restores the direct path and leaves nothing', async () => {
    /** Which of these programs the kernel still holds (freed an RCU grace period after the last reference goes). */
    const loadedOf = async (ids: number[]) =>
      (await Promise.all(ids.map((id) => execa('bpftool', ['prog', 'show', 'id', String(id)], {reject: false}))))
        .filter((x) => x.exitCode === 0)
        .map((x) => / name (\w+)/.exec(x.stdout)?.[1])
    const disableNow = async () => {
      const d = await cli(['disable', '--bpffs', install.bpffs, '--json'], install.env)
      assert.equal(d.code, 0, d.stderr)
      return parseJson<DisableResult>(d.stdout)
    }
    // without the socket map iterator (bpf/optional.ts) no socket can be told apart: fallbacks.test.ts forces that path on every kernel
    const withoutIterator = parseJson<StatusReport>(
      (await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout,
    ).unavailable.some((u) => u.feature === 'sockmap-iterator')
    let kept: number[] = []
    // to c (no sidecar): a stream that no inbound port rewriting carries, which ends with tc where
    // a kernel rewrites ports (docs/datapath.md); its legs through a's sidecar are tracked
    await streamThrough(
      'disable',
      async () => {
        const r = await disableNow()
        const detached = r.detached
        assert.deepEqual([...new Set(detached.map((x) => x.program))].sort(), ALL_PROGRAMS)
        // inbound capture came off both registered pods' interfaces
        assert.deepEqual(
          detached.filter((x) => x.program === 'mb_tc_inbound').map((x) => x.cgroup.endsWith(' dev eth0')),
          [true, true],
        )
        const ids = [...new Set(detached.map((x) => x.id))]
        const counts = JSON.stringify({released: r.released, unreleased: r.unreleased, unavailable: r.unavailable})
        if (withoutIterator) {
          // every tracked socket stays, the stream's legs among them, and holds the sk_msg program
          assert.ok(r.released === 0 && r.unreleased >= 2 && r.unavailable['sockmap-iterator'], counts)
          await eventually(
            'every program but the sk_msg one freed while the stream flows',
            async () => (await loadedOf(ids)).join() === 'mb_msg_redirect',
          )
          kept = ids
          return
        }
        // the stream's sockets left the sockhash (its legs: app, sidecar), so while it flows on over
        // TCP nothing of merbridge stays in the kernel: unpinning alone would leave their psocks
        // holding the sk_msg program, and it the maps, for as long as the connection lived
        assert.ok(r.released >= 2 && r.unreleased === 0, counts)
        await eventually('every program of the installation freed while the stream flows', async () => (await loadedOf(ids)).length === 0)
      },
      'c',
    )
    await eventually('the sk_msg program freed once the tracked connections closed', async () => (await loadedOf(kept)).length === 0)

    // a reader that stops reading with 8 MiB moved to its socket: deleting that socket from the
    // sockhash would drop the data with its psock, so disable leaves it there, and says so
    const e = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(e.code, 0, e.stderr)
    const gate = join(lab.tmp, 'stalled-reader-go')
    const stalled = lab.spawn('a', 'stalled reader', 'python3', [
      join(ROOT, 'test', 'fixtures', 'stalled_reader.py'),
      lab.pod('c').ip,
      String(APP_PORT),
      String(EIGHT_MIB),
      gate,
    ])
    await stalled.waitFor(/^waiting/m, 'the stalled reader connected')
    const r = await disableNow()
    if (withoutIterator) assert.ok(r.unreleased >= 1, JSON.stringify({released: r.released, unreleased: r.unreleased}))
    else assert.equal(r.unreleased, 1, JSON.stringify({released: r.released, unreleased: r.unreleased}))
    const ids = [...new Set(r.detached.map((x) => x.id))]
    await eventually('the detached programs freed but one', async () => (await loadedOf(ids)).length === 1)
    assert.deepEqual(await loadedOf(ids), ['mb_msg_redirect'], 'only the sk_msg program, held by the unreleased socket')
    writeFileSync(gate, '')
    assert.equal(await stalled.exited, 0, stalled.stdout + stalled.stderr)
    assert.deepEqual(JSON.parse(stalled.stdout.trim().split('\n').at(-1)!), {bytes: EIGHT_MIB, firstBad: -1}, 'every byte, in order')
    await eventually('the last program freed once the reader closed', async () => (await loadedOf(ids)).length === 0)

    assert.equal((await whoami('a', 'b')).remoteAddress, lab.pod('a').ip, 'direct again')
    assert.ok(!existsSync(install.bpffs), 'no pins')
    assert.ok(!existsSync(inst.stateFile), 'no state file')
    const tree = JSON.parse((await execa('bpftool', ['cgroup', 'tree', '-j'])).stdout) as {cgroup: string}[]
    assert.ok(!tree.some((t) => t.cgroup.startsWith(lab.cgroup)), 'no attachment')

    const again = await cli(['disable', '--bpffs', install.bpffs], install.env)
    assert.equal(again.code, 0)
    assert.match(again.stdout, /nothing to do/)
    const status = await cli(['status', '--bpffs', install.bpffs], install.env)
    assert.equal(status.code, 3)
    assert.match(status.stdout, /not enabled/)
  })
})
