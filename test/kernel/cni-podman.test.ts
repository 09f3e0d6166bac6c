// CNI mode with a real runtime: Debian's podman, its CNI backend and the reference plugins
// (bridge, host-local) in a network configuration of the test's own, merbridge-cni put at its end
// by `enable --watch --cni-conf-dir`. Each pod is a podman pod (its infra container holds the
// network namespace, as a Kubernetes sandbox does); its sidecar is haproxy as the mesh's proxy
// user, started in that namespace once the runtime made it; its app is a container of the pod.
// The API knows every pod by name, and none by address: only the runtime's call can register it.
//
// For the node's safety: the runtime's configuration, plugin folder, bridge, subnet and cgroup
// are the test's own (podman reads them through CONTAINERS_CONF); the host's /etc/cni is never read.
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {get} from 'node:http'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {readMaps} from '../../src/bpf/maps.js'
import {LabProcess} from '../../src/lab/process.js'
import {haproxyConfig, parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import {FakeApiServer, makePod} from '../support/fake-apiserver.js'
import {cli, eventually, RunningCli, kernelSkipReason, ROOT, suiteTimeout, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'podman', 'catatonit', 'mmdebstrap'])
const mesh = PROFILES.istio!
const APP_PORT = 8080
/** pods a node starts at once */
const MANY = 50
/** pods started one at a time on each network, for what merbridge-cni adds to a pod's start */
const ONE_BY_ONE = 5

describe('CNI mode with podman', {skip, timeout: suiteTimeout(900_000)}, () => {
  const id = randomBytes(3).toString('hex')
  const install = uniqueInstall()
  const inst = install.installation()
  const api = new FakeApiServer()
  const tmp = mkdtempSync(join(tmpdir(), 'mb-cnip-'))
  const network = `mb-cni-${id}`
  const bridge = `mbc${id}`
  const subnet = `10.79.${1 + (randomBytes(1)[0]! % 250)}`
  const confDir = join(tmp, 'net.d')
  const binDir = join(tmp, 'bin')
  const conflist = join(confDir, `10-${network}.conflist`)
  // as a node's CNI writes it: bridge and host-local, before merbridge-cni is added
  const bridgeNetwork = (name: string, dev: string, prefix: string) =>
    `${JSON.stringify({cniVersion: '0.4.0', name, plugins: [{type: 'bridge', bridge: dev, isGateway: true, ipMasq: false, hairpinMode: true, ipam: {type: 'host-local', routes: [{dst: '0.0.0.0/0'}], ranges: [[{subnet: `${prefix}.0/24`, gateway: `${prefix}.1`}]]}}]}, null, 2)}\n`
  const ORIGINAL = bridgeNetwork(network, bridge, subnet)
  // the same without merbridge-cni (the agent changes only the folder's first file): what a pod's start costs without it
  const plain = {network: `${network}-plain`, bridge: `mbd${id}`, subnet: subnet.replace('10.79.', '10.80.')}
  const cgroupRoot = findCgroup2(readMounts()).path ?? '/sys/fs/cgroup'
  const cgroupName = `merbridge-cnip-${id}`
  const cgroup = join(cgroupRoot, cgroupName)
  const podName = (n: string) => `mb${id}-${n}`
  const processes: LabProcess[] = []
  let image = ''
  let agent: RunningCli | undefined

  const podman = (args: string[]) => execa('podman', args, {env: {CONTAINERS_CONF: join(tmp, 'containers.conf')}, reject: false})
  const createPod = (n: string, net = network) =>
    podman([
      'pod',
      'create',
      '--name',
      podName(n),
      '--network',
      net,
      '--cgroup-parent',
      `/${cgroupName}`,
      '--label',
      `merbridge-test=${id}`,
    ])
  /** Where the runtime put the pod: its namespace (a name under /run/netns) and address. */
  const sandbox = async (n: string) => {
    const infra = (await podman(['pod', 'inspect', podName(n), '--format', '{{.InfraContainerID}}'])).stdout.trim()
    const [c] = JSON.parse((await podman(['inspect', infra])).stdout) as {
      NetworkSettings: {SandboxKey: string; Networks: Record<string, {IPAddress: string}>}
    }[]
    return {netns: c!.NetworkSettings.SandboxKey.replace('/run/netns/', ''), ip: c!.NetworkSettings.Networks[network]!.IPAddress}
  }
  const registered = async () => new Set((await readMaps.netnsPods(inst)).map((p) => p.ip))
  /** A process of the test's in a pod's namespace, in the cgroup merbridge is attached to. */
  const spawnIn = (netns: string, label: string, command: string, args: string[]) => {
    const p = new LabProcess(label, 'sh', [
      '-c',
      'echo $$ > "$0" && exec "$@"',
      join(cgroup, 'sidecars', 'cgroup.procs'),
      'ip',
      'netns',
      'exec',
      netns,
      command,
      ...args,
    ])
    processes.push(p)
    return p
  }
  const listening = async (netns: string, port: number) =>
    (await execa('ip', ['netns', 'exec', netns, 'ss', '-Htln', `sport = :${port}`])).stdout.trim() !== ''
  const startSidecar = async (n: string, netns: string) => {
    const cfg = join(tmp, `haproxy-${n}.cfg`)
    writeFileSync(cfg, haproxyConfig(mesh, {maxconn: 256}))
    const p = spawnIn(netns, `sidecar of ${n}`, 'prlimit', [
      '--nofile=2048:2048',
      'setpriv',
      '--reuid',
      String(mesh.sidecarUid),
      '--regid',
      String(mesh.sidecarGid),
      '--clear-groups',
      'haproxy',
      '-db',
      '-f',
      cfg,
    ])
    await eventually(
      `the sidecar of ${n} listens`,
      async () => (await listening(netns, mesh.outboundPort)) && (await listening(netns, mesh.inboundPort)),
      () => p.stderr,
    )
    return p
  }
  /** The lab's app in a container of the pod, the package mounted read-only. */
  const appContainer = (n: string, args: string[], detach = false) => [
    'run',
    ...(detach ? ['-d'] : []),
    '--pod',
    podName(n),
    '--name',
    podName(`${n}-app`),
    '--volume',
    `${ROOT}:/mb:ro`,
    image,
    'node',
    '/mb/dist/lab/http-app.js',
    ...args,
  ]
  const addTimes = () =>
    [...(agent?.output ?? '').matchAll(/cni: \S+ registered in \S+ before its first container \(([\d.]+) ms\)/g)].map((m) => Number(m[1]))

  before(async () => {
    const base = await execa('bash', [join(ROOT, 'scripts', 'image.sh'), '--base'], {reject: false})
    assert.equal(base.exitCode, 0, base.stderr.slice(-2000))
    image = base.stdout.trim().split('\n').at(-1)!
    chmodSync(tmp, 0o755) // the sidecars read their configuration as the proxy's user
    mkdirSync(confDir)
    mkdirSync(binDir)
    writeFileSync(conflist, ORIGINAL)
    writeFileSync(join(confDir, `20-${plain.network}.conflist`), bridgeNetwork(plain.network, plain.bridge, plain.subnet))
    // podman's own limits are below what it asks crun for by default (see daemonset.test.ts)
    writeFileSync(
      join(tmp, 'containers.conf'),
      `[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n[engine]\ncgroup_manager = "cgroupfs"\n[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["/usr/lib/cni", "${binDir}"]\nnetwork_config_dir = "${confDir}"\n`,
    )
    mkdirSync(join(cgroup, 'sidecars'), {recursive: true})
    await api.start()
    for (const [n, meshed] of [
      ['web', true],
      ['server', false],
      ['shop', true],
      ...Array.from({length: MANY}, (_, i) => [`p${i}`, true] as const),
      ...Array.from({length: ONE_BY_ONE}, (_, i) => [`q${i}`, true] as const),
    ] as const) {
      // being set up: the API has no address for it yet
      api.add({...makePod(podName(n), '', hostname(), meshed), status: {phase: 'Pending'}})
    }
    const kubeconfig = api.writeKubeconfig(join(tmp, 'kubeconfig'))
    agent = new RunningCli(
      [
        'enable',
        '--watch',
        '--cgroup',
        cgroup,
        '--bpffs',
        install.bpffs,
        '--kubeconfig',
        kubeconfig,
        '--node',
        hostname(),
        '--cni-socket',
        join(tmp, 'cni.sock'),
        '--cni-conf-dir',
        confDir,
        '--cni-bin-dir',
        binDir,
      ],
      install.env,
    )
    const started = agent
    await eventually(
      'merbridge-cni is the last plugin of the configuration',
      () => existsSync(join(binDir, 'merbridge-cni')) && readFileSync(conflist, 'utf8').includes('merbridge-cni'),
      () => started.output.slice(-2000),
    )
  })

  after(async () => {
    const pods = (await podman(['pod', 'ls', '-q', '--filter', `label=merbridge-test=${id}`])).stdout.split('\n').filter(Boolean)
    if (pods.length > 0) await podman(['pod', 'rm', '-f', ...pods])
    for (const p of processes) await p.stop()
    await agent?.stop()
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await api.stop()
    // what the bridge plugin and host-local made for this network
    for (const [dev, net] of [
      [bridge, network],
      [plain.bridge, plain.network],
    ] as const) {
      await execa('ip', ['link', 'del', dev], {reject: false})
      rmSync(join('/var/lib/cni/networks', net), {recursive: true, force: true})
    }
    // podman made the pods' cgroups under ours in every hierarchy
    for (const h of readdirSync('/sys/fs/cgroup')) removeTree(join('/sys/fs/cgroup', h, cgroupName))
    removeTree(cgroup)
    install.cleanup()
    rmSync(tmp, {recursive: true, force: true})
  })

  it("passes the entrypoint's first request through its sidecar", async () => {
    assert.equal((await createPod('server')).exitCode, 0)
    assert.equal((await podman(appContainer('server', ['serve', String(APP_PORT)], true))).exitCode, 0)
    const server = await sandbox('server')
    await eventually('the server listens', () => listening(server.netns, APP_PORT))
    assert.ok(!(await registered()).has(server.ip), 'an unmeshed pod is passed through')

    assert.equal((await createPod('web')).exitCode, 0)
    const start = await podman(['pod', 'start', podName('web')])
    assert.equal(start.exitCode, 0, start.stderr)
    const web = await sandbox('web')
    assert.ok((await registered()).has(web.ip), 'registered once the runtime set up its network')
    const sidecar = await startSidecar('web', web.netns)
    // the container's first instruction is the request
    const run = await podman(appContainer('web', ['get', `http://${server.ip}:${APP_PORT}/whoami`]))
    assert.equal(run.exitCode, 0, run.stderr)
    const answer = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as {status: number; body: string}
    assert.equal(answer.status, 200)
    assert.equal((JSON.parse(answer.body) as {remoteAddress: string}).remoteAddress, web.ip, 'it left with the pod address')
    const passed = parseSidecarLog(sidecar.stdout).filter(
      (l) => l.backend === 'outbound_passthrough' && l.originalDst === `${server.ip}:${APP_PORT}`,
    )
    assert.equal(passed.length, 1, `the request passed the outbound sidecar: ${sidecar.stdout}`)
  })

  it('sends the first SYN from outside to the inbound listener, or drops it: never to the app', async () => {
    assert.equal((await createPod('shop')).exitCode, 0)
    assert.equal((await podman(['pod', 'start', podName('shop')])).exitCode, 0)
    const shop = await sandbox('shop')
    // a client on the node, asking again and again from before the app starts
    const peers: string[] = []
    let attempts = 0
    let stop = false
    const client = async () => {
      while (!stop) {
        attempts++
        const peer = await new Promise<string | undefined>((resolve) => {
          const req = get({host: shop.ip, port: APP_PORT, path: '/whoami', agent: false, timeout: 300}, (res) => {
            let body = ''
            res.on('data', (d: Buffer) => (body += d.toString()))
            res.on('end', () => resolve((JSON.parse(body) as {remoteAddress: string}).remoteAddress))
          })
          req.on('timeout', () => req.destroy())
          req.on('error', () => resolve(undefined))
        })
        if (peer) peers.push(peer)
        else await new Promise((r) => setTimeout(r, 20))
      }
    }
    const clients = [client(), client()]
    try {
      await eventually('the client is asking', () => attempts > 5)
      assert.equal((await podman(appContainer('shop', ['serve', String(APP_PORT)], true))).exitCode, 0)
      await eventually('the app listens', () => listening(shop.netns, APP_PORT))
      const since = attempts
      await eventually('the client asked the listening app again', () => attempts > since + 10)
      assert.deepEqual(peers, [], 'nothing reached the app before its sidecar listened')
      await startSidecar('shop', shop.netns)
      await eventually('requests are answered through the sidecar', () => peers.length >= 5)
    } finally {
      stop = true
      await Promise.all(clients)
    }
    assert.deepEqual([...new Set(peers)], ['127.0.0.6'], 'every request the app answered came from its inbound sidecar')
  })

  it('does not start a pod it cannot register', async () => {
    // a pod the API does not know: the agent cannot tell its rules
    const out = join(tmp, 'ghost')
    mkdirSync(out)
    await podman([
      'pod',
      'create',
      '--name',
      podName('ghost'),
      '--network',
      network,
      '--cgroup-parent',
      `/${cgroupName}`,
      '--label',
      `merbridge-test=${id}`,
    ])
    await podman([
      'create',
      '--pod',
      podName('ghost'),
      '--name',
      podName('ghost-app'),
      '--volume',
      `${out}:/out`,
      image,
      'node',
      '-e',
      "require('fs').writeFileSync('/out/ran', '')",
    ])
    const start = await podman(['pod', 'start', podName('ghost')])
    assert.notEqual(start.exitCode, 0)
    assert.match(start.stderr, /merbridge-cni: pod .*ghost.* is not known to the agent yet/)
    assert.ok(!existsSync(join(out, 'ran')), 'its container did not run')
  })

  it(`registers ${MANY} pods started at once, each before it starts, and podman rm releases them`, async () => {
    const names = Array.from({length: MANY}, (_, i) => `p${i}`)
    for (const n of names) assert.equal((await createPod(n)).exitCode, 0)
    const before = addTimes().length
    const starts = await Promise.all(names.map((n) => podman(['pod', 'start', podName(n)])))
    for (const [i, s] of starts.entries()) assert.equal(s.exitCode, 0, `${names[i]}: ${s.stderr}`)
    const ips = await Promise.all(names.map(async (n) => (await sandbox(n)).ip))
    const now = await registered()
    assert.deepEqual(
      ips.filter((ip) => !now.has(ip)),
      [],
      'every pod is registered',
    )
    const ms = addTimes()
      .slice(before)
      .sort((a, b) => a - b)
    assert.equal(ms.length, MANY)
    const at = (q: number) => ms[Math.min(ms.length - 1, Math.ceil(q * ms.length) - 1)]
    console.log(
      `ADD of ${MANY} pods started at once, as the agent served it: p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, slowest ${ms.at(-1)} ms`,
    )

    const rm = await podman(['pod', 'rm', '-f', ...names.map(podName)])
    assert.equal(rm.exitCode, 0, rm.stderr)
    const left = await registered()
    assert.deepEqual(
      ips.filter((ip) => left.has(ip)),
      [],
      'podman rm released every pod',
    )
  })

  it('adds to one pod start about what its ADD takes', async () => {
    const withIt: number[] = []
    const without: number[] = []
    const startMs = async (n: string, net: string) => {
      assert.equal((await createPod(n, net)).exitCode, 0)
      const t = performance.now()
      const r = await podman(['pod', 'start', podName(n)])
      assert.equal(r.exitCode, 0, r.stderr)
      return performance.now() - t
    }
    const before = addTimes().length
    for (let i = 0; i < ONE_BY_ONE; i++) {
      withIt.push(await startMs(`q${i}`, network))
      without.push(await startMs(`r${i}`, plain.network))
    }
    assert.equal(addTimes().length - before, ONE_BY_ONE, 'every pod of the first network was registered by its ADD')
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
    const adds = addTimes().slice(before)
    console.log(
      `podman pod start, one at a time (median of ${ONE_BY_ONE}): ${median(withIt).toFixed(0)} ms with merbridge-cni, ${median(without).toFixed(0)} ms without; ADD as the agent served it ${median(adds).toFixed(1)} ms`,
    )
    await podman(['pod', 'rm', '-f', ...[...withIt.keys()].flatMap((i) => [podName(`q${i}`), podName(`r${i}`)])])
  })

  it('leaves the configuration byte for byte as it was after disable', async () => {
    await agent?.stop()
    agent = undefined
    const d = await cli(['disable', '--bpffs', install.bpffs], install.env)
    assert.equal(d.code, 0, d.stderr)
    assert.equal(readFileSync(conflist, 'utf8'), ORIGINAL)
    assert.ok(!existsSync(join(binDir, 'merbridge-cni')))
  })
})

/** rmdir a cgroup and what is under it, deepest first (a cgroup with processes stays). */
function removeTree(dir: string): void {
  if (!existsSync(dir)) return
  for (const e of readdirSync(dir, {withFileTypes: true})) if (e.isDirectory()) removeTree(join(dir, e.name))
  try {
    rmdirSync(dir)
  } catch {
    // still in use: left for the leak check to show
  }
}
