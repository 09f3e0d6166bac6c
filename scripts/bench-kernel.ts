// Kernel benchmarks (root): list + apply of 110 and 1,000 pods from an HTTPS API server, the time
// from a watch event to the maps being updated, `status` wall time, and `dump-maps` of a map
// holding 65,535 entries (time and peak resident memory). Figures only; nothing here is a test.
import {spawnSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {bpftool} from '../src/bpf/bpftool.js'
import {encodeOrigin, encodePair} from '../src/bpf/layout.js'
import {buildObjects} from '../src/bpf/objects.js'
import {Installation} from '../src/datapath/installation.js'
import {applyPods} from '../src/datapath/pods-sync.js'
import {runWatch} from '../src/datapath/watch-loop.js'
import {loadPods} from '../src/kube/source.js'
import {median} from '../src/lab/wrk.js'
import {meshProfile} from '../src/mesh/profiles.js'
import {FakeApiServer, makePod} from '../test/support/fake-apiserver.js'

if (process.getuid?.() !== 0) {
  console.log('sync benchmarks skipped: they need root (they load maps into the kernel)')
  process.exit(0)
}
const node = 'bench-node'
const mesh = meshProfile('istio')
const runDir = mkdtempSync(join(tmpdir(), 'mb-bench-run-'))
process.env.MERBRIDGE_RUN_DIR = runDir
const inst = new Installation(`/sys/fs/bpf/merbridge-benchsync-${process.pid}`)
const api = new FakeApiServer()
const ip = (i: number) => `10.200.${Math.floor(i / 250)}.${(i % 250) + 2}`

try {
  const objects = await buildObjects()
  mkdirSync(inst.dir)
  await bpftool.loadAll(objects.datapath, inst.progDir, inst.mapDir)
  await api.start()
  const kubeconfig = api.writeKubeconfig(join(api.dir, 'kubeconfig'))

  const t0 = performance.now()
  await import('@kubernetes/client-node')
  console.log(`import of @kubernetes/client-node: ${(performance.now() - t0).toFixed(0)} ms (once per process; not in the figures below)`)
  console.log('list + apply (API list, pod selection, netns scan, one bpftool batch), median of 5 (ms):')
  let added = 0
  for (const n of [110, 1000]) {
    for (; added < n; added++) api.add(makePod(`pod-${added}`, ip(added), node, true, {'traffic.sidecar.istio.io/excludeOutboundPorts': '22'}))
    const times: number[] = []
    for (let i = 0; i < 5; i++) {
      const s = performance.now()
      const loaded = await loadPods(undefined, node, {kubeconfig})
      await applyPods(inst, objects, loaded.pods, {node, mesh, attachInbound: true})
      times.push(performance.now() - s)
    }
    console.log(`  ${String(n).padStart(5)} pods: ${median(times).toFixed(0)} ms (target ${n <= 110 ? '<= 300' : '<= 1,500'})`)
  }

  // watch: event sent by the server -> maps updated, as the watch loop logs it
  await inst.writeState({version: 1, bpffs: inst.dir, cgroup: '-', mesh: 'istio', node, objectHash: objects.hash, enabledAt: new Date().toISOString(), mountedBpffs: false, hostNetns: '0', pods: {source: '', syncedAt: '', meshed: [], unregistered: [], skipped: [], warnings: []}})
  const controller = new AbortController()
  const sent = new Map<string, number>()
  const latencies: number[] = []
  let listed!: () => void
  const ready = new Promise<void>((r) => (listed = r))
  const watching = runWatch(inst, {
    kube: {kubeconfig},
    node,
    mesh,
    signal: controller.signal,
    retryMs: 60_000,
    log: (_line, event) => {
      if (event?.event === 'listed') listed()
      const at = sent.get(String(event?.pod))
      if (at !== undefined) latencies.push(performance.now() - at)
    },
  })
  await ready
  await new Promise((r) => setTimeout(r, 300))
  for (let i = 0; i < 50; i++) {
    const name = `watched-${i}`
    sent.set(`lab/${name}`, performance.now())
    api.add(makePod(name, ip(2000 + i), node))
    while (latencies.length <= i) await new Promise((r) => setTimeout(r, 2))
  }
  controller.abort()
  await watching
  latencies.sort((a, b) => a - b)
  const p = (q: number) => (latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN).toFixed(0)
  console.log(`watch event -> maps updated with ${added} pods on the node, 50 events: p50 ${p(0.5)} ms, p99 ${p(0.99)} ms (target p99 <= 200)`)

  // inspection: status, and dump-maps of a full pair_original_dst
  const cli = (args: string[]) => {
    const t = performance.now()
    const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, 'bin/run.js', ...args, '--bpffs', inst.dir], {encoding: 'utf8', env: {...process.env, MERBRIDGE_RUN_DIR: runDir}, maxBuffer: 1 << 30})
    const ms = performance.now() - t
    if (r.status !== 0 && !args.includes('status')) throw new Error(`${args.join(' ')}: ${r.stderr}`)
    return {ms, rssMb: Number(r.stderr.trim().split('\n').at(-1)) / 1024, bytes: r.stdout.length}
  }
  const statusTimes = Array.from({length: 5}, () => cli(['status', '--json']).ms)
  console.log(`status --json wall time, median of 5: ${median(statusTimes).toFixed(0)} ms (target <= 300)`)
  const lines: string[] = []
  for (let i = 0; i < 65_535; i++) {
    const pair = {netns: 0n, localIp: ip(i % 1000), localPort: 10_000 + (i % 50_000), remoteIp: ip(1000 + Math.floor(i / 1000)), remotePort: 15006}
    lines.push(bpftool.mapUpdateLine(inst.map('pair_original_dst'), encodePair(pair), encodeOrigin({ip: ip(i % 1000), port: 8080, flags: 2, pid: 1})))
  }
  await bpftool.batch(lines)
  for (const mode of [['--json'], []]) {
    const r = cli(['dump-maps', 'pair_original_dst', ...mode])
    console.log(`dump-maps pair_original_dst ${mode.join(' ') || '(tables)'} with 65,535 entries: ${r.ms.toFixed(0)} ms, peak RSS ${r.rssMb.toFixed(0)} MB, ${(r.bytes / 1e6).toFixed(1)} MB printed (targets <= 1,500 ms, <= 200 MB)`)
  }
} finally {
  await api.stop().catch(() => undefined)
  rmSync(inst.dir, {recursive: true, force: true})
  rmSync(runDir, {recursive: true, force: true})
}
