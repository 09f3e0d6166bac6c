// The datapath's decisions that need no kernel: status's diagnosis of what it observed.
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import type {CgroupAttachment, MapInfo, ProgInfo} from '../../src/bpf/bpftool.js'
import {MAP_NAMES, type MapName, PROGRAMS} from '../../src/bpf/programs.js'
import {diagnose, type Observed, type Snapshot} from '../../src/datapath/inspect.js'
import type {InstallState} from '../../src/datapath/installation.js'

const CGROUP = '/sys/fs/cgroup/unified/node'
const STATE: InstallState = {
  version: 1,
  bpffs: '/sys/fs/bpf/merbridge',
  cgroup: CGROUP,
  mesh: 'istio',
  node: 'node1',
  objectHash: 'abc',
  enabledAt: '2026-11-27T10:00:00.000Z',
  mountedBpffs: false,
  hostNetns: '3',
  pods: {source: 'file', syncedAt: '2026-11-27T10:00:00.000Z', meshed: [{namespace: 'lab', name: 'a', ip: '10.0.0.2', netns: '4099'}], unregistered: [], skipped: [], warnings: []},
}

/** What status sees on a healthy node; `change` edits a copy. */
function observed(change: (o: Observed & {snap: Snapshot}) => void = () => undefined): Observed {
  const progs = new Map<string, ProgInfo>(PROGRAMS.map((p, i) => [p.name, {id: 100 + i, type: 'cgroup_sock_addr', name: p.name}]))
  const maps = new Map<MapName, MapInfo>(MAP_NAMES.map((m, i) => [m, {id: 200 + i, type: m === 'settings' ? 'array' : 'hash', name: m, bytes_key: 4, bytes_value: 4, max_entries: 1000}]))
  const attachments: CgroupAttachment[] = PROGRAMS.filter((p) => p.target === 'cgroup').map((p) => ({id: progs.get(p.name)!.id, attach_type: p.kernelAttachType, attach_flags: 'multi', name: p.name}))
  const o = {
    bpffs: STATE.bpffs,
    state: structuredClone(STATE),
    pins: {progs: PROGRAMS.map((p) => p.name), maps: [...MAP_NAMES]},
    snap: {progs, maps, attachments, settings: {sidecarUid: 1337, sidecarGid: 1337, outboundPort: 15001, inboundPort: 15006, draining: false, hostNetns: 3n, dnsPort: 15053}},
    entries: {local_pod_ips: 1, sock_pair_map: 10},
    sourceHash: 'abc',
    statsEnabled: true,
  }
  change(o)
  return o
}

describe('status diagnosis', () => {
  it('calls a complete, attached, configured installation healthy', () => {
    const r = diagnose(observed())
    assert.equal(r.verdict, 'healthy')
    assert.deepEqual(r.problems, [])
    assert.equal(r.broken, undefined)
    assert.equal(r.maps.find((m) => m.name === 'sock_pair_map')?.entries, 10)
    assert.deepEqual(r.hints, [])
  })

  it('says not enabled when nothing was recorded or pinned', () => {
    const r = diagnose({bpffs: '/sys/fs/bpf/x', pins: {progs: [], maps: []}, entries: {}, statsEnabled: true})
    assert.equal(r.verdict, 'not-enabled')
    assert.deepEqual(r.programs, [])
  })

  const broken: [string, (o: Observed & {snap: Snapshot}) => void, RegExp][] = [
    ['a disable killed after it set draining', (o) => (o.snap.settings = {...o.snap.settings!, draining: true}), /the datapath is draining: nothing is intercepted \(a disable was interrupted\)/],
    ['an enable killed before it configured the mesh', (o) => (o.snap.settings = undefined), /settings are not configured: nothing is intercepted \(an enable was interrupted\)/],
    ['a program detached behind its back', (o) => (o.snap.attachments = o.snap.attachments.filter((a) => a.name !== 'mb_connect4')), /program mb_connect4 is pinned but not attached to \/sys\/fs\/cgroup\/unified\/node/],
    ['a program not pinned', (o) => o.snap.progs.delete('mb_getsockopt'), /program mb_getsockopt is not pinned/],
    ['a map missing', (o) => o.snap.maps.delete('sock_pair_map'), /map sock_pair_map is not pinned/],
  ]
  for (const [what, change, problem] of broken) {
    it(`reports ${what} as broken, which the next enable repairs`, () => {
      const r = diagnose(observed(change))
      assert.equal(r.verdict, 'unhealthy')
      assert.match(r.broken ?? '', problem)
      assert.equal(r.hints[0], 'merbridge disable, then merbridge enable, rebuilds the installation')
    })
  }

  it('reports pins without a record, and a record without pins', () => {
    const orphan = diagnose(observed((o) => (o.state = undefined)))
    assert.equal(orphan.verdict, 'unhealthy')
    assert.match(orphan.problems.join('\n'), /pins in \/sys\/fs\/bpf\/merbridge but no record of an enable/)
    const stale = diagnose(observed((o) => (o.pins = {progs: [], maps: []})))
    assert.match(stale.problems.join('\n'), /recorded as enabled on .*, but nothing is pinned in \/sys\/fs\/bpf\/merbridge \(stale record\)/)
  })

  it('counts a nearly full map as a problem but not as broken', () => {
    const r = diagnose(observed((o) => (o.entries.sock_pair_map = 950)))
    assert.equal(r.verdict, 'unhealthy')
    assert.deepEqual(r.problems, ['map sock_pair_map is 95% full (950/1000)'])
    assert.equal(r.broken, undefined)
  })

  it('hints at other programs on the cgroup, older sources, unfound pods and disabled run counts', () => {
    const r = diagnose(
      observed((o) => {
        o.snap.attachments.push({id: 999, attach_type: 'cgroup_inet4_connect', attach_flags: 'multi', name: 'cil_sock4_connect'})
        o.sourceHash = 'def'
        o.statsEnabled = false
        o.state!.pods.unregistered.push({namespace: 'lab', name: 'z', ip: '10.0.0.9'})
      }),
    )
    assert.equal(r.verdict, 'healthy')
    assert.deepEqual(r.hints, [
      `other programs are attached to ${CGROUP}: 999 cil_sock4_connect (cgroup_inet4_connect); they may conflict`,
      'the programs were built from older sources: run merbridge enable to replace them',
      'run counts and times are off: sysctl -w kernel.bpf_stats_enabled=1 turns them on',
      '1 meshed pod(s) were not found on this node at the last sync',
    ])
  })
})
