// The DaemonSet as it runs: the image built here (scripts/image.sh), each container of
// deploy/merbridge.yaml and deploy/uninstall.yaml turned into the podman run a kubelet would
// make (capabilities, seccomp, AppArmor, host network, private cgroup and PID namespaces, the
// same mounts and environment, the in-cluster service account), run against the lab's pods and
// the tests' API server: install, a request through both sidecars, the probes, a SIGKILL and a
// restart, SIGTERM leaving the datapath, the uninstall, and a clean install again.
//
// What the test changes from the manifest, for the node's safety: the cgroup volume is the lab's
// cgroup (never the node's root), the pin folder and the record folder are the test's own.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {basename, join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import * as k8s from '@kubernetes/client-node'
import {execa} from 'execa'
import {loadAll} from 'js-yaml'
import {bpftool} from '../../src/bpf/bpftool.js'
import {APP_PORT, Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {StatusReport} from '../../src/datapath/status.js'
import {FakeApiServer, type FakePod} from '../support/fake-apiserver.js'
import {eventually, kernelSkipReason, parseJson, ROOT, suiteTimeout, uniqueInstall, requestsPassBothSidecars} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'podman', 'mmdebstrap'])
const IMAGE = 'localhost/merbridge:test'

function daemonSet(file: string): k8s.V1DaemonSet {
  const docs = loadAll(readFileSync(join(ROOT, 'deploy', file), 'utf8')) as {kind?: string}[]
  return docs.find((d) => d.kind === 'DaemonSet') as unknown as k8s.V1DaemonSet
}

/**
 * This machine's podman, as root without CAP_SYS_RESOURCE, holds its own limits at 20000 open
 * files and 32768 processes and asks crun for more: refused. The container gets no more than
 * podman has (a kubelet's runtime applies its own defaults the same way).
 */
function ulimits(): string[] {
  const limits = readFileSync('/proc/self/limits', 'utf8')
  const hard = (name: string) => Number(new RegExp(`^${name}\\s+\\S+\\s+(\\d+)`, 'm').exec(limits)?.[1] ?? 1024)
  const files = Math.min(hard('Max open files'), 20_000)
  const procs = Math.min(hard('Max processes'), 32_768)
  return ['--ulimit', `nofile=${files}:${files}`, '--ulimit', `nproc=${procs}:${procs}`]
}

/** The podman run of a pod's first container, as a kubelet would start it on this node. */
function podmanArgs(
  ds: k8s.V1DaemonSet,
  name: string,
  opts: {hostPaths: Record<string, string>; env: Record<string, string>; replace: [string, string][]; extraMounts: string[]},
): string[] {
  const pod = ds.spec!.template.spec!
  const c = pod.containers[0]!
  const sc = c.securityContext
  const args = ['run', '-d', '--name', name, ...ulimits(), '--cgroupns', 'private', '--pid', 'private']
  if (pod.hostNetwork) args.push('--network', 'host')
  if (sc?.privileged) args.push('--privileged')
  for (const cap of sc?.capabilities?.drop ?? []) args.push('--cap-drop', cap === 'ALL' ? 'all' : `CAP_${cap}`)
  for (const cap of sc?.capabilities?.add ?? []) args.push('--cap-add', `CAP_${cap}`)
  if (sc?.allowPrivilegeEscalation === false) args.push('--security-opt', 'no-new-privileges')
  if (sc?.seccompProfile?.type === 'Unconfined') args.push('--security-opt', 'seccomp=unconfined')
  if (sc?.appArmorProfile?.type === 'Unconfined') args.push('--security-opt', 'apparmor=unconfined')
  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v.hostPath!.path]))
  for (const m of c.volumeMounts ?? []) {
    const host = volumes.get(m.name)!
    const source = opts.hostPaths[host] ?? host
    if (!opts.hostPaths[host] && (pod.volumes ?? []).find((v) => v.name === m.name)?.hostPath?.type === 'DirectoryOrCreate')
      mkdirSync(source, {recursive: true})
    const flags = [m.readOnly ? 'ro' : 'rw', ...(m.mountPropagation === 'HostToContainer' ? ['rslave'] : [])]
    args.push('--volume', `${source}:${m.mountPath}:${flags.join(',')}`)
  }
  for (const mount of opts.extraMounts) args.push('--volume', mount)
  const env: Record<string, string> = {}
  for (const e of c.env ?? []) env[e.name] = e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName' ? hostname() : (e.value ?? '')
  Object.assign(env, opts.env)
  for (const [k, v] of Object.entries(env)) args.push('--env', `${k}=${v}`)
  // $(VAR) in args, as the kubelet expands them; then the test's own pin folder
  const expand = (s: string) =>
    opts.replace.reduce(
      (t, [from, to]) => t.replaceAll(from, to),
      s.replace(/\$\((\w+)\)/g, (_, v: string) => env[v] ?? ''),
    )
  args.push('--entrypoint', c.command![0]!, IMAGE, ...c.command!.slice(1).map(expand), ...(c.args ?? []).map(expand))
  return args
}

describe('the DaemonSet in a container', {skip, timeout: suiteTimeout(900_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const api = new FakeApiServer()
  const install = uniqueInstall()
  const tmp = mkdtempSync(join(tmpdir(), 'mb-ds-'))
  const runDir = join(tmp, 'run')
  const sa = join(tmp, 'serviceaccount')
  const id = install.bpffs.split('-').at(-1)!
  const names = {ds: `mb-ds-${id}`, un: `mb-un-${id}`}
  const ds = daemonSet('merbridge.yaml')
  const un = daemonSet('uninstall.yaml')
  const metricsPort = ds.spec!.template.spec!.containers[0]!.ports![0]!.containerPort
  let started: Record<'ds' | 'un' | 'slow', string[]>
  const hold = join(tmp, 'hold')
  // the node's CNI folders, the test's own, with a configuration as podman writes it
  const cniConf = join(tmp, 'net.d')
  const cniBin = join(tmp, 'cni-bin')
  const conflist = join(cniConf, '87-podman-bridge.conflist')
  const CONFLIST = '{\n  "cniVersion": "0.4.0",\n  "name": "podman",\n  "plugins": [{"type": "bridge", "bridge": "cni-podman0"}]\n}\n'
  /** merbridge-cni's call as the node's runtime makes it, the agent in the container answering */
  const cniAdd = (pod: string) => {
    const prevResult = {cniVersion: '1.0.0', interfaces: [{name: 'eth0'}], ips: [{address: `${lab.pod(pod).ip}/24`, interface: 0}]}
    return execa(join(cniBin, 'merbridge-cni'), [], {
      reject: false,
      // the socket where the test's run folder is (the manifest's /run/merbridge)
      input: JSON.stringify({cniVersion: '1.0.0', name: 'podman', type: 'merbridge-cni', socket: join(runDir, 'cni.sock'), prevResult}),
      env: {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: `sandbox-${pod}`,
        CNI_NETNS: `/var/run/netns/${lab.pod(pod).netns}`,
        CNI_IFNAME: 'eth0',
        CNI_PATH: cniBin,
        CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=${pod}`,
      },
    })
  }

  const podman = (args: string[]) => execa('podman', args, {reject: false, stdin: 'ignore'})
  const get = async (path: string) => {
    try {
      const r = await fetch(`http://127.0.0.1:${metricsPort}${path}`)
      return {status: r.status, text: await r.text()}
    } catch {
      return {status: 0, text: ''}
    }
  }
  const logs = async (name: string) => {
    const r = await podman(['logs', name])
    return `${r.stdout}\n${r.stderr}`.slice(-3000)
  }
  const start = async (which: 'ds' | 'un' | 'slow') => {
    const name = names[which === 'slow' ? 'ds' : which]
    await podman(['rm', '-f', name])
    const r = await podman(started[which])
    assert.equal(r.exitCode, 0, r.stderr)
  }
  /** Wait for what a test awaits, and on a timeout show the container's last output. */
  const awaiting = async (what: string, name: string, cond: () => Promise<boolean>) => {
    try {
      await eventually(what, cond)
    } catch (error) {
      assert.fail(`${(error as Error).message}\n${await logs(name)}`)
    }
  }
  const ready = () => awaiting('the DaemonSet container to be ready', names.ds, async () => (await get('/readyz')).status === 200)
  const status = async () => {
    const r = await podman(['exec', names.ds, 'merbridge', 'status', '--bpffs', install.bpffs, '--json'])
    return parseJson<StatusReport>(r.stdout)
  }

  before(async () => {
    const image = await execa('bash', [join(ROOT, 'scripts', 'image.sh'), IMAGE.replace('localhost/', '')], {reject: false})
    assert.equal(image.exitCode, 0, `${image.stdout.slice(-2000)}\n${image.stderr.slice(-2000)}`)
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
      {name: 'c', meshed: true},
    ])
    for (const p of ['a', 'b', 'c']) await lab.sidecars.start(p)
    await lab.clients.startApp('b')
    await lab.clients.startApp('c')
    const url = await api.start()
    for (const pod of (JSON.parse(lab.podList()) as {items: FakePod[]}).items) {
      // c is being set up: the API has no address for it, only the runtime's CNI call registers it
      if (pod.metadata.name === 'c') pod.status = {phase: 'Pending'}
      api.add(pod)
    }
    mkdirSync(cniConf)
    mkdirSync(cniBin)
    writeFileSync(conflist, CONFLIST)
    // the service account a kubelet mounts, and the service's address it sets
    mkdirSync(sa, {recursive: true})
    writeFileSync(join(sa, 'token'), api.token)
    writeFileSync(join(sa, 'ca.crt'), api.ca)
    writeFileSync(join(sa, 'namespace'), 'merbridge-system')
    const port = new URL(url).port
    const common = {
      hostPaths: {'/sys/fs/cgroup': lab.cgroup, '/run/merbridge': runDir, '/etc/cni/net.d': cniConf, '/opt/cni/bin': cniBin},
      env: {KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port},
      replace: [['/sys/fs/bpf/merbridge', install.bpffs]] as [string, string][],
      extraMounts: [`${sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro`],
    }
    mkdirSync(runDir)
    // a first enable held at its attach step for as long as a test needs (a big node's first enable)
    mkdirSync(hold)
    writeFileSync(
      join(hold, 'bpftool'),
      '#!/bin/sh\ncase "$*" in *"cgroup attach"*) touch /hold/attaching; while [ ! -e /hold/go ]; do sleep 0.05; done;; esac\nexec bpftool "$@"\n',
      {mode: 0o755},
    )
    const slow = {
      ...common,
      env: {...common.env, MERBRIDGE_BPFTOOL: '/hold/bpftool'},
      extraMounts: [...common.extraMounts, `${hold}:/hold:rw`],
    }
    started = {ds: podmanArgs(ds, names.ds, common), un: podmanArgs(un, names.un, common), slow: podmanArgs(ds, names.ds, slow)}
  })

  after(async () => {
    for (const n of Object.values(names)) await podman(['rm', '-f', '-t', '0', n])
    // whatever a failed test left: disabled from the host, with the record the containers kept
    await execa(process.execPath, [join(ROOT, 'bin', 'run.js'), 'disable', '--bpffs', install.bpffs], {
      reject: false,
      env: {MERBRIDGE_RUN_DIR: runDir},
    })
    await api.stop()
    await lab.destroy()
    install.cleanup()
    rmSync(tmp, {recursive: true, force: true})
  })

  it('enables with --watch from the manifest: both pods registered, a request passes both sidecars, the probes answer', async () => {
    await start('ds')
    await awaiting('/healthz', names.ds, async () => (await get('/healthz')).status === 200)
    await ready()
    const s = await status()
    assert.equal(s.verdict, 'healthy', s.problems.join('; '))
    assert.equal(s.pods?.meshed.length, 2, JSON.stringify(s.pods))
    await requestsPassBothSidecars(lab, 3)
    const metrics = await get('/metrics')
    assert.equal(metrics.status, 200)
    assert.match(metrics.text, /^merbridge_datapath_healthy 1$/m)
  })

  it("puts merbridge-cni into the node's CNI configuration, and registers a pod the runtime sets up", async () => {
    await awaiting('merbridge-cni in the configuration', names.ds, () =>
      Promise.resolve(existsSync(join(cniBin, 'merbridge-cni')) && readFileSync(conflist, 'utf8').includes('merbridge-cni')),
    )
    const plugins = (JSON.parse(readFileSync(conflist, 'utf8')) as {plugins: {type: string; socket?: string}[]}).plugins
    assert.deepEqual(
      plugins.map((p) => p.type),
      ['bridge', 'merbridge-cni'],
    )
    assert.equal(plugins[1]?.socket, '/run/merbridge/cni.sock', 'the socket at the path the manifest mounts from the node')
    assert.equal((await status()).cni, true, 'CNI mode')
    const add = await cniAdd('c')
    assert.equal(add.exitCode, 0, `${add.stdout}\n${await logs(names.ds)}`)
    assert.ok(
      (await status()).pods?.meshed.some((p) => p.name === 'c'),
      'c registered in the namespace the runtime named',
    )
    const before = await lab.sidecars.sessions('c')
    assert.equal((await lab.clients.get('a', `http://${lab.pod('c').ip}:${APP_PORT}/whoami`)).status, 200)
    const after = await lab.sidecars.sessions('c')
    assert.ok(after.inbound > before.inbound, "a's request passed c's inbound sidecar")
  })

  it('is killed with SIGKILL and started again: it resumes, never locked out', async () => {
    const kill = await podman(['kill', '--signal', 'KILL', names.ds])
    assert.equal(kill.exitCode, 0, kill.stderr)
    // the kubelet starts the same container again
    const again = await podman(['start', names.ds])
    assert.equal(again.exitCode, 0, again.stderr)
    await ready()
    assert.doesNotMatch(await logs(names.ds), /LOCKED|another merbridge command/)
    await requestsPassBothSidecars(lab, 2)
  })

  it('stops on SIGTERM and leaves the datapath attached: a stream through it completes', async () => {
    const stream = lab.clients.openStream('a', `http://${lab.pod('b').ip}:${APP_PORT}`)
    await stream.flowingPast(0, 'before SIGTERM')
    const stop = await podman(['stop', '--time', String(ds.spec!.template.spec!.terminationGracePeriodSeconds ?? 30), names.ds])
    assert.equal(stop.exitCode, 0, stop.stderr)
    const exit = await podman(['inspect', names.ds, '--format', '{{.State.ExitCode}}'])
    assert.equal(exit.stdout.trim(), '0', await logs(names.ds))
    await stream.flowingPast(stream.bytes, 'after SIGTERM')
    const got = await stream.release()
    assert.equal(got.code, 0, JSON.stringify(got))
    assert.ok((await bpftool.cgroupShow(lab.cgroup)).length > 0, 'programs still attached')
    await requestsPassBothSidecars(lab, 2)
  })

  it('uninstalls from its own container: no program, pin, filter or record left; then a slow first enable installs cleanly again', async () => {
    await start('un')
    await awaiting(
      'the uninstall to finish',
      names.un,
      async () => (await podman(['exec', names.un, 'test', '-e', '/tmp/done'])).exitCode === 0,
    )
    assert.match(await logs(names.un), /merbridge is disabled/)
    assert.deepEqual(await bpftool.cgroupShow(lab.cgroup), [], 'nothing attached to the cgroup')
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((n) => install.bpffs.endsWith(n)),
      [],
      'no pins',
    )
    assert.deepEqual(
      readdirSync(runDir).filter((n) => !n.startsWith('.')),
      [],
      'no record',
    )
    assert.equal(readFileSync(conflist, 'utf8'), CONFLIST, 'the CNI configuration as it was')
    assert.deepEqual(readdirSync(cniConf), [basename(conflist)], 'no backup left beside it')
    assert.ok(!existsSync(join(cniBin, 'merbridge-cni')), 'no plugin')
    for (const p of ['a', 'b']) {
      const filters = await execa('ip', ['netns', 'exec', lab.pod(p).netns, 'tc', 'filter', 'show', 'dev', 'eth0', 'ingress'], {
        reject: false,
      })
      assert.doesNotMatch(filters.stdout, /mb_tc_inbound/, `pod ${p}`)
    }
    await podman(['rm', '-f', '-t', '0', names.un])
    // the new install's first enable is slow: the probes see it alive all along, and not ready
    await start('slow')
    await awaiting('the first enable to reach its attach step', names.ds, () => Promise.resolve(existsSync(join(hold, 'attaching'))))
    const probes = ds.spec!.template.spec!.containers[0]!
    for (let i = 0; i < 10; i++) {
      assert.equal((await get(probes.startupProbe!.httpGet!.path!)).status, 200, 'the startup probe passes while enable works')
      assert.equal((await get(probes.livenessProbe!.httpGet!.path!)).status, 200, 'the liveness probe passes while enable works')
      assert.equal((await get(probes.readinessProbe!.httpGet!.path!)).status, 503, 'not ready before enable finished')
      await new Promise((resolve) => setTimeout(resolve, 300))
    }
    writeFileSync(join(hold, 'go'), '')
    await ready()
    assert.equal((await status()).verdict, 'healthy')
    await requestsPassBothSidecars(lab, 2)
  })
})
