// Pods from a real HTTPS API server kept in sync with the datapath on the kernel lab.
import assert from 'node:assert/strict'
import {type ChildProcess, spawn} from 'node:child_process'
import {once} from 'node:events'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {bpftool} from '../../src/bpf/bpftool.js'
import {ipToSlot} from '../../src/bpf/ip.js'
import {CAPTURE_ALL, encodePodRules} from '../../src/bpf/layout.js'
import {readMaps} from '../../src/bpf/maps.js'
import {APP_PORT, Lab, NODE as NODE_NS} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {EnableResult} from '../../src/commands/enable.js'
import {lockName} from '../../src/datapath/lock.js'
import {BIN, cli, eventually, kernelSkipReason, parseJson, uniqueInstall, suiteTimeout} from '../helpers.js'
import {FakeApiServer, makePod} from '../support/fake-apiserver.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'openssl'])
const NODE = 'lab-node'
const EXCLUDE_OUT = 'traffic.sidecar.istio.io/excludeOutboundPorts'

describe('pods kept in sync from the Kubernetes API', {skip, timeout: suiteTimeout(180_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const api = skip ? (undefined as unknown as FakeApiServer) : new FakeApiServer()
  let kubeconfig = ''
  let watcher: ChildProcess | undefined
  let watchLog = ''
  const flags = () => ['--kubeconfig', kubeconfig, '--node', NODE, '--bpffs', install.bpffs]
  const remote = async (from: string, to: string, port = APP_PORT) => {
    const r = await lab.clients.get(from, `http://${lab.pod(to).ip}:${port}/whoami`)
    assert.equal(r.status, 200, r.error)
    return (JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress
  }
  /** Poll until the condition holds; returns how long it took (a diagnostic, not an assertion). */
  const until = async (what: string, cond: () => boolean | Promise<boolean>) => eventually(what, cond, () => `watch log:\n${watchLog}`)
  const registered = async () => new Set((await readMaps.netnsPods(inst)).map((p) => p.ip))
  const local = async () => new Set((await readMaps.localPods(inst)).map((p) => p.ip))

  before(async () => {
    await api.start()
    kubeconfig = api.writeKubeconfig(join(api.dir, 'kubeconfig'))
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'd', meshed: true},
    ])
    for (const p of ['a', 'b', 'd']) {
      await lab.sidecars.start(p)
      if (p !== 'a') await lab.clients.startApp(p)
    }
    // b also serves on a second port, for the annotation that excludes it
    await lab.clients.startApp('b', 8081)
    api.add(makePod('a', lab.pod('a').ip, NODE))
    api.add(makePod('b', lab.pod('b').ip, NODE))
    api.add(makePod('elsewhere', '10.99.0.9', 'another-node'))
  })

  after(async () => {
    watcher?.kill('SIGKILL')
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await lab.destroy()
    await api.stop()
    install.cleanup()
  })

  it('enables with the pods the API lists for this node', async () => {
    const r = await cli(['enable', '--cgroup', lab.cgroup, ...flags(), '--json'], install.env)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const out = parseJson<EnableResult>(r.stdout)
    assert.match(out.pods.source, /the Kubernetes API at https:\/\/127\.0\.0\.1:\d+ \(node lab-node\)/)
    assert.deepEqual(out.pods.meshed.map((p) => p.name).sort(), ['a', 'b'])
    assert.equal(await remote('a', 'b'), '127.0.0.6')
  })

  it('fails in one line and leaves the maps as they were when the API cannot be used', async () => {
    const before = await readMaps.localPods(inst)
    const cases: [string, RegExp][] = [
      [
        api.writeKubeconfig(join(api.dir, 'down'), {server: 'https://127.0.0.1:1'}),
        /cannot reach the Kubernetes API at https:\/\/127\.0\.0\.1:1/,
      ],
      [api.writeKubeconfig(join(api.dir, 'token'), {token: 'expired'}), /refused the credentials .*\(401 Unauthorized\)/],
      [api.writeKubeconfig(join(api.dir, 'forbidden'), {token: 'forbidden-token'}), /\(403 Forbidden\)/],
    ]
    for (const [file, message] of cases) {
      const r = await cli(['sync', '--kubeconfig', file, '--node', NODE, '--bpffs', install.bpffs], install.env)
      assert.equal(r.code, 1, r.stdout)
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('Error:'))
      assert.equal(lines.length, 1, r.stderr)
      assert.match(lines[0]!, message)
    }
    const bad = await cli(['sync', '--pods-file', '-', '--bpffs', install.bpffs], install.env, '{"items": [')
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /standard input is not valid JSON/)
    assert.deepEqual(await readMaps.localPods(inst), before)
  })

  it('watches: a pod added to the API is intercepted', async (t) => {
    watcher = spawn(process.execPath, [BIN, 'sync', '--watch', '--json', '--recheck', '1', ...flags()], {
      env: {...process.env, ...install.env},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    watcher.stdout!.on('data', (d: Buffer) => (watchLog += d.toString()))
    watcher.stderr!.on('data', (d: Buffer) => (watchLog += d.toString()))
    await until('the first list', () => watchLog.includes('"event":"listed"'))

    assert.notEqual(await remote('a', 'd'), '127.0.0.6', 'd is not meshed yet')
    api.add(makePod('d', lab.pod('d').ip, NODE))
    const ms = await until('d registered', async () => (await registered()).has(lab.pod('d').ip))
    assert.equal(await remote('a', 'd'), '127.0.0.6', "through d's inbound sidecar")
    await until('the addition logged', () => watchLog.includes('"event":"added","pod":"lab/d"'))
    t.diagnostic(`pod added -> registered in ${ms} ms`)
  })

  it("watches: waits for the installation's lock before it changes the maps", async () => {
    // another command holding the installation (a lock the kernel releases with its holder)
    const holder = execa(
      process.execPath,
      ['-e', `require('node:net').createServer().listen({path: ${JSON.stringify(lockName(install.bpffs))}}, () => console.log('held'))`],
      {reject: false},
    )
    try {
      await once(holder.stdout, 'data')
      api.delete('lab', 'd')
      // held open: the watch has the change and must not write while the lock is taken
      await new Promise((resolve) => setTimeout(resolve, 2000))
      assert.ok((await registered()).has(lab.pod('d').ip), 'the watch wrote the maps while another command held the installation')
    } finally {
      holder.kill('SIGKILL')
      await holder
    }
    await until('d released once the lock is free', async () => !(await registered()).has(lab.pod('d').ip))
    api.add(makePod('d', lab.pod('d').ip, NODE))
    await until('d registered again', async () => (await registered()).has(lab.pod('d').ip))
  })

  it('watches: a deleted pod is released', async () => {
    api.delete('lab', 'd')
    await until('d released', async () => !(await local()).has(lab.pod('d').ip) && !(await registered()).has(lab.pod('d').ip))
    const before = (await readMaps.counters(inst)).connInbound
    // d's namespace outlives the pod only in the lab: it keeps merbridge's filter until disable and
    // its sidecar still listens, so what arrives there for an address no pod is registered at is
    // captured (fail closed, as the outbound of an unregistered namespace is)
    assert.equal(await remote('a', 'd'), '127.0.0.6')
    assert.equal((await readMaps.counters(inst)).connInbound, before, "a's sidecar no longer sends to d's inbound port")
  })

  it('watches: repairs map entries something else changed, at the next re-check', async () => {
    const b = lab.pod('b').ip
    const [entry] = (await readMaps.localPods(inst)).filter((p) => p.ip === b)
    assert.ok(entry, "b's rules are in the map")
    await bpftool.batch([
      bpftool.mapDeleteLine(inst.map('local_pod_ips'), ipToSlot(b)),
      bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot('10.99.9.9'), encodePodRules(CAPTURE_ALL)),
    ])
    await until('the maps repaired', async () => {
      const now = await readMaps.localPods(inst)
      return now.some((p) => p.ip === b) && !now.some((p) => p.ip === '10.99.9.9')
    })
    assert.deepEqual(
      (await readMaps.localPods(inst)).find((p) => p.ip === b),
      entry,
    )
    await until('the repair logged', () => watchLog.includes('"event":"repaired","written":1,"deleted":1'))
    assert.equal(await remote('a', 'b'), '127.0.0.6', "through b's inbound sidecar again")
  })

  it('watches: puts back inbound capture another tool took off a pod, at the next re-check', async () => {
    const tcIn = (...args: string[]) => execa('tc', ['-n', lab.pod('b').netns, ...args])
    const ours = async () => (await tcIn('-j', 'filter', 'show', 'dev', 'eth0', 'ingress')).stdout.includes('"kind":"bpf"')
    assert.ok(await ours(), "b's eth0 has inbound capture")
    // as a tool that resets a pod's qdiscs would (that succeeding is the removal: a re-check may
    // put it back before another look)
    await tcIn('qdisc', 'del', 'dev', 'eth0', 'clsact')
    await until("b's inbound capture put back", ours)
    assert.equal(await remote(NODE_NS, 'b'), '127.0.0.6', "from the node through b's inbound sidecar again")
  })

  it('watches: registers an address a pod gains after it was registered, at the next re-check', async () => {
    const ns = lab.pod('b').netns
    await execa('ip', ['-n', ns, 'addr', 'add', '10.66.0.9/32', 'dev', 'eth0'])
    try {
      await until("b's new address registered", async () =>
        (await readMaps.otherIps(inst)).some((o) => o.ip === '10.66.0.9' && o.owner === lab.pod('b').ip),
      )
    } finally {
      await execa('ip', ['-n', ns, 'addr', 'del', '10.66.0.9/32', 'dev', 'eth0'])
    }
    await until("b's address released once gone", async () => !(await readMaps.otherIps(inst)).some((o) => o.ip === '10.66.0.9'))
  })

  it("watches: an annotation excluding an outbound port bypasses the pod's own sidecar for that port only", async () => {
    api.modify(makePod('a', lab.pod('a').ip, NODE, true, {[EXCLUDE_OUT]: '8081'}))
    await until("a's rules updated", async () =>
      (await readMaps.localPods(inst)).some((p) => p.ip === lab.pod('a').ip && p.rules.outExcludePorts.includes(8081)),
    )
    const outbound = async () => (await readMaps.counters(inst)).connOutbound
    // 8081 leaves a without its outbound sidecar (b's inbound sidecar still takes it, as under Istio)
    const before = await outbound()
    assert.equal(await remote('a', 'b', 8081), '127.0.0.6')
    assert.equal(await outbound(), before, "port 8081 did not go to a's outbound sidecar")
    assert.equal(await remote('a', 'b'), '127.0.0.6')
    assert.equal(await outbound(), before + 1, "port 8080 still went to a's outbound sidecar")
  })

  it('watches: survives a dropped connection and a 410 Gone', async () => {
    api.dropWatches()
    api.add(makePod('d', lab.pod('d').ip, NODE))
    await until('d registered after reconnecting', async () => (await registered()).has(lab.pod('d').ip))
    api.compact()
    api.delete('lab', 'd')
    await until('d released after listing again', async () => !(await registered()).has(lab.pod('d').ip))
    assert.match(watchLog, /410 Gone/)
  })

  it('watches: a pod whose namespace is not there yet is reported, then registered when it appears', async () => {
    const ip = lab.nextIp()
    api.add(makePod('late', ip, NODE))
    await until('reported as not found', () => watchLog.includes('"event":"added","pod":"lab/late","state":"not-found"'))
    assert.ok(!(await registered()).has(ip))
    assert.ok((await local()).has(ip), 'its IP is known to the other sidecars already')
    await lab.addPod({name: 'late', meshed: true})
    await until('registered by the retry', async () => (await registered()).has(ip))
    // the log line follows the map write
    await until('the retry logged', () => watchLog.includes('"event":"registered","pod":"lab/late"'))
  })

  it('stops cleanly on SIGTERM', async () => {
    watcher!.kill('SIGTERM')
    const [code] = (await once(watcher!, 'exit')) as [number | null]
    assert.equal(code, 0, watchLog)
    watcher = undefined
  })

  it('watches: captures on an interface a pod gains once a connection arrives there, without waiting for the re-check', async () => {
    // a re-check too far off to be what attaches it
    watcher = spawn(process.execPath, [BIN, 'sync', '--watch', '--json', '--recheck', '600', ...flags()], {
      env: {...process.env, ...install.env},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    watchLog = ''
    watcher.stdout!.on('data', (d: Buffer) => (watchLog += d.toString()))
    watcher.stderr!.on('data', (d: Buffer) => (watchLog += d.toString()))
    try {
      await until('the first list', () => watchLog.includes('"event":"listed"'))
      await lab.links.addLinkedPod({name: 'y-b'}, 'b', 'side1')
      // the guard holds its SYNs (the app never sees it directly); the watch attaches tc there,
      // and the client's next retransmission goes through b's inbound sidecar
      const r = await lab.clients.get('y-b', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`, undefined, undefined, 100_000)
      assert.equal(r.status, 200, r.error)
      assert.equal((JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress, '127.0.0.6')
      await until('the re-check logged', () => /"event":"uncovered","drops":[1-9]/.test(watchLog))
    } finally {
      watcher.kill('SIGTERM')
      await once(watcher, 'exit')
      watcher = undefined
    }
  })
})
