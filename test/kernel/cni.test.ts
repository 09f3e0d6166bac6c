// CNI mode: merbridge-cni, run as a container runtime runs a chained plugin (environment, the
// network configuration on stdin, the previous plugins' result in it), hands the pod to
// `enable --watch --cni-socket`, which registers it in the namespace the runtime named, with the
// addresses the runtime's result gave, before any of its containers runs. The API knows no address
// of the pod yet (kubelet writes it only once the sandbox is up), so nothing but the call can
// register it.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {readMaps} from '../../src/bpf/maps.js'
import {APP_PORT, Lab, NODE} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {StatusReport} from '../../src/datapath/status.js'
import {FakeApiServer, type FakePod} from '../support/fake-apiserver.js'
import {
  cli,
  eventually,
  RunningCli,
  kernelSkipReason,
  parseJson,
  uniqueInstall,
  suiteTimeout,
  requestsPassBothSidecars,
} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy'])
/** pods a node starts at once */
const BATCH = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8']

describe('CNI mode', {skip, timeout: suiteTimeout(300_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()
  const api = new FakeApiServer()
  const tmp = mkdtempSync(join(tmpdir(), 'mb-cni-'))
  const socket = join(tmp, 'run', 'cni.sock')
  // the node's CNI folders, with a configuration as podman writes it
  const confDir = join(tmp, 'net.d')
  const binDir = join(tmp, 'bin')
  const conflist = join(confDir, '87-podman-bridge.conflist')
  const ORIGINAL =
    '{\n\t"cniVersion": "0.4.0",\n\t"name": "podman",\n\t"plugins": [\n\t\t{"type": "bridge", "bridge": "cni-podman0"},\n\t\t{"type": "portmap", "capabilities": {"portMappings": true}}\n\t]\n}\n'
  const pluginTypes = () => (JSON.parse(readFileSync(conflist, 'utf8')) as {plugins: {type: string}[]}).plugins.map((p) => p.type)
  let agent: RunningCli | undefined
  let plugin = ''

  /** One call of the plugin, as the runtime makes it. */
  const call = async (command: string, pod: string, opts: {socket?: string; ip?: string; namespace?: string} = {}) => {
    const prevResult = {
      cniVersion: '1.0.0',
      interfaces: [{name: 'eth0', sandbox: `/run/netns/${lab.pod(pod).netns}`}],
      ips: [{address: `${opts.ip ?? lab.pod(pod).ip}/24`, interface: 0}],
    }
    const config = {cniVersion: '1.0.0', name: 'lab', type: 'merbridge-cni', socket: opts.socket ?? socket, prevResult}
    const started = performance.now()
    const r = await execa(plugin, [], {
      input: JSON.stringify(config),
      reject: false,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: `sandbox-${pod}`,
        CNI_NETNS: `/run/netns/${lab.pod(pod).netns}`,
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/usr/lib/cni',
        CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${opts.namespace ?? 'lab'};K8S_POD_NAME=${pod}`,
      },
    })
    return {code: r.exitCode, out: r.stdout, ms: performance.now() - started, prevResult}
  }
  let kubeconfigFile = ''
  const startAgent = async () => {
    agent = new RunningCli(
      [
        'enable',
        '--watch',
        '--cgroup',
        lab.cgroup,
        '--bpffs',
        install.bpffs,
        '--kubeconfig',
        kubeconfigFile,
        '--node',
        hostname(),
        '--cni-socket',
        socket,
        '--cni-conf-dir',
        confDir,
        '--cni-bin-dir',
        binDir,
      ],
      install.env,
    )
    const started = agent
    await eventually('the agent serves CNI calls', () => started.output.includes('serving CNI calls'))
  }
  const registered = async () => new Set((await readMaps.netnsPods(inst)).map((p) => p.ip))

  before(async () => {
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'c', meshed: false},
      ...BATCH.map((name) => ({name, meshed: true})),
    ])
    for (const p of ['a', 'b']) await lab.sidecars.start(p)
    await lab.clients.startApp('b')
    await lab.clients.startApp('c')
    await api.start()
    for (const pod of (JSON.parse(lab.podList()) as {items: FakePod[]}).items) {
      // b and c are being set up: the API has no address for them yet
      if (pod.metadata.name !== 'a') pod.status = {phase: 'Pending'}
      api.add(pod)
    }
    const kubeconfig = api.writeKubeconfig(join(tmp, 'kubeconfig'))
    mkdirSync(confDir)
    mkdirSync(binDir)
    writeFileSync(conflist, ORIGINAL)
    kubeconfigFile = kubeconfig
    await startAgent()
    // the runtime runs the copy in its binaries folder
    plugin = join(binDir, 'merbridge-cni')
    await eventually('merbridge-cni is in the CNI configuration', () => existsSync(plugin) && pluginTypes().at(-1) === 'merbridge-cni')
  })

  after(async () => {
    await agent?.stop()
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await api.stop()
    await lab.destroy()
    install.cleanup()
    rmSync(tmp, {recursive: true, force: true})
  })

  it('answers VERSION by itself, and fails ADD while no agent listens: the pod does not start uncaptured', async () => {
    const v = await execa(plugin, [], {env: {CNI_COMMAND: 'VERSION'}, input: '{"cniVersion":"1.0.0"}'})
    assert.deepEqual((JSON.parse(v.stdout) as {supportedVersions: string[]}).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0'])
    const down = await call('ADD', 'b', {socket: join(tmp, 'nobody.sock')})
    assert.equal(down.code, 1)
    const error = JSON.parse(down.out) as {code: number; msg: string}
    assert.equal(error.code, 11)
    assert.match(error.msg, /agent is not running/)
    // DEL may always succeed: there is nothing to release where nothing was registered
    assert.equal((await call('DEL', 'b', {socket: join(tmp, 'nobody.sock')})).code, 0)
  })

  it('guesses no pod: a namespace not registered is not captured for the sidecar listening in it', async () => {
    const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
    assert.equal(status.cni, true, 'status says CNI mode')
    const before = await lab.sidecars.sessions('b')
    assert.equal((await lab.clients.get('b', `http://${lab.pod('c').ip}:${APP_PORT}/whoami`)).status, 200)
    // without CNI mode the connect would go to b's outbound sidecar, found listening as the proxy's user
    assert.equal((await lab.sidecars.sessions('b')).outbound, before.outbound, "b's request went out as it is")
    assert.equal((await readMaps.counters(inst)).connUnregistered, 0)
  })

  it('registers a meshed pod in the namespace the runtime named, before its first container, and DEL releases it', async () => {
    assert.ok(!(await registered()).has(lab.pod('b').ip), 'b is not registered before the call: the API has no address for it')
    // a claim: b's address on the loopback of a namespace older than b's, which an address scan
    // would take for b's (the oldest holder); the runtime's namespace is b's whatever holds it
    const claim = (op: 'add' | 'del') =>
      execa('ip', ['-n', lab.pod('a').netns, 'addr', op, `${lab.pod('b').ip}/32`, 'dev', 'lo'], {reject: op === 'add'})
    await claim('add')
    let add: Awaited<ReturnType<typeof call>>
    try {
      add = await call('ADD', 'b')
      assert.equal(add.code, 0, add.out)
      assert.deepEqual(JSON.parse(add.out), add.prevResult) // the previous result, passed on
      const cookies = new Map((await readMaps.netnsPods(inst)).map((p) => [p.ip, p.netns]))
      assert.ok(cookies.has(lab.pod('b').ip), 'b is registered when ADD returns')
      assert.notEqual(
        cookies.get(lab.pod('b').ip),
        cookies.get(lab.pod('a').ip),
        "b is registered in its own namespace, not in the claimer's",
      )
    } finally {
      await claim('del')
    }
    // inbound capture is in place: a's request passes both sidecars, and so does one from the node
    await requestsPassBothSidecars(lab, 2)
    const before = await lab.sidecars.sessions('b')
    assert.equal((await lab.clients.get(NODE, `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)).status, 200)
    assert.ok((await lab.sidecars.sessions('b')).inbound > before.inbound, "the node's request passed b's inbound sidecar")
    assert.equal((await call('CHECK', 'b')).code, 0)
    console.log(`ADD of a meshed pod: ${add.ms.toFixed(1)} ms`)

    // an agent restart keeps it where the runtime put it, though the API still has no address for it
    await agent?.stop()
    await startAgent()
    assert.ok((await registered()).has(lab.pod('b').ip), 'b is still registered after the agent restarted')
    await requestsPassBothSidecars(lab, 1)
    assert.equal((await call('CHECK', 'b')).code, 0)

    assert.equal((await call('DEL', 'b')).code, 0)
    assert.ok(!(await registered()).has(lab.pod('b').ip), 'DEL released b')
    assert.equal((JSON.parse((await call('CHECK', 'b')).out) as {code: number}).code, 11)
  })

  it('registers pods started at once, each before its ADD returns', async () => {
    const adds = await Promise.all(BATCH.map((p) => call('ADD', p)))
    for (const [i, r] of adds.entries()) assert.equal(r.code, 0, `${BATCH[i]}: ${r.out}`)
    const now = await registered()
    assert.deepEqual(
      BATCH.filter((p) => !now.has(lab.pod(p).ip)),
      [],
    )
    const ms = adds.map((r) => r.ms).sort((x, y) => x - y)
    console.log(`${BATCH.length} ADDs at once: fastest ${ms[0]?.toFixed(1)} ms, slowest ${ms.at(-1)?.toFixed(1)} ms`)
    for (const r of await Promise.all(BATCH.map((p) => call('DEL', p)))) assert.equal(r.code, 0)
  })

  it("comes back into the configuration when the node's CNI rewrites it", async () => {
    writeFileSync(conflist, ORIGINAL.replace('cni-podman0', 'cni-podman1'))
    await eventually(
      'merbridge-cni is back in the rewritten configuration',
      () => pluginTypes().join(',') === 'bridge,portmap,merbridge-cni',
    )
    assert.match(readFileSync(conflist, 'utf8'), /cni-podman1/)
    writeFileSync(conflist, ORIGINAL) // as it was
    await eventually('merbridge-cni is back again', () => pluginTypes().at(-1) === 'merbridge-cni')
  })

  it('passes an unmeshed pod through, and refuses a pod the API does not know', async () => {
    const c = await call('ADD', 'c')
    assert.equal(c.code, 0, c.out)
    assert.ok(!(await registered()).has(lab.pod('c').ip))
    const unknown = await call('ADD', 'b', {namespace: 'elsewhere'})
    assert.equal(unknown.code, 1)
    assert.match((JSON.parse(unknown.out) as {msg: string}).msg, /not known to the agent yet/)
  })
  it('leaves the configuration byte for byte as it was, and no plugin, after disable', async () => {
    await agent?.stop()
    agent = undefined
    // the agent stopped: the entry stays (a pod set up now waits for the agent, fail closed)
    assert.equal(pluginTypes().at(-1), 'merbridge-cni')
    const d = await cli(['disable', '--bpffs', install.bpffs, '--json'], install.env)
    assert.equal(d.code, 0, d.stderr)
    assert.equal(readFileSync(conflist, 'utf8'), ORIGINAL)
    assert.ok(!existsSync(plugin), 'the plugin is gone from the binaries folder')
  })
})
