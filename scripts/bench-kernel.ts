// Kernel benchmarks (root): list + apply of 110 and 1,000 pods from an HTTPS API server, the time
// from a watch event to the maps being updated, `status` wall time, and `dump-maps` of a map
// holding 65,535 entries (time and peak resident memory), with where status's CPU time goes; then
// an enable that changes nothing and a disable, with the bpftool processes each starts.
// Figures only; nothing here is a test, and the targets are in docs/benchmarks.md.
import {spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {bpftool} from '../src/bpf/bpftool.js'
import {encodeOrigin, encodePair} from '../src/bpf/layout.js'
import {buildObjects, DEFAULT_MAX_CONNECTIONS} from '../src/bpf/objects.js'
import {Installation} from '../src/datapath/installation.js'
import {applyPods} from '../src/datapath/sync.js'
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
/** Holds N loopback connections open until killed (runs as the sidecar's user: nothing redirected). */
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
    for (; added < n; added++)
      api.add(makePod(`pod-${added}`, ip(added), node, true, {'traffic.sidecar.istio.io/excludeOutboundPorts': '22'}))
    const times: number[] = []
    for (let i = 0; i < 5; i++) {
      const s = performance.now()
      const loaded = await loadPods(undefined, node, {kubeconfig})
      await applyPods(inst, objects, loaded.pods, {node, mesh, attachInbound: true, capacity: DEFAULT_MAX_CONNECTIONS})
      times.push(performance.now() - s)
    }
    console.log(`  ${String(n).padStart(5)} pods: ${median(times).toFixed(0)} ms`)
  }

  // watch: event sent by the server -> maps updated, as the watch loop logs it
  await inst.keepHelpers(objects)
  await inst.writeState({
    version: 1,
    bpffs: inst.dir,
    cgroup: '-',
    mesh: 'istio',
    node,
    objectHash: objects.hash,
    enabledAt: new Date().toISOString(),
    mountedBpffs: false,
    hostNetns: '0',
    pods: {source: '', syncedAt: '', meshed: [], unregistered: [], skipped: [], warnings: []},
  })
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
  console.log(`watch event -> maps updated with ${added} pods on the node, 50 events: p50 ${p(0.5)} ms, p99 ${p(0.99)} ms`)

  // inspection: dump-maps of a full pair_original_dst against bpftool's own dump; status on a lab
  const cli = (args: string[]) => {
    const t = performance.now()
    const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, 'bin/run.js', ...args, '--bpffs', inst.dir], {
      encoding: 'utf8',
      env: {...process.env, MERBRIDGE_RUN_DIR: runDir},
      maxBuffer: 1 << 30,
    })
    const ms = performance.now() - t
    if (r.status !== 0 && !args.includes('status')) throw new Error(`${args.join(' ')}: ${r.stderr}`)
    return {ms, rssMb: Number(r.stderr.trim().split('\n').at(-1)) / 1024, bytes: r.stdout.length}
  }
  const lines: string[] = []
  for (let i = 0; i < 65_535; i++) {
    const pair = {
      netns: 0n,
      localIp: ip(i % 1000),
      localPort: 10_000 + (i % 50_000),
      remoteIp: ip(1000 + Math.floor(i / 1000)),
      remotePort: 15006,
    }
    lines.push(
      bpftool.mapUpdateLine(
        inst.map('pair_original_dst'),
        encodePair(pair),
        encodeOrigin({ip: ip(i % 1000), port: 8080, flags: 2, pid: 1}),
      ),
    )
  }
  await bpftool.batch(lines)
  const bpftoolDump = median(
    Array.from({length: 3}, () => {
      const t = performance.now()
      const r = spawnSync('bpftool', ['map', 'dump', 'pinned', inst.map('pair_original_dst'), '-j'], {maxBuffer: 1 << 30})
      if (r.status !== 0) throw new Error(`bpftool map dump: ${String(r.stderr)}`)
      return performance.now() - t
    }),
  )
  console.log(`bpftool map dump -j of pair_original_dst with 65,535 entries, median of 3: ${bpftoolDump.toFixed(0)} ms`)
  for (const mode of [['--json'], []]) {
    const runs = Array.from({length: 3}, () => cli(['dump-maps', 'pair_original_dst', ...mode]))
    const ms = median(runs.map((r) => r.ms))
    const rss = Math.max(...runs.map((r) => r.rssMb))
    console.log(
      `dump-maps pair_original_dst ${mode.join(' ') || '(tables)'}, median of 3: ${ms.toFixed(0)} ms = x${(ms / bpftoolDump).toFixed(2)} bpftool's dump, peak RSS ${rss.toFixed(0)} MB, ${((runs[0]?.bytes ?? 0) / 1e6).toFixed(1)} MB printed`,
    )
  }
  await statusWithConnections()
} finally {
  await api.stop().catch(() => undefined)
  rmSync(inst.dir, {recursive: true, force: true})
  rmSync(runDir, {recursive: true, force: true})
}

/**
 * `status` on an enabled node with 1,000 pods registered and 10,000 live connections (20,000
 * sockets in sock_pair_map): a lab pod whose sidecar user holds loopback connections open, which
 * sockops tracks as it tracks a sidecar's loopback legs.
 */
async function statusWithConnections(): Promise<void> {
  const {Lab} = await import('../src/lab/lab.js')
  const {labScript} = await import('../src/lab/scripts.js')
  const {hostname} = await import('node:os')
  const {writeFileSync} = await import('node:fs')
  const lab = new Lab(mesh)
  const bpffs = `/sys/fs/bpf/merbridge-benchstatus-${process.pid}`
  const env = {...process.env, MERBRIDGE_RUN_DIR: runDir}
  const CONNECTIONS = 10_000
  // bpftool, with a line per process it starts
  const bpftoolLog = join(runDir, 'bpftool.log')
  const countingBpftool = join(runDir, 'bpftool')
  writeFileSync(countingBpftool, `#!/bin/sh\necho >> ${bpftoolLog}\nexec bpftool "$@"\n`, {mode: 0o755})
  const counted = {...env, MERBRIDGE_BPFTOOL: countingBpftool}
  const bpftoolRuns = () => {
    const n = existsSync(bpftoolLog) ? readFileSync(bpftoolLog, 'utf8').length : 0
    rmSync(bpftoolLog, {force: true})
    return n
  }
  const enableArgs: string[] = []
  try {
    await lab.create([{name: 'a', meshed: true}])
    const list = JSON.parse(lab.podList()) as {items: unknown[]}
    for (let i = 0; i < 999; i++) list.items.push(makePod(`idle-${i}`, `10.201.${Math.floor(i / 250)}.${(i % 250) + 2}`, hostname()))
    const podsFile = join(runDir, 'status-pods.json')
    writeFileSync(podsFile, JSON.stringify(list))
    enableArgs.push('bin/run.js', 'enable', '--cgroup', lab.cgroup, '--bpffs', bpffs, '--pods-file', podsFile)
    const e = spawnSync(process.execPath, enableArgs, {encoding: 'utf8', env})
    if (e.status !== 0) throw new Error(`enable: ${e.stderr}`)
    // several processes: a process may hold fewer descriptors than the sockets asked for
    const holders = Array.from({length: 4}, (_, i) =>
      lab.spawn('a', `connection holder ${i}`, 'setpriv', [
        '--reuid',
        String(mesh.sidecarUid),
        '--regid',
        String(mesh.sidecarGid),
        '--clear-groups',
        '/usr/bin/python3',
        labScript(lab.tmp, 'hold_loopback.py'),
        String(CONNECTIONS / 4),
      ]),
    )
    for (const h of holders) await h.waitFor(/^holding \d+/m, 'the connections held', 120_000)
    const status = () => {
      const t = performance.now()
      const r = spawnSync(process.execPath, ['bin/run.js', 'status', '--json', '--bpffs', bpffs], {
        encoding: 'utf8',
        env,
        maxBuffer: 1 << 30,
      })
      return {ms: performance.now() - t, report: JSON.parse(r.stdout) as {verdict: string; maps: {name: string; entries?: number}[]}}
    }
    const first = status()
    const entries = (name: string) => first.report.maps.find((m) => m.name === name)?.entries
    const times = Array.from({length: 7}, () => status().ms)
    const version = spawnSync(process.execPath, ['bin/run.js', '--version'], {encoding: 'utf8'})
    const startup = median(
      Array.from({length: 5}, () => {
        const t = performance.now()
        spawnSync(process.execPath, ['bin/run.js', '--version'], {encoding: 'utf8'})
        return performance.now() - t
      }),
    )
    const [statusCpu, versionCpu] = [cpuProfile(['status', '--json', '--bpffs', bpffs], env), cpuProfile(['--version'], env)]
    console.log(
      `where the time goes, from one CPU profile of each (ms; status, --version): ${Object.keys(statusCpu)
        .map((k) => `${k} ${(statusCpu[k] ?? 0).toFixed(0)}, ${(versionCpu[k] ?? 0).toFixed(0)}`)
        .join('; ')}`,
    )
    console.log(
      `status --json with ${entries('local_pod_ips')} pods registered and ${entries('sock_pair_map')} sockets in sock_pair_map (verdict ${first.report.verdict}), median of 7: ${median(times).toFixed(0)} ms; \`merbridge --version\` (${version.stdout.trim()}) alone: ${startup.toFixed(0)} ms; status takes ${(median(times) - startup).toFixed(0)} ms more`,
    )
    for (const h of holders) await h.stop()
    enableAgain()
  } finally {
    const t = performance.now()
    const d = spawnSync(process.execPath, ['bin/run.js', 'disable', '--bpffs', bpffs], {env: counted, encoding: 'utf8'})
    if (d.status !== 0) console.error(`disable of ${bpffs} failed, remove it by hand: ${d.stderr}`)
    else console.log(`disable of that node: ${(performance.now() - t).toFixed(0)} ms, ${bpftoolRuns()} bpftool processes`)
    await lab.destroy()
  }

  /** enable run again with what is enabled: what a node's systemd unit or DaemonSet restart pays */
  function enableAgain(): void {
    bpftoolRuns()
    const times = Array.from({length: 3}, () => {
      const t = performance.now()
      const r = spawnSync(process.execPath, enableArgs, {encoding: 'utf8', env: counted})
      if (r.status !== 0) throw new Error(`enable again: ${r.stderr}`)
      return performance.now() - t
    })
    console.log(
      `enable again on that node (nothing to change), median of 3: ${median(times).toFixed(0)} ms, ${bpftoolRuns() / 3} bpftool processes each`,
    )
  }
}

interface CpuProfile {
  nodes: {id: number; callFrame: {functionName: string; url: string}; children?: number[]}[]
  samples: number[]
  timeDeltas: number[]
}

/**
 * One run of the CLI under V8's sampling profiler, its samples sorted by what they were doing:
 * loading modules (Node's module loader and whatever runs under it: the imports' own top-level
 * code), waiting (idle: for bpftool, say), garbage collection, and running the command.
 */
function cpuProfile(args: string[], env: NodeJS.ProcessEnv): Record<string, number> {
  const dir = mkdtempSync(join(runDir, 'profile-'))
  const r = spawnSync(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${dir}`, 'bin/run.js', ...args], {env, maxBuffer: 1 << 30})
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
  if (!file) throw new Error(`no profile of ${args.join(' ')}: ${String(r.stderr)}`)
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as CpuProfile
  const parent = new Map<number, number>()
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const kind = (id: number): string => {
    const own = byId.get(id)?.callFrame.functionName
    if (own === '(idle)') return 'waiting'
    if (own === '(garbage collector)') return 'garbage collection'
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at))
      if (byId.get(at)?.callFrame.url.startsWith('node:internal/modules/')) return 'loading modules'
    return 'running'
  }
  const ms: Record<string, number> = {'loading modules': 0, running: 0, 'garbage collection': 0, waiting: 0}
  profile.samples.forEach((id, i) => (ms[kind(id)] = (ms[kind(id)] ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000))
  return ms
}
