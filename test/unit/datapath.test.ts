// The decisions that need no kernel: status's diagnosis and rendering, the sync plan, usage errors.
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import type {CgroupAttachment, MapInfo, ProgInfo} from '../../src/bpf/bpftool.js'
import {MAP_NAMES, type MapName, PROGRAMS} from '../../src/bpf/programs.js'
import {diagnose, type Observed, type Snapshot} from '../../src/datapath/status.js'
import type {InstallState} from '../../src/datapath/installation.js'
import {Errors} from '@oclif/core'
import {CAPTURE_ALL, encodeIface} from '../../src/bpf/layout.js'
import {DropWatch} from '../../src/datapath/watch-loop.js'
import {otherAddresses, pickNamespace, type PodMapsView, planSync} from '../../src/datapath/sync-maps.js'
import type {MeshedPod} from '../../src/kube/pods.js'
import {usageError} from '../../src/ui/base-command.js'
import {renderStatus} from '../../src/ui/status-view.js'

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
  pods: {
    source: 'file',
    syncedAt: '2026-11-27T10:00:00.000Z',
    meshed: [{namespace: 'lab', name: 'a', ip: '10.0.0.2', netns: '4099'}],
    unregistered: [],
    skipped: [],
    warnings: [],
  },
}

/** What status sees on a healthy node; `change` edits a copy. */
function observed(change: (o: Observed & {snap: Snapshot}) => void = () => undefined): Observed {
  const progs = new Map<string, ProgInfo>(PROGRAMS.map((p, i) => [p.name, {id: 100 + i, type: 'cgroup_sock_addr', name: p.name}]))
  const maps = new Map<MapName, MapInfo>(
    MAP_NAMES.map((m, i) => [
      m,
      {id: 200 + i, type: m === 'settings' ? 'array' : 'hash', name: m, bytes_key: 4, bytes_value: 4, max_entries: 1000},
    ]),
  )
  const attachments: CgroupAttachment[] = PROGRAMS.filter((p) => p.target === 'cgroup').map((p) => ({
    id: progs.get(p.name)!.id,
    attach_type: p.kernelAttachType,
    attach_flags: 'multi',
    name: p.name,
  }))
  const o = {
    bpffs: STATE.bpffs,
    state: structuredClone(STATE),
    pins: {progs: PROGRAMS.map((p) => p.name), maps: [...MAP_NAMES]},
    snap: {
      progs,
      maps,
      attachments,
      settings: {
        sidecarUid: 1337,
        sidecarGid: 1337,
        outboundPort: 15001,
        inboundPort: 15006,
        draining: false,
        inboundRewrite: true,
        cni: false,
        hostNetns: 3n,
        dnsPort: 15053,
      },
    },
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
    [
      'a disable killed after it set draining',
      (o) => (o.snap.settings = {...o.snap.settings!, draining: true}),
      /the datapath is draining: nothing is intercepted \(a disable was interrupted\)/,
    ],
    [
      'an enable killed before it configured the mesh',
      (o) => (o.snap.settings = undefined),
      /settings are not configured: nothing is intercepted \(an enable was interrupted\)/,
    ],
    [
      'a program detached behind its back',
      (o) => (o.snap.attachments = o.snap.attachments.filter((a) => a.name !== 'mb_connect4')),
      /program mb_connect4 is pinned but not attached to \/sys\/fs\/cgroup\/unified\/node/,
    ],
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
    assert.match(
      stale.problems.join('\n'),
      /recorded as enabled on .*, but nothing is pinned in \/sys\/fs\/bpf\/merbridge \(stale record\)/,
    )
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
      '1 meshed pod(s) were not found on this node at the last sync: their inbound is not captured, and their outbound only once their sidecar listens',
    ])
  })
})

describe('sync plan', () => {
  const rules = (n: number) => Buffer.from([n, n])
  const pod = (name: string, ip: string, ip6?: string): MeshedPod => ({
    namespace: 'lab',
    name,
    ip,
    ...(ip6 ? {ip6} : {}),
    dnsCapture: false,
    dnsToAny: false,
    rules: {...CAPTURE_ALL},
    noInboundCapture: [],
    warnings: [],
  })
  const empty = (): PodMapsView => ({rules: new Map(), netns: new Map()})

  it('writes every address and namespace of a fresh node, and attaches inbound capture to each found pod', () => {
    const plan = planSync(
      [
        {pod: pod('a', '10.0.0.2', 'fd00::2'), nsPath: '/proc/10/ns/net', cookie: 4099n, rules: rules(1)},
        {pod: pod('b', '10.0.0.3'), rules: rules(2)},
      ],
      empty(),
      false,
    )
    assert.deepEqual(
      plan.ruleWrites.map(([ip]) => ip),
      ['10.0.0.2', 'fd00::2', '10.0.0.3'],
    )
    assert.deepEqual(
      plan.netnsWrites.map(([cookie]) => cookie),
      [4099n],
    )
    assert.deepEqual(plan.meshed, [{namespace: 'lab', name: 'a', ip: '10.0.0.2', ip6: 'fd00::2', netns: '4099'}])
    // b is not on the node (yet): still captured as a destination (fail closed), not registered
    assert.deepEqual(plan.unregistered, [{namespace: 'lab', name: 'b', ip: '10.0.0.3'}])
    assert.deepEqual(plan.attach, [{path: '/proc/10/ns/net', skip: [], id: 'lab/a'}])
    assert.deepEqual([plan.ruleDeletes, plan.netnsDeletes], [[], []])
  })

  it('writes only what changed, removes what is gone, and attaches only newly registered pods when the view is known', () => {
    const first = planSync(
      [
        {pod: pod('a', '10.0.0.2'), nsPath: '/p/a', cookie: 1n, rules: rules(1)},
        {pod: pod('gone', '10.0.0.9'), nsPath: '/p/g', cookie: 9n, rules: rules(9)},
      ],
      empty(),
      false,
    )
    const next = planSync(
      [
        {pod: pod('a', '10.0.0.2'), nsPath: '/p/a', cookie: 1n, rules: rules(1)},
        {pod: pod('c', '10.0.0.4'), nsPath: '/p/c', cookie: 4n, rules: rules(4)},
      ],
      first.view,
      true,
    )
    assert.deepEqual(
      next.ruleWrites.map(([ip]) => ip),
      ['10.0.0.4'],
    )
    assert.deepEqual(
      next.netnsWrites.map(([cookie]) => cookie),
      [4n],
    )
    assert.deepEqual(next.ruleDeletes, ['10.0.0.9'])
    assert.deepEqual(next.netnsDeletes, [9n])
    assert.deepEqual(
      next.attach.map((a) => a.id),
      ['lab/c'],
    )
    // a re-check (view not known) re-attaches everyone; a changed rule is rewritten
    const recheck = planSync([{pod: pod('a', '10.0.0.2'), nsPath: '/p/a', cookie: 1n, rules: rules(7)}], next.view, false)
    assert.deepEqual(
      recheck.ruleWrites.map(([ip]) => ip),
      ['10.0.0.2'],
    )
    assert.deepEqual(
      recheck.attach.map((a) => a.id),
      ['lab/a'],
    )
  })

  it("registers a pod's other addresses, marks those pods of separate networks share, and removes them when gone", () => {
    const a = {pod: pod('a', '10.0.0.2'), nsPath: '/p/a', cookie: 1n, rules: rules(1)}
    const b = {pod: pod('b', '10.0.0.3'), nsPath: '/p/b', cookie: 2n, rules: rules(2)}
    const first = planSync(
      [
        {...a, otherIps: ['192.168.1.10', '192.168.9.9']},
        {...b, otherIps: ['192.168.9.9', '10.0.0.2']},
      ],
      empty(),
      false,
    )
    // b's namespace also holds a's pod IP (overlapping networks): a's own entry decides there
    assert.deepEqual(first.otherWrites, [
      ['192.168.1.10', '10.0.0.2'],
      ['192.168.9.9', ''],
    ])
    assert.deepEqual(first.shared, [{ip: '192.168.9.9', pods: ['lab/a', 'lab/b']}])
    const next = planSync(
      [
        {...a, otherIps: ['192.168.1.10']},
        {...b, otherIps: ['192.168.9.9']},
      ],
      first.view,
      true,
    )
    assert.deepEqual(next.otherWrites, [['192.168.9.9', '10.0.0.3']])
    assert.deepEqual(next.otherDeletes, [])
    const gone = planSync([a], next.view, true)
    assert.deepEqual(gone.otherDeletes.sort(), ['192.168.1.10', '192.168.9.9'])
    // a pod not found on the node has no namespace, so no other addresses
    assert.deepEqual(planSync([{pod: pod('c', '10.0.0.4'), rules: rules(3), otherIps: ['192.168.3.3']}], empty(), false).otherWrites, [])
  })

  it('keeps the interfaces registered pods exclude by namespace and index, and removes those gone', () => {
    const a = {pod: pod('a', '10.0.0.2'), nsPath: '/p/a', cookie: 1n, rules: rules(1)}
    const key = (netns: bigint, ifindex: number) => encodeIface({netns, ifindex}).toString('hex')
    const first = planSync(
      [
        {...a, skipIndexes: [3, 5]},
        {pod: pod('b', '10.0.0.3'), rules: rules(2), skipIndexes: [7]},
      ],
      empty(),
      false,
    )
    // b is not on the node: no namespace, nothing to skip
    assert.deepEqual(
      first.skipWrites.map((k) => k.toString('hex')),
      [key(1n, 3), key(1n, 5)],
    )
    // the interface renumbered (deleted and made again): the new index in, the old one out
    const next = planSync([{...a, skipIndexes: [3, 8]}], first.view, true)
    assert.deepEqual(
      next.skipWrites.map((k) => k.toString('hex')),
      [key(1n, 8)],
    )
    assert.deepEqual(
      next.skipDeletes.map((k) => k.toString('hex')),
      [key(1n, 5)],
    )
    assert.deepEqual(
      planSync([], next.view, true)
        .skipDeletes.map((k) => k.toString('hex'))
        .sort(),
      [key(1n, 3), key(1n, 8)].sort(),
    )
  })

  it("takes as a pod's other addresses all its namespace holds (link-local ones too) but its pod IPs, loopback, and IPv6 Istio leaves alone", () => {
    const addresses = ['10.0.0.2', '127.0.0.1', '192.168.1.10', 'fd00::2', 'fd00:0:0:0::2', 'fd01::7', '::1']
    const linkLocal = ['fe80::1']
    assert.deepEqual(otherAddresses(pod('a', '10.0.0.2', 'fd00::2'), {addresses, linkLocal}), ['192.168.1.10', 'fd01::7', 'fe80::1'])
    assert.deepEqual(otherAddresses({...pod('v', '10.0.0.2'), rules: {...CAPTURE_ALL, noIpv6: true}}, {addresses, linkLocal}), [
      '192.168.1.10',
    ])
  })
})

describe('status rendering', () => {
  it('says healthy, lists the pods, and names every problem and hint', () => {
    const healthy = renderStatus(diagnose(observed()))
    assert.match(healthy, /✔ merbridge is enabled and healthy/)
    assert.match(healthy, /lab\/a 10\.0\.0\.2/)
    const draining = renderStatus(diagnose(observed((o) => (o.snap.settings = {...o.snap.settings!, draining: true}))))
    assert.match(draining, /merbridge is enabled but unhealthy:\n {2}- the datapath is draining/)
    assert.match(draining, /→ merbridge disable, then merbridge enable, rebuilds the installation/)
    assert.match(
      renderStatus(diagnose({bpffs: '/sys/fs/bpf/x', pins: {progs: [], maps: []}, entries: {}, statsEnabled: true})),
      /^merbridge is not enabled on this node \(no installation in \/sys\/fs\/bpf\/x\)/,
    )
  })
})

describe('usage errors', () => {
  it("turn oclif's parse errors into one line, exit 2, with the command's help named", () => {
    const parseError = Object.assign(new Errors.CLIError('Nonexistent flag: --bogus\nSee more help with --help'), {parse: {}})
    const e = usageError(parseError, 'status')
    assert.equal(e?.message, 'Nonexistent flag: --bogus')
    assert.equal(e.exitCode, 2)
    assert.equal(e.code, 'USAGE')
    assert.equal(e.suggestion, 'see `merbridge status --help`')
    assert.equal(usageError(new Error('a bpftool failure'), 'status'), undefined, 'other errors are not usage errors')
  })
})

describe("sync --watch's look at the guard's drops", () => {
  it('acts on a rise at once, on rises in a row at doubling intervals, and starts over only after a quiet period', () => {
    const w = new DropWatch(2000, 30_000)
    assert.equal(w.observe(5, 0), undefined, 'the first look only learns the count')
    assert.equal(w.observe(5, 2000), undefined)
    assert.equal(w.observe(7, 4000), 2, 'a rise: act now')
    // still rising: next answer no sooner than 2 s after, then 4 s, then 8 s...
    assert.equal(w.observe(8, 5000), undefined)
    assert.equal(w.observe(9, 6000), 2, 'the drops held back meanwhile count too')
    assert.equal(w.observe(10, 8000), undefined)
    assert.equal(w.observe(11, 10_000), 2)
    // a short pause does not start the intervals over: the next answer still waits 8 s
    assert.equal(w.observe(11, 12_000), undefined)
    assert.equal(w.observe(12, 14_000), undefined)
    assert.equal(w.observe(13, 18_000), 2)
    // a whole period without drops does
    assert.equal(w.observe(13, 48_000), undefined)
    assert.equal(w.observe(14, 50_000), 1)
    assert.equal(w.observe(15, 51_000), undefined)
    assert.equal(w.observe(16, 52_000), 2)
  })
})

describe('a pod address held by more than one network namespace', () => {
  const pod: MeshedPod = {
    namespace: 'lab',
    name: 'b',
    ip: '10.0.0.2',
    dnsCapture: false,
    dnsToAny: false,
    rules: {...CAPTURE_ALL},
    noInboundCapture: [],
    warnings: [],
  }
  const ns = (path: string) => ({inode: 1, path, addresses: [pod.ip], linkLocal: [], pids: []})
  const [own, claim] = [ns('/proc/10/ns/net'), ns('/proc/99/ns/net')]
  const cookies = new Map([
    [own.path, 5n],
    [claim.path, 9n],
  ])

  it('takes the only holder without a word', () => {
    assert.deepEqual(pickNamespace(pod, [own], cookies, undefined), {ns: own})
    assert.deepEqual(pickNamespace(pod, [], cookies, undefined), {ns: undefined})
  })

  it('keeps the namespace the pod is registered to, whichever is older, and says who else holds the address', () => {
    const kept = pickNamespace(
      pod,
      [claim, own],
      new Map([
        [own.path, 9n],
        [claim.path, 5n],
      ]),
      9n,
    )
    assert.equal(kept.ns, own)
    assert.equal(
      kept.warning,
      'lab/b: its address 10.0.0.2 is also held by 1 other network namespace(s) (/proc/99/ns/net): kept in /proc/10/ns/net, where it is registered',
    )
  })

  it('registers a new pod in the oldest holder (the lowest cookie), with a warning', () => {
    const picked = pickNamespace(pod, [claim, own], cookies, undefined)
    assert.equal(picked.ns, own)
    assert.match(picked.warning ?? '', /kept in \/proc\/10\/ns\/net, the oldest of them$/)
  })
})
