// merbridge as a node service: `sync --watch --metrics-addr` scraped over HTTP during lab traffic,
// its readiness before and after the first sync, SIGTERM leaving the datapath attached, and
// enable --host-proc finding pods from inside a container-like mount and PID namespace.
import assert from 'node:assert/strict'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {createServer} from 'node:net'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {APP_PORT, Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {StatusReport} from '../../src/datapath/status.js'
import type {EnableResult} from '../../src/commands/enable.js'
import {FakeApiServer, type FakePod} from '../support/fake-apiserver.js'
import {
  BIN,
  cli,
  eventually,
  kernelSkipReason,
  parseJson,
  RunningCli,
  uniqueInstall,
  suiteTimeout,
  requestsPassBothSidecars,
} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'unshare'])

/** Samples of a Prometheus text exposition, checked line by line against the format. */
export function parseExposition(text: string): Map<string, number> {
  const types = new Map<string, string>()
  const samples = new Map<string, number>()
  const family = (name: string) => [name, name.replace(/_(bucket|sum|count)$/, '')].find((n) => types.has(n))
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue
    const where = `line ${i + 1}: ${line}`
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line)
    if (meta) {
      if (meta[1] === 'TYPE') {
        assert.match(meta[3]!, /^(counter|gauge|histogram|summary|untyped)$/, where)
        types.set(meta[2]!, meta[3]!)
      }
      continue
    }
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line)
    assert.ok(m, `not a sample: ${where}`)
    assert.ok(family(m[1]!), `a sample before its # TYPE: ${where}`)
    samples.set(`${m[1]!}${m[2] ?? ''}`.replace(/,\}$/, '}'), Number(m[3]))
  }
  assert.ok(types.size > 0, 'no metric families')
  return samples
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as {port: number}).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

describe('node service', {skip, timeout: suiteTimeout(300_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const api = new FakeApiServer()
  const tmp = mkdtempSync(join(tmpdir(), 'mb-service-'))
  let kubeconfig = ''
  let podsFile = ''

  before(async () => {
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
    ])
    for (const p of ['a', 'b']) await lab.sidecars.start(p)
    await lab.clients.startApp('b')
    podsFile = lab.writePodList()
    await api.start()
    for (const pod of (JSON.parse(lab.podList()) as {items: FakePod[]}).items) api.add(pod)
    kubeconfig = api.writeKubeconfig(join(tmp, 'kubeconfig'))
    const e = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], install.env)
    assert.equal(e.code, 0, e.stderr)
  })

  after(async () => {
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await api.stop()
    await lab.destroy()
    install.cleanup()
    rmSync(tmp, {recursive: true, force: true})
  })

  it('serves health at once, readiness after the first sync, and metrics that follow the traffic; SIGTERM leaves the datapath attached', async () => {
    const port = await freePort()
    const base = `http://127.0.0.1:${port}`
    const get = async (path: string) => {
      const r = await fetch(base + path)
      return {status: r.status, text: await r.text(), type: r.headers.get('content-type') ?? ''}
    }
    api.holdLists() // the watch's first list waits: the node service is up but has not synced
    let watch: RunningCli | undefined
    try {
      watch = new RunningCli(
        [
          'sync',
          '--watch',
          '--json',
          '--metrics-addr',
          `127.0.0.1:${port}`,
          '--bpffs',
          install.bpffs,
          '--kubeconfig',
          kubeconfig,
          '--node',
          hostname(),
        ],
        install.env,
      )
      await eventually('/healthz answers', async () => (await get('/healthz').catch(() => ({status: 0}))).status === 200)
      await eventually('the first list is waiting', () => api.listsHeld > 0)
      const early = await get('/readyz')
      assert.deepEqual([early.status, early.text], [503, 'the first sync of the pods has not finished\n'])

      api.releaseLists()
      await eventually('/readyz says ready', async () => (await get('/readyz')).status === 200)
      const before = await get('/metrics')
      assert.match(before.type, /^text\/plain; version=0\.0\.4/)
      const m0 = parseExposition(before.text)
      assert.equal(m0.get('merbridge_map_entries{map="local_pod_ips"}'), 2)
      assert.equal(m0.get('merbridge_pods{state="registered"}'), 2)
      assert.equal(m0.get('merbridge_datapath_healthy'), 1)
      assert.ok(
        [...m0.keys()].some((k) => k.startsWith('merbridge_build_info{version="')),
        'build info',
      )
      assert.ok((m0.get('merbridge_sync_duration_seconds_count{cause="relisted"}') ?? 0) >= 1, 'the first sync is counted')
      assert.ok((m0.get('merbridge_map_max_entries{map="sock_pair_map"}') ?? 0) > 0)
      assert.ok((m0.get('merbridge_map_memory_bytes{map="pair_original_dst"}') ?? 0) > 0)

      await requestsPassBothSidecars(lab, 3)
      const m1 = parseExposition((await get('/metrics')).text)
      const outbound = 'merbridge_datapath_conn_outbound_total'
      assert.ok((m1.get(outbound) ?? 0) >= (m0.get(outbound) ?? 0) + 3, `${outbound}: ${m0.get(outbound)} -> ${m1.get(outbound)}`)
      assert.ok((m1.get('merbridge_datapath_msg_redirected_total') ?? 0) > (m0.get('merbridge_datapath_msg_redirected_total') ?? 0))

      // a pod change arriving from the API is applied and its lag measured
      const c = {...(JSON.parse(lab.podList()) as {items: FakePod[]}).items[0]!}
      c.metadata = {...c.metadata, name: 'late', annotations: {...c.metadata.annotations}}
      c.status = {...c.status, podIP: '10.77.9.9', podIPs: [{ip: '10.77.9.9'}]}
      api.add(c)
      await eventually(
        'the watch lag is measured',
        async () => (parseExposition((await get('/metrics')).text).get('merbridge_watch_lag_seconds_count') ?? 0) >= 1,
      )

      const stream = lab.clients.openStream('a', `http://${lab.pod('b').ip}:${APP_PORT}`)
      await stream.flowingPast(0, 'before SIGTERM')
      const ended = await watch.stop()
      assert.equal(ended.exitCode, 0, watch.output)
      watch = undefined
      await stream.flowingPast(stream.bytes, 'after SIGTERM')
      const got = await stream.release()
      assert.equal(got.code, 0, JSON.stringify(got))
      await requestsPassBothSidecars(lab, 3)
      const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
      assert.equal(status.verdict, 'healthy', status.problems.join('; '))
    } finally {
      api.releaseLists()
      await watch?.kill()
      // the pod added above: back to the lab's own
      api.delete('lab', 'late')
    }
  })

  it('reports a meshed pod that stays unregistered, and for how long: status, /readyz and the metrics', async () => {
    const port = await freePort()
    const get = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${port}${path}`)
      return {status: r.status, text: await r.text()}
    }
    // a meshed pod of this node whose network namespace no sync finds (its address is nowhere)
    const ghost = {...(JSON.parse(lab.podList()) as {items: FakePod[]}).items[0]!}
    ghost.metadata = {...ghost.metadata, name: 'ghost', annotations: {...ghost.metadata.annotations}}
    ghost.status = {...ghost.status, podIP: '10.77.9.8', podIPs: [{ip: '10.77.9.8'}]}
    api.add(ghost)
    let watch: RunningCli | undefined
    try {
      const s = await cli(['sync', '--bpffs', install.bpffs, '--kubeconfig', kubeconfig, '--node', hostname()], install.env)
      assert.equal(s.code, 0, s.stderr)
      // as a record five minutes old would say: the time a sync first found it stays with it
      const inst = install.installation()
      const state = await inst.readState()
      assert.ok(state)
      const since = new Date(Date.now() - 300_000).toISOString()
      assert.deepEqual(
        state.pods.unregistered.map((p) => p.name),
        ['ghost'],
      )
      await inst.writeState({...state, pods: {...state.pods, unregistered: state.pods.unregistered.map((p) => ({...p, since}))}})
      const again = await cli(['sync', '--bpffs', install.bpffs, '--kubeconfig', kubeconfig, '--node', hostname()], install.env)
      assert.equal(again.code, 0, again.stderr)
      const text = await cli(['status', '--bpffs', install.bpffs], install.env)
      assert.match(text.stdout, /lab\/ghost 10\.77\.9\.8: network namespace not found on this node for 5m \d+s/)
      assert.equal(
        parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout).pods?.unregistered[0]
          ?.since,
        since,
      )

      watch = new RunningCli(
        [
          'sync',
          '--watch',
          '--metrics-addr',
          `127.0.0.1:${port}`,
          '--bpffs',
          install.bpffs,
          '--kubeconfig',
          kubeconfig,
          '--node',
          hostname(),
        ],
        install.env,
      )
      await eventually('/readyz names the pod', async () =>
        (await get('/readyz').catch(() => ({status: 0, text: ''}))).text.startsWith(
          '1 meshed pod(s) not registered: lab/ghost (10.77.9.8) for 5m',
        ),
      )
      assert.equal((await get('/readyz')).status, 503)
      const seconds =
        parseExposition((await get('/metrics')).text).get('merbridge_pod_unregistered_seconds{namespace="lab",pod="ghost"}') ?? 0
      assert.ok(seconds >= 300, `merbridge_pod_unregistered_seconds: ${seconds}`)
      api.delete('lab', 'ghost')
      await eventually('/readyz says ready once the pod is gone', async () => (await get('/readyz')).status === 200)
    } finally {
      await watch?.kill()
      api.delete('lab', 'ghost')
    }
  })

  it('answers /healthz from the first second of a slow enable --watch, and a burst of scrapes costs about one reading', async () => {
    // a bpftool that logs every run, and holds enable at its attach step until told to go
    const dir = mkdtempSync(join(tmp, 'early-'))
    const runs = join(dir, 'runs')
    const mark = join(dir, 'attaching')
    const tool = join(dir, 'bpftool')
    writeFileSync(
      tool,
      `#!/bin/sh\necho "$*" >> "${runs}"\ncase "$*" in *"cgroup attach"*) touch "${mark}"; while [ ! -e "${mark}.go" ]; do sleep 0.05; done;; esac\nexec bpftool "$@"\n`,
    )
    chmodSync(tool, 0o755)
    const count = () => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n').filter(Boolean).length : 0)
    const mine = uniqueInstall()
    const cgroup = `${lab.cgroup}-early`
    mkdirSync(cgroup)
    const port = await freePort()
    const get = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${port}${path}`)
      return {status: r.status, text: await r.text()}
    }
    // a node name with no pods: the lab's pods belong to the suite's own installation
    const service = new RunningCli(
      [
        'enable',
        '--watch',
        '--metrics-addr',
        `127.0.0.1:${port}`,
        '--cgroup',
        cgroup,
        '--bpffs',
        mine.bpffs,
        '--kubeconfig',
        kubeconfig,
        '--node',
        'early-node',
      ],
      {...mine.env, MERBRIDGE_BPFTOOL: tool},
    )
    try {
      await eventually('enable to reach its attach step', () => existsSync(mark))
      assert.equal((await get('/healthz')).status, 200, 'alive while enable works')
      assert.deepEqual(await get('/readyz'), {status: 503, text: 'enable is under way\n'})
      writeFileSync(`${mark}.go`, '')
      await eventually('/readyz says ready', async () => (await get('/readyz')).status === 200)

      const before = count()
      assert.equal((await get('/metrics')).status, 200)
      const one = count() - before
      assert.ok(one > 0, 'a scrape reads the kernel')
      const burst = count()
      const answers = await Promise.all(Array.from({length: 200}, (_, i) => get(i % 2 ? '/metrics' : '/readyz')))
      assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([200]))
      const cost = count() - burst
      // shared readings: a few at most while the burst arrives (one each would be 200 readings)
      assert.ok(cost <= 20 * one, `200 concurrent scrapes ran bpftool ${cost} times; one scrape runs it ${one} times`)
    } finally {
      writeFileSync(`${mark}.go`, '')
      await service.stop()
      await cli(['disable', '--bpffs', mine.bpffs], mine.env)
      rmdirSync(cgroup)
      mine.cleanup()
    }
  })

  it('refuses --metrics-addr without --watch, and an address that is not HOST:PORT, before changing anything', async () => {
    const without = await cli(['sync', '--metrics-addr', '127.0.0.1:9473', '--bpffs', install.bpffs, '--pods-file', podsFile], install.env)
    assert.equal(without.code, 2)
    assert.match(without.stderr, /--metrics-addr serves metrics while watching: add --watch/)
    const bad = await cli(['sync', '--watch', '--metrics-addr', 'nine', '--bpffs', install.bpffs, '--kubeconfig', kubeconfig], install.env)
    assert.equal(bad.code, 2)
    assert.deepEqual(
      bad.stderr.split('\n').filter((l) => l.startsWith('Error:')),
      ['Error: --metrics-addr "nine" is not HOST:PORT'],
    )
  })

  it("finds the pods through --host-proc from a container's own PID namespace, and not without it", async () => {
    // a mount and PID namespace of its own, as a container has: its /proc shows only itself, and
    // its /run is its own (the host's named namespaces are not there); the host's /proc is bound
    // at another path first, as the DaemonSet mounts it at /host/proc
    const hostProc = join(tmp, 'host', 'proc')
    const script = join(tmp, 'in-container.sh')
    writeFileSync(
      script,
      `set -e\nmkdir -p "${hostProc}"\nmount --rbind /proc "${hostProc}"\nmount -t proc proc /proc\n[ -d /run/netns ] && mount -t tmpfs none /run/netns\nexec "$@"\n`,
    )
    const inContainer = async (extra: string[]) => {
      // the DaemonSet's entrypoint, enable (here with a pods file instead of the API)
      const r = await execa(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          '--pid',
          '--fork',
          'sh',
          script,
          process.execPath,
          BIN,
          'enable',
          '--json',
          '--cgroup',
          lab.cgroup,
          '--bpffs',
          install.bpffs,
          '--pods-file',
          podsFile,
          ...extra,
        ],
        {env: {...install.env, NO_COLOR: '1'}, reject: false, stdin: 'ignore'},
      )
      assert.equal(r.exitCode, 0, r.stdout + r.stderr)
      return parseJson<EnableResult>(r.stdout).pods
    }
    const blind = await inContainer([])
    assert.deepEqual(blind.meshed, [], 'without --host-proc the container sees no pod namespace')
    assert.deepEqual(blind.unregistered.map((p) => p.name).sort(), ['a', 'b'])
    const seeing = await inContainer(['--host-proc', hostProc])
    assert.deepEqual(seeing.meshed.map((p) => p.name).sort(), ['a', 'b'])
    // and the datapath still carries a -> b through both sidecars
    await requestsPassBothSidecars(lab, 2)
  })
})
