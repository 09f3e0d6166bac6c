// Every optional kernel feature (src/bpf/optional.ts) turned off with MERBRIDGE_WITHOUT, so that
// the paths a kernel without them takes run on every kernel: doctor says what each costs, enable
// records it, status counts by dumping (never a map the kernel cannot dump), dump-maps and sync
// work, and disable says what it could not release.
import assert from 'node:assert/strict'
import {existsSync} from 'node:fs'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {bpftool} from '../../src/bpf/bpftool.js'
import {OPTIONAL_FEATURE_NAMES} from '../../src/bpf/optional.js'
import type {DisableResult} from '../../src/datapath/disable.js'
import type {EnableResult} from '../../src/commands/enable.js'
import type {MapDump} from '../../src/datapath/dump-maps.js'
import type {StatusReport} from '../../src/datapath/status.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import {patternSha256} from '../../src/lab/http-app.js'
import {APP_PORT, Lab, NODE, NODE_IP} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {
  assertAllThroughSidecars,
  cli,
  eventually,
  kernelSkipReason,
  parseJson,
  requestsDuring,
  rowsOf,
  uniqueInstall,
  suiteTimeout,
  removeLab,
} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'python3'])
const WITHOUT = {MERBRIDGE_WITHOUT: OPTIONAL_FEATURE_NAMES.join(',')}

describe('without the optional kernel features', {skip, timeout: suiteTimeout(240_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const env = {...install.env, ...WITHOUT}
  const url = (pod: string, path = '/whoami') => `http://${lab.pod(pod).ip}:${APP_PORT}${path}`
  const sidecars = new Map<string, LabProcess>()
  const status = async () => parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], env)).stdout)

  before(async () => {
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'c', meshed: false},
    ])
    for (const p of ['a', 'b']) sidecars.set(p, await lab.sidecars.start(p))
    for (const p of ['b', 'c']) await lab.clients.startApp(p)
  })

  after(() => removeLab(lab, install))

  it('refuses an unknown feature name in one line, before anything is touched', async () => {
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], {
      ...install.env,
      MERBRIDGE_WITHOUT: 'sockmap-iterators',
    })
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(r.stderr, /MERBRIDGE_WITHOUT names unknown feature\(s\): sockmap-iterators/)
    assert.ok(!existsSync(install.bpffs), 'nothing pinned')
  })

  it('doctor lists each optional feature apart, with what going without it costs, and still passes', async () => {
    const r = await cli(['doctor', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--json'], env)
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const checks = parseJson<PreflightResult>(r.stdout).checks
    for (const feature of OPTIONAL_FEATURE_NAMES) {
      const c = checks.find((k) => k.id === feature)
      assert.ok(c?.optional && c.status === 'warn' && !c.required, JSON.stringify(c))
      assert.match(c.detail, /turned off by MERBRIDGE_WITHOUT/)
      assert.match(c.remedy ?? '', /merbridge works without it/)
    }
    assert.equal(checks.find((k) => k.id === 'datapath-load')?.status, 'pass', 'the datapath loaded for the probe')
    const text = await cli(['doctor', '--cgroup', lab.cgroup, '--bpffs', install.bpffs], env)
    assert.match(text.stdout, /Optional kernel features\n! map element counts +unavailable \(turned off by MERBRIDGE_WITHOUT\)/)
  })

  it('enables, intercepts, and records what it goes without', async () => {
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'], env)
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const got = await lab.clients.get('a', url('b'))
    assert.equal((JSON.parse(got.body ?? '{}') as {remoteAddress?: string}).remoteAddress, '127.0.0.6', 'through both sidecars')
    assert.deepEqual(
      (await inst.readState())?.unavailable,
      Object.fromEntries(OPTIONAL_FEATURE_NAMES.map((f) => [f, 'turned off by MERBRIDGE_WITHOUT'])),
    )
    assert.ok(!existsSync(inst.counterPins.maps) && !existsSync(inst.counterPins.sockhash), 'no counting iterator pinned')
  })

  it('sends connections from elsewhere to the inbound sidecar by rewriting their port, and the client sees the port it called', async () => {
    const before = (await status()).counters?.inboundRewritten ?? 0
    for (const [from, source] of [
      ['c', lab.pod('c').ip],
      [NODE, NODE_IP],
    ] as const) {
      const mark = sidecars.get('b')!.stdout.length
      const r = await lab.clients.get(from, url('b'))
      assert.equal(r.status, 200, `${from} -> b: ${r.error ?? ''}`)
      const seen = JSON.parse(r.body ?? '{}') as {remoteAddress?: string; localPort?: number}
      assert.equal(seen.remoteAddress, '127.0.0.6', `${from} -> b passes b's inbound sidecar`)
      const sidecar = sidecars.get('b')!
      await sidecar.waitFor(() => parseSidecarLog(sidecar.stdout.slice(mark)).length > 0, "b's sidecar logs the connection")
      const inbound = parseSidecarLog(sidecar.stdout.slice(mark))[0]!
      assert.equal(inbound.client.split(':')[0], source)
      assert.equal(inbound.originalDst, `${lab.pod('b').ip}:${APP_PORT}`, 'getsockopt told the sidecar the port the client called')
    }
    // (a reply leaving from the inbound port would never complete the client's handshake)
    assert.ok(((await status()).counters?.inboundRewritten ?? 0) >= before + 2, 'counted as rewritten')
  })

  it('status is healthy, counts entries by dumping, says what it goes without, and never dumps socket storage', async () => {
    const stream = lab.clients.openStream('a', url('b', ''))
    try {
      await stream.flowingPast(0, 'before status')
      const report = await status()
      assert.equal(report.verdict, 'healthy', JSON.stringify(report.problems))
      assert.deepEqual(report.unavailable.map((u) => u.feature).sort(), [...OPTIONAL_FEATURE_NAMES].sort())
      for (const m of report.maps) {
        if (m.type === 'sk_storage') assert.equal(m.entries, undefined, `${m.name}: socket storage cannot be counted`)
        else if (m.type?.includes('hash')) assert.equal(typeof m.entries, 'number', `${m.name} counted`)
      }
      const sockets = report.maps.find((m) => m.name === 'sock_pair_map')?.entries ?? 0
      assert.ok(sockets >= 4, `the stream's legs are counted: ${sockets}`)
      const text = await cli(['status', '--bpffs', install.bpffs], env)
      assert.equal(text.code, 0, text.stdout)
      assert.match(
        text.stdout,
        /without socket map size \(turned off by MERBRIDGE_WITHOUT\): status counts tracked sockets by dumping sock_pair_map/,
      )
      assert.match(text.stdout, /without map element counts \(turned off by MERBRIDGE_WITHOUT\)/)

      const dump = await cli(['dump-maps', 'sock_pair_map', '--bpffs', install.bpffs, '--json'], env)
      assert.equal(dump.code, 0, dump.stderr)
      assert.ok(rowsOf(parseJson<{maps: MapDump[]}>(dump.stdout).maps, 'sock_pair_map').length >= 4)
      const sync = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], env)
      assert.equal(sync.code, 0, sync.stdout + sync.stderr)
    } finally {
      const got = await stream.release()
      assert.equal(got.sha256, patternSha256(got.bytes ?? -1), JSON.stringify(got))
    }
  })

  it('keeps a stream whose port tc rewrites through a replacement on new maps, and every request meanwhile passes both sidecars', async () => {
    const stream = lab.clients.openStream('a', url('b', ''))
    const atStart = await stream.flowingPast(0, 'before the replacement')
    const before = await status()
    assert.ok((before.counters?.inboundRewritten ?? 0) > 0, 'the stream was handed over by rewriting (the case under test)')
    let replaced: EnableResult['replaced']
    const seen = await requestsDuring(lab, 'a', url('b'), async () => {
      // another capacity: maps of their own, the old rewriting state linked for the new programs
      const r = await cli(
        [
          'enable',
          '--max-connections',
          '70000',
          '--cgroup',
          lab.cgroup,
          '--bpffs',
          install.bpffs,
          '--pods-file',
          lab.writePodList(),
          '--json',
        ],
        env,
      )
      assert.equal(r.code, 0, r.stderr + r.stdout)
      replaced = parseJson<EnableResult>(r.stdout).replaced
    })
    assert.equal(replaced?.how, 'new maps', JSON.stringify(replaced))
    assertAllThroughSidecars(seen)
    // entries counted by dumping: the old rewriting state's slot is no map filling up
    const after = await status()
    assert.equal(after.verdict, 'healthy', after.problems.join('; '))
    assert.ok(stream.process.running, 'the stream survived the replacement')
    await stream.flowingPast(stream.bytes + 1024 * 1024, 'after the replacement')
    const got = await stream.release()
    assert.ok(got.bytes! > atStart)
    assert.equal(got.sha256, patternSha256(got.bytes!), 'every byte, in order')
  })

  it('disable keeps a stream whole, says how many sockets it could not release, and the kernel frees the rest when they close', async () => {
    // to c (no sidecar): no inbound port rewriting carries it, which disable would end (docs/datapath.md)
    const stream = lab.clients.openStream('a', url('c', ''))
    const atStart = await stream.flowingPast(0, 'before disable')
    const progIds = (await status()).programs.flatMap((p) => (p.id === undefined ? [] : [p.id]))
    const r = await cli(['disable', '--bpffs', install.bpffs, '--json'], env)
    assert.equal(r.code, 0, r.stderr)
    const result = parseJson<DisableResult>(r.stdout)
    assert.ok(result.released === 0 && result.unreleased >= 2, JSON.stringify(result))
    assert.equal(result.unavailable['sockmap-iterator'], 'turned off by MERBRIDGE_WITHOUT')
    assert.ok(!existsSync(install.bpffs), 'no pins')
    const loaded = async () =>
      (await Promise.all(progIds.map((id) => execa('bpftool', ['prog', 'show', 'id', String(id)], {reject: false})))).filter(
        (x) => x.exitCode === 0,
      ).length
    // the tracked sockets hold the sk_msg program (and it the maps) while they are open
    await eventually('every program but the sk_msg one freed', async () => (await loaded()) === 1)
    assert.ok(stream.process.running, 'the stream goes on over TCP')
    await stream.flowingPast(stream.bytes + 1024 * 1024, 'after disable')
    const got = await stream.release()
    assert.ok(got.bytes! > atStart)
    assert.equal(got.sha256, patternSha256(got.bytes!), 'every byte, in order')
    await eventually('the sk_msg program freed once the tracked connections closed', async () => (await loaded()) === 0)
    assert.deepEqual(await bpftool.cgroupTree(lab.cgroup), [], 'nothing attached')
  })

  it('says in text what disable could not release', async () => {
    const e = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], env)
    assert.equal(e.code, 0, e.stderr)
    const stream = lab.clients.openStream('a', url('c', ''))
    try {
      await stream.flowingPast(0, 'before disable')
      const r = await cli(['disable', '--bpffs', install.bpffs], env)
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /✔ merbridge is disabled/)
      assert.match(
        r.stdout,
        /! without the socket map iterator \(turned off by MERBRIDGE_WITHOUT\) no socket could be released: \d+ tracked socket\(s\) go on over TCP/,
      )
    } finally {
      await stream.release()
    }
  })
})
