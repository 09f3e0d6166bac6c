// Fair shares of the connection maps on the real kernel: one pod holding more connections than
// the maps can take must not leave another pod's connections without their sockets in
// sock_pair_map or their original destinations, and every entry is given back when its
// connection closes. The maps are made small (--max-connections 1024) so a few hundred
// connections fill them.
import assert from 'node:assert/strict'
import {unlinkSync, writeFileSync} from 'node:fs'
import {hostname} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {podShare, sharedConnections} from '../../src/bpf/layout.js'
import {readMaps} from '../../src/bpf/maps.js'
import {patternSha256} from '../../src/lab/http-app.js'
import {APP_PORT, Lab} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {cli, eventually, kernelSkipReason, ROOT, uniqueInstall, suiteTimeout, removeLab} from '../helpers.js'
import {makePod} from '../support/fake-apiserver.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'python3'])
const CAPACITY = 1024
const SINK_PORT = 9000
/** More connections than pair_original_dst holds: without shares, the greedy pod takes every entry. */
const GREEDY_CONNECTIONS = 1100

describe('fair shares of the connection maps', {skip, timeout: suiteTimeout(300_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  let greedy: LabProcess | undefined
  let sink: LabProcess | undefined

  before(async () => {
    await lab.create([
      {name: 'greedy', meshed: true},
      {name: 'victim', meshed: true},
      {name: 'sink', meshed: false},
    ])
    for (const p of ['greedy', 'victim']) await lab.sidecars.start(p)
    await lab.clients.startApp('sink')
    sink = lab.spawn('sink', 'connection sink', 'python3', [join(ROOT, 'test', 'fixtures', 'sink.py'), String(SINK_PORT)])
    await sink.waitFor(/listening/)
    const r = await cli(
      [
        'enable',
        '--cgroup',
        lab.cgroup,
        '--bpffs',
        install.bpffs,
        '--pods-file',
        lab.writePodList(),
        '--max-connections',
        String(CAPACITY),
        '--json',
      ],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr)
  })

  after(async () => {
    await greedy?.stop()
    await removeLab(lab, install)
  })

  const usage = async () => {
    const rows = await readMaps.podUsage(inst)
    const of = (netns: bigint) => rows.find((r) => r.netns === netns)?.usage ?? {sockets: 0, origins: 0}
    const cookie = async (pod: string) => BigInt((await inst.readState())?.pods.meshed.find((m) => m.name === pod)?.netns ?? -1)
    return {node: of(0n), greedy: of(await cookie('greedy')), victim: of(await cookie('victim'))}
  }

  it('gives each meshed pod its share, and sync follows the pods', async () => {
    assert.equal(await readMaps.podShare(inst), podShare(CAPACITY, 2))
    assert.equal(podShare(CAPACITY, 2), 128)
    // a third meshed pod (not on this node yet: it counts all the same) makes every share smaller
    const list = JSON.parse(lab.podList()) as {items: unknown[]}
    list.items.push(makePod('later', '10.77.0.250', hostname()))
    const file = join(lab.tmp, 'pods-three.json')
    writeFileSync(file, JSON.stringify(list))
    const r = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', file], install.env)
    assert.equal(r.code, 0, r.stderr)
    assert.equal(await readMaps.podShare(inst), podShare(CAPACITY, 3))
    const back = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], install.env)
    assert.equal(back.code, 0, back.stderr)
    assert.equal(await readMaps.podShare(inst), 128)
  })

  it("keeps a greedy pod from taking another pod's entries, and takes every entry back at close", async () => {
    const shared = sharedConnections(CAPACITY)
    const before = await readMaps.counters(inst)
    greedy = lab.spawn('greedy', 'greedy client', 'python3', [
      join(ROOT, 'test', 'fixtures', 'greedy.py'),
      lab.pod('sink').ip,
      String(SINK_PORT),
      String(GREEDY_CONNECTIONS),
    ])
    await greedy.waitFor(/^holding \d+/m, `${GREEDY_CONNECTIONS} connections held`, 120_000)
    // every connect has returned: its sockets were established, and charged or refused
    const held = await usage()
    const afterGreedy = await readMaps.counters(inst)
    const context = JSON.stringify({held, socketOverShare: afterGreedy.socketOverShare, originOverShare: afterGreedy.originOverShare})
    // the greedy pod took the shared three quarters of each map, then was refused (its share is 128)
    assert.ok(held.node.origins >= shared && held.node.origins <= shared + 4, context)
    assert.ok(held.node.sockets >= shared && held.node.sockets <= shared + 4, context)
    assert.deepEqual(held.greedy, held.node, context)
    assert.ok(afterGreedy.originOverShare - before.originOverShare >= GREEDY_CONNECTIONS - shared - 4, context)
    assert.ok(afterGreedy.socketOverShare > before.socketOverShare, context)

    // the victim's connection through its sidecar is still whole: original destination stored,
    // sockets tracked, payload moved socket to socket
    const stream = lab.clients.openStream('victim', `http://${lab.pod('sink').ip}:${APP_PORT}`)
    const flowing = await stream.flowingPast(1024 * 1024, "the victim's stream")
    const during = await usage()
    const counters = await readMaps.counters(inst)
    const ctx2 = JSON.stringify({during, counters})
    assert.ok(during.victim.origins >= 1 && during.victim.sockets >= 2, ctx2)
    for (const refused of ['socketOverShare', 'originOverShare', 'sockhashFull', 'originLost'] as const)
      assert.equal(counters[refused], afterGreedy[refused], `${refused} rose while only the victim connected: ${ctx2}`)
    assert.ok(counters.msgRedirected > afterGreedy.msgRedirected, ctx2)
    const got = await stream.release()
    assert.equal(got.code, 0, JSON.stringify(got))
    assert.ok(got.bytes! >= flowing)
    assert.equal(got.sha256, patternSha256(got.bytes!))

    // closing gives every entry back: nothing counted for a connection that is gone (the sink
    // goes too, or the sidecar would hold its half-closed ends until its timeouts)
    await greedy.stop()
    greedy = undefined
    await sink?.stop()
    let last = {...(await usage()), originalDsts: -1}
    await eventually(
      'every entry given back, and every original destination deleted, once the connections closed',
      async () => {
        last = {...(await usage()), originalDsts: (await readMaps.originals(inst)).length}
        return (
          last.node.sockets === 0 &&
          last.node.origins === 0 &&
          last.greedy.sockets === 0 &&
          last.victim.sockets === 0 &&
          last.originalDsts === 0
        )
      },
      () => JSON.stringify(last),
    )
  })

  it('syncs an installation an older merbridge enabled, which has no pod_share map', async () => {
    // unpinning leaves the map to the programs that use it: what an older installation looks like to sync
    unlinkSync(inst.map('pod_share'))
    const r = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], install.env)
    assert.equal(r.code, 0, r.stderr)
  })
})
