// Interfaces Istio's PREROUTING treats apart (traffic.sidecar.istio.io/excludeInterfaces, a
// virtual machine's istio.io/reroute-virtual-interfaces), and one it treats as any other but whose
// packets carry no Ethernet header (a tun device, as a WireGuard or IP-in-IP tunnel would be), on
// the real kernel: each meshed pod has a second interface, side0, wired to a namespace of its own,
// and connections arrive over it under Istio's rules, under merbridge alone and under both.
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {patternSha256} from '../../src/lab/http-app.js'
import {APP_PORT, Lab} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {EnableResult} from '../../src/commands/enable.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import type {MapDump} from '../../src/datapath/dump-maps.js'
import {readMaps} from '../../src/bpf/maps.js'
import {cli, eventually, kernelSkipReason, parseJson, uniqueInstall, suiteTimeout, removeLab} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'iptables'])

describe('excluded and virtual machine interfaces', {skip, timeout: suiteTimeout(240_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const sidecars = new Map<string, LabProcess>()
  const PODS = ['excluded', 'vm', 'plain', 'tunnel'] as const
  /** how long a client waits for a connection whose SYNs are held: past six retransmissions */
  const HELD_MS = 100_000
  /** a port every pod excludes inbound (Istio's 15020, the agent's): plain's app listens there too */
  const EXCLUDED_PORT = 15020
  /** an address on two pods' second networks */
  const SHARED = '10.66.0.5'
  /** A request from the namespace on the pod's side0 to the pod's own address: who the app saw, what its sidecar logged. */
  const overSide0 = async (pod: (typeof PODS)[number], address = lab.pod(pod).ip, port = APP_PORT) => {
    const mark = sidecars.get(pod)!.stdout.length
    const r = await lab.clients.get(`x-${pod}`, `http://${address}:${port}/whoami`)
    assert.equal(r.status, 200, `x-${pod} -> ${pod}: ${r.error ?? ''}`)
    const seen = (JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress
    // a request that passed the sidecar was logged before the app answered it (logasap)
    return {seen, log: parseSidecarLog(sidecars.get(pod)!.stdout.slice(mark))}
  }
  /** A request from inside 'plain' (its app, or as its proxy) to its own second address: who the app saw, what its sidecar logged. */
  const toOwnSecond = async (as?: {uid: number; gid: number}) => {
    const mark = sidecars.get('plain')!.stdout.length
    const r = await lab.clients.get('plain', `http://${secondAddress('plain')}:${APP_PORT}/whoami`, undefined, as)
    assert.equal(r.status, 200, `plain -> ${secondAddress('plain')}: ${r.error ?? ''}`)
    return {
      seen: (JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress,
      log: parseSidecarLog(sidecars.get('plain')!.stdout.slice(mark)).map((l) => l.backend),
    }
  }
  /** The pod's own address on side0, the link to x-POD (addLinkedPod: .1 of x-POD's /24). */
  const secondAddress = (pod: string) => lab.pod(`x-${pod}`).ip.replace(/\.2$/, '.1')
  const tcFilters = async (pod: string, dev: string) =>
    (await execa('tc', ['-n', lab.pod(pod).netns, '-j', 'filter', 'show', 'dev', dev, 'ingress'])).stdout
  /**
   * A request from `from` to plain, over an interface of plain's that tc is not on: its SYN is
   * dropped (fail closed) rather than given to the app around the sidecar; once sync attaches tc
   * there, the client's next retransmission goes through the inbound sidecar. Istio's rules,
   * installed since the test that keeps them beside merbridge, would capture it themselves: they
   * are off meanwhile.
   */
  const heldUntilSync = async (from: string) => {
    await lab.iptables.remove('plain')
    try {
      await heldUntilSyncAlone(from)
    } finally {
      await lab.iptables.install('plain')
    }
  }
  const heldUntilSyncAlone = async (from: string) => {
    const inst = install.installation()
    const before = (await readMaps.counters(inst)).inboundUncovered
    const mark = sidecars.get('plain')!.stdout.length
    // held for as long as its SYN retransmissions go on: the sync may come late on a slow machine
    const pending = lab.clients.get(from, `http://${lab.pod('plain').ip}:${APP_PORT}/whoami`, undefined, undefined, HELD_MS)
    let answered: Awaited<typeof pending> | undefined
    void pending.then((r) => (answered = r))
    await eventually(
      'the SYN dropped where tc is not',
      async () => answered !== undefined || (await readMaps.counters(inst)).inboundUncovered > before,
    )
    assert.equal(answered, undefined, `answered before any sync: ${JSON.stringify(answered)}`)
    const s = await cli(['sync', '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'], install.env)
    assert.equal(s.code, 0, s.stderr + s.stdout)
    const r = await pending
    assert.equal(r.status, 200, `${from} -> plain: ${r.error ?? ''}`)
    assert.equal(
      (JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress,
      '127.0.0.6',
      'the retransmitted SYN went through the inbound sidecar',
    )
    assert.deepEqual(
      parseSidecarLog(sidecars.get('plain')!.stdout.slice(mark)).map((l) => l.backend),
      ['inbound_passthrough'],
    )
  }
  /** What Istio's rules do, in each mode where they are installed. */
  const asIstio = async () => {
    const excluded = await overSide0('excluded')
    assert.equal(excluded.seen, lab.pod('x-excluded').ip, 'excludeInterfaces: straight to the app')
    assert.deepEqual(excluded.log, [])
    // the virtual machine's connection goes to the outbound listener, whose connection to the
    // pod's own address then passes its inbound listener
    const vm = await overSide0('vm')
    assert.equal(vm.seen, '127.0.0.6')
    assert.deepEqual(
      vm.log.map((l) => [l.backend, l.originalDst]),
      [
        ['outbound_passthrough', `${lab.pod('vm').ip}:${APP_PORT}`],
        ['inbound_passthrough', `${lab.pod('vm').ip}:${APP_PORT}`],
      ],
    )
    await capturedAsAnyOther()
  }
  /**
   * Interfaces and addresses Istio treats as any other, whichever mode: plain's side0; its own
   * address there (a second network's, as Multus gives), from outside and from inside the pod;
   * a tun interface (no Ethernet header: merbridge reads from the network header).
   */
  const capturedAsAnyOther = async () => {
    const plain = await overSide0('plain')
    assert.equal(plain.seen, '127.0.0.6', 'any other interface: through the inbound sidecar')
    assert.deepEqual(
      plain.log.map((l) => l.backend),
      ['inbound_passthrough'],
    )
    // the sidecar is told the address it was called at
    const second = await overSide0('plain', secondAddress('plain'))
    assert.equal(second.seen, '127.0.0.6', "the pod's second address: through the inbound sidecar")
    assert.deepEqual(
      second.log.map((l) => [l.backend, l.originalDst]),
      [['inbound_passthrough', `${secondAddress('plain')}:${APP_PORT}`]],
    )
    assert.deepEqual(await toOwnSecond(), {seen: secondAddress('plain'), log: []}, 'the app calling its own address: direct')
    assert.deepEqual(
      await toOwnSecond({uid: 1337, gid: 1337}),
      {seen: '127.0.0.6', log: ['inbound_passthrough']},
      'the proxy calling its own pod: through its inbound listener',
    )
    // an address two pods share: whichever it is, every port is captured there (merbridge cannot
    // tell their rules apart by it; Istio's PREROUTING captures every port of plain anyway)
    const shared = await overSide0('plain', SHARED)
    assert.equal(shared.seen, '127.0.0.6', 'a shared address: through the inbound sidecar')
    assert.deepEqual(
      shared.log.map((l) => [l.backend, l.originalDst]),
      [['inbound_passthrough', `${SHARED}:${APP_PORT}`]],
    )
    // but under the rules of the pod it arrives at: a port plain excludes goes straight to its app
    assert.deepEqual(
      await overSide0('plain', SHARED, EXCLUDED_PORT),
      {seen: lab.pod('x-plain').ip, log: []},
      'a shared address, an excluded port: direct',
    )
    const tunnel = await overSide0('tunnel')
    assert.equal(tunnel.seen, '127.0.0.6', 'an interface without Ethernet headers: through the inbound sidecar')
    assert.deepEqual(
      tunnel.log.map((l) => [l.backend, l.originalDst]),
      [['inbound_passthrough', `${lab.pod('tunnel').ip}:${APP_PORT}`]],
    )
  }

  before(async () => {
    await lab.create([
      {name: 'excluded', meshed: true, annotations: {'traffic.sidecar.istio.io/excludeInterfaces': 'side0'}},
      {name: 'vm', meshed: true, annotations: {'istio.io/reroute-virtual-interfaces': 'side0'}},
      {name: 'plain', meshed: true},
      {name: 'tunnel', meshed: true},
    ])
    for (const p of PODS) {
      if (p === 'tunnel') await lab.links.addTunnelPod({name: `x-${p}`}, p, 'side0')
      else await lab.links.addLinkedPod({name: `x-${p}`}, p, 'side0')
      sidecars.set(p, await lab.sidecars.start(p))
      await lab.clients.startApp(p)
    }
    await lab.clients.startApp('plain', EXCLUDED_PORT)
    // an address plain and vm both have on their second networks, which are apart: x-plain
    // reaches plain's
    for (const p of ['plain', 'vm']) await execa('ip', ['-n', lab.pod(p).netns, 'addr', 'add', `${SHARED}/32`, 'dev', 'side0'])
    await execa('ip', ['-n', lab.pod('x-plain').netns, 'route', 'add', `${SHARED}/32`, 'via', secondAddress('plain')])
  })

  after(() => removeLab(lab, install))

  it("under Istio's rules: nothing captured from an excluded interface, a virtual machine's connections sent outbound", async () => {
    for (const p of PODS) await lab.iptables.install(p)
    await asIstio()
    for (const p of PODS) await lab.iptables.remove(p)
  })

  it('merbridge alone keeps its inbound capture off an excluded interface, sends a virtual machine through the inbound sidecar, and says what it leaves to istio-init', async () => {
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const out = parseJson<EnableResult>(r.stdout)
    assert.deepEqual(out.pods.meshed.map((p) => p.name).sort(), ['excluded', 'plain', 'tunnel', 'vm'])
    const warnings = out.pods.warnings.join('\n')
    assert.match(warnings, /lab\/excluded: traffic.sidecar.istio.io\/excludeInterfaces: inbound on side0 is left alone/)
    assert.match(
      warnings,
      /lab\/vm: istio.io\/reroute-virtual-interfaces: TCP the virtual machine sends through side0 is captured only by istio-init's rules/,
    )
    // tc's filter on every interface but the excluded one
    for (const p of PODS) assert.match(await tcFilters(p, 'eth0'), /"kind":"bpf"/, `${p} eth0`)
    for (const p of ['plain', 'vm', 'tunnel']) assert.match(await tcFilters(p, 'side0'), /"kind":"bpf"/, `${p} side0`)
    assert.doesNotMatch(await tcFilters('excluded', 'side0'), /"kind":"bpf"/)

    const excluded = await overSide0('excluded')
    assert.equal(excluded.seen, lab.pod('x-excluded').ip, 'excludeInterfaces: straight to the app, as under Istio')
    // the pods' other addresses, as the node found them in their namespaces: tc finds the pod by them
    const dumped = parseJson<{maps: MapDump[]}>(
      (await cli(['dump-maps', 'pod_other_ips', '--bpffs', install.bpffs, '--json'], install.env)).stdout,
    ).maps
    const others = (dumped[0]?.rows ?? []) as {ip: string; owner?: string; pod?: string}[]
    assert.deepEqual(
      others.find((o) => o.ip === secondAddress('plain')),
      {ip: secondAddress('plain'), owner: lab.pod('plain').ip, pod: 'lab/plain'},
    )
    assert.deepEqual(
      others.find((o) => o.ip === SHARED),
      {ip: SHARED},
      'a shared address has no owner',
    )
    // the excluded interface, by index in its pod's namespace: the cgroup's guard leaves it alone too
    const skips = parseJson<{maps: MapDump[]}>(
      (await cli(['dump-maps', 'inbound_skip', '--bpffs', install.bpffs, '--json'], install.env)).stdout,
    ).maps[0]?.rows
    const side0 = Number(/^(\d+):/.exec((await execa('ip', ['-n', lab.pod('excluded').netns, '-o', 'link', 'show', 'side0'])).stdout)?.[1])
    assert.deepEqual(
      skips?.map((s) => [(s as {pod?: string}).pod, (s as {ifindex: number}).ifindex]),
      [['lab/excluded', side0]],
    )
    // captured under the rules of the pod it arrives at, as Istio's: nothing to warn of
    assert.doesNotMatch(warnings, /all have the address/)
    await capturedAsAnyOther()
    // fail closed: not the outbound listener Istio's rule picks, but never around the sidecar
    const vm = await overSide0('vm')
    assert.equal(vm.seen, '127.0.0.6')
    assert.deepEqual(
      vm.log.map((l) => l.backend),
      ['inbound_passthrough'],
    )
  })

  it('captures an address the pod gained since it was registered, before any sync', async () => {
    const added = '10.66.0.7'
    await execa('ip', ['-n', lab.pod('plain').netns, 'addr', 'add', `${added}/32`, 'dev', 'side0'])
    await execa('ip', ['-n', lab.pod('x-plain').netns, 'route', 'add', `${added}/32`, 'via', secondAddress('plain')])
    try {
      const dumped = parseJson<{maps: MapDump[]}>(
        (await cli(['dump-maps', 'pod_other_ips', '--bpffs', install.bpffs, '--json'], install.env)).stdout,
      ).maps
      assert.ok(!(dumped[0]?.rows ?? []).some((o) => (o as {ip: string}).ip === added), 'not registered yet')
      // registered by the next sync; until then under the rules of the pod whose namespace has it
      const r = await overSide0('plain', added)
      assert.equal(r.seen, '127.0.0.6', 'an address not registered yet: through the inbound sidecar')
      assert.deepEqual(
        r.log.map((l) => [l.backend, l.originalDst]),
        [['inbound_passthrough', `${added}:${APP_PORT}`]],
      )
      // under the rules of the pod whose namespace has it, as Istio's: an excluded port goes direct
      assert.deepEqual(await overSide0('plain', added, EXCLUDED_PORT), {seen: lab.pod('x-plain').ip, log: []}, 'an excluded port: direct')
    } finally {
      await execa('ip', ['-n', lab.pod('x-plain').netns, 'route', 'del', `${added}/32`])
      await execa('ip', ['-n', lab.pod('plain').netns, 'addr', 'del', `${added}/32`, 'dev', 'side0'])
    }
  })

  it("with Istio's rules still installed, every connection goes as Istio alone sends it", async () => {
    for (const p of PODS) await lab.iptables.install(p)
    await asIstio()
  })

  it('takes its filter off an interface a pod now excludes, at the next enable', async () => {
    // as a node where an older merbridge attached everywhere: ours on excluded's side0 by hand
    const pin = install.installation().prog('mb_tc_inbound')
    // nsenter, not `tc -n`: that mounts a sysfs of the namespace's over /sys, and the pin is under /sys/fs/bpf
    const inPod = (args: string[]) => execa('nsenter', [`--net=/run/netns/${lab.pod('excluded').netns}`, 'tc', ...args])
    await inPod(['qdisc', 'add', 'dev', 'side0', 'clsact'])
    await inPod([
      'filter',
      'add',
      'dev',
      'side0',
      'ingress',
      'pref',
      String(0xc0de),
      'handle',
      '0x4d42',
      'bpf',
      'direct-action',
      'pinned',
      pin,
    ])
    assert.match(await tcFilters('excluded', 'side0'), /"kind":"bpf"/)
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
    assert.doesNotMatch(await tcFilters('excluded', 'side0'), /"kind":"bpf"/)
    // the qdisc that held only ours goes with it
    assert.doesNotMatch((await execa('tc', ['-n', lab.pod('excluded').netns, 'qdisc', 'show', 'dev', 'side0'])).stdout, /clsact/)
    assert.match(await tcFilters('excluded', 'eth0'), /"kind":"bpf"/)
  })

  it('doctor finds where inbound capture was taken off (not where a pod excludes it), and sync puts it back', async () => {
    const doctor = async () => {
      const r = await cli(['doctor', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--json'], install.env)
      const check = parseJson<PreflightResult>(r.stdout).checks.find((c) => c.id === 'inbound')
      assert.ok(check, r.stdout)
      return {code: r.code, check}
    }
    const healthy = await doctor()
    assert.equal(healthy.check.status, 'pass', healthy.check.detail)
    assert.match(healthy.check.detail, /the 4 registered pod\(s\)/)
    // as another tool resetting a pod's qdiscs would
    await execa('tc', ['-n', lab.pod('plain').netns, 'qdisc', 'del', 'dev', 'side0', 'clsact'])
    const broken = await doctor()
    assert.equal(broken.check.status, 'fail')
    assert.equal(broken.code, 1)
    assert.equal(broken.check.detail, 'not attached on 1 of 4 registered pod(s): lab/plain (side0)')
    assert.match(broken.check.remedy ?? '', /merbridge sync/)
    await heldUntilSync('x-plain')
    assert.equal((await doctor()).check.status, 'pass')
  })

  it('keeps a connection over an interface the pod gained since it was registered from its app until sync captures there', async () => {
    await lab.links.addLinkedPod({name: 'y-plain'}, 'plain', 'side1')
    assert.doesNotMatch(await tcFilters('plain', 'side1'), /"kind":"bpf"/, 'not attached before a sync')
    await heldUntilSync('y-plain')
    assert.match(await tcFilters('plain', 'side1'), /"kind":"bpf"/)
  })

  it("keeps a connection Istio's REDIRECT made flowing when merbridge is enabled beside the rules", async () => {
    // its sockets are under the address and port REDIRECT chose (side0's address, the inbound port),
    // where conntrack takes its segments after tc has seen them: under the tuple they carry they find
    // no socket but the app's listener, as the last ACK of a SYN cookie handshake would, and tc must
    // leave them to conntrack. (Deleting the rules would end it under Istio alone too: the nat hooks
    // go with the table.)
    const d = await cli(['disable', '--bpffs', install.bpffs, '--json'], install.env)
    assert.equal(d.code, 0, d.stderr + d.stdout)
    await lab.iptables.remove('plain')
    await lab.iptables.install('plain')
    const mark = sidecars.get('plain')!.stdout.length
    const stream = lab.clients.openStream('x-plain', `http://${lab.pod('plain').ip}:${APP_PORT}`)
    const atStart = await stream.flowingPast(0, 'under Istio')
    assert.deepEqual(
      parseSidecarLog(sidecars.get('plain')!.stdout.slice(mark)).map((l) => l.backend),
      ['inbound_passthrough'],
    )
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const atSwitch = await stream.flowingPast(atStart, 'merbridge on')
    await stream.flowingPast(atSwitch + 4 * 1024 * 1024, '4 MiB later')
    const got = await stream.release()
    assert.equal(got.code, 0, JSON.stringify(got))
    assert.equal(got.sha256, patternSha256(got.bytes!))
    for (const p of PODS) await lab.iptables.remove(p)
    // and a new connection is merbridge's
    assert.equal((await overSide0('plain')).seen, '127.0.0.6')
  })
})
