// Hostile packets and sockets. Pair keys stay unique on the node when two sockets share a 4-tuple: a pod with NET_ADMIN puts
// two other pods' addresses on its own loopback and holds a connection between them, on the very
// ports a real connection between those pods then uses. The real connection must still reach the
// destination's sidecar, and the impostor must never receive its bytes.
import assert from 'node:assert/strict'
import {copyFileSync} from 'node:fs'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {readMaps} from '../../src/bpf/maps.js'
import {APP_PORT, Lab, NODE, NODE_IP, REMOTE} from '../../src/lab/lab.js'
import {SYSTEM_PYTHON} from '../../src/lab/sidecar6.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import {cli, eventually, kernelSkipReason, parseJson, ROOT, uniqueInstall, suiteTimeout, removeLab} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy'], [SYSTEM_PYTHON])

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
    await lab.links.addRemote()
    for (const p of ['a', 'b']) await lab.sidecars.start(p)
    await lab.clients.startApp('b')
    // copied where the pods' users can read them
    for (const name of ['hostile_server.py', 'hostile_client.py', 'fragment.py', 'fill_options.py'])
      copyFileSync(join(ROOT, 'test', 'fixtures', name), join(lab.tmp, name))
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
  })

  after(() => removeLab(lab, install))

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
    const agent = await lab.clients.startApp('b', 15020)
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
      const ok = await lab.clients.get('a', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)
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
    const sessions0 = await lab.sidecars.sessions('a')
    const r = await lab.exec('a', 'setpriv', [
      '--reuid',
      '1000',
      '--regid',
      '1000',
      '--clear-groups',
      SYSTEM_PYTHON,
      join(lab.tmp, 'fill_options.py'),
      lab.pod('b').ip,
      String(APP_PORT),
    ])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^keys [1-9]\d*$/m, 'the app filled its socket option memory')
    assert.match(r.stdout, /^refused: EPERM$/m, `the connect went somewhere: ${r.stdout}`)
    assert.equal((await readMaps.counters(inst)).originLost, counters0.originLost + 1)
    assert.equal((await lab.sidecars.sessions('a')).outbound, sessions0.outbound, 'nothing reached the sidecar either')
    const st = await cli(['status', '--bpffs', install.bpffs], install.env)
    assert.match(st.stdout, /1 connect\(s\) or datagram\(s\) were refused \(EPERM\)/)
    // an ordinary request from the same pod still passes its sidecar
    const ok = await lab.clients.get('a', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)
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
    const server = lab.spawn('x', "impostor's server", SYSTEM_PYTHON, [
      join(lab.tmp, 'hostile_server.py'),
      b,
      String(PROFILES.istio!.inboundPort),
    ])
    await server.waitFor(/listening/)
    const holder = lab.spawn(
      'x',
      "impostor's client",
      SYSTEM_PYTHON,
      [join(lab.tmp, 'hostile_client.py'), a, String(SPORT), b, String(PROFILES.istio!.inboundPort), 'hold'],
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
      join(lab.tmp, 'hostile_client.py'),
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
