// A pod that turns its own files against the node agent: a FIFO or a link to /dev/zero over the
// resolv.conf a DNS-capturing pod's rules are read from. The agent reads it as the pod sees it,
// without blocking and bounded: enable and sync finish, and the pod's DNS is still captured.
import assert from 'node:assert/strict'
import {once} from 'node:events'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa, type ResultPromise} from 'execa'
import {Lab, REMOTE_IP} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {MapDump} from '../../src/datapath/dump-maps.js'
import {BIN, kernelSkipReason, parseJson, suiteTimeout, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'unshare', 'mkfifo'])
/** Far longer than the command needs; a blocked read never ends at all. */
const DEADLINE_MS = 180_000

describe("a pod's files turned against the agent", {skip, timeout: suiteTimeout(600_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  let hostile: ResultPromise | undefined

  // istio-init's DNS capture: only to the resolvers its resolv.conf names
  before(async () => {
    lab.useRemoteResolver()
    await lab.create([{name: 'h', meshed: true, dnsCapture: true, istioInit: {}}])
  })

  after(async () => {
    hostile?.kill('SIGKILL')
    await hostile
    await execa(process.execPath, [BIN, 'disable', '--bpffs', install.bpffs], {env: install.env, reject: false})
    await lab.destroy()
    install.cleanup()
  })

  /** The only process in the pod's namespace, with `setup` run in a mount namespace of its own. */
  async function hostileProcess(setup: string): Promise<void> {
    hostile?.kill('SIGKILL')
    await hostile
    hostile = execa(
      'ip',
      [
        'netns',
        'exec',
        lab.pod('h').netns,
        'unshare',
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        `${setup} && echo ready && exec sleep 600`,
      ],
      {reject: false},
    )
    await once(hostile.stdout!, 'data')
  }

  const merbridge = (args: string[]) =>
    execa(process.execPath, [BIN, ...args, '--bpffs', install.bpffs], {
      env: {...install.env, NO_COLOR: '1'},
      reject: false,
      stdin: 'ignore',
      timeout: DEADLINE_MS,
    })

  async function dnsRule(): Promise<unknown> {
    const r = await merbridge(['dump-maps', 'local_pod_ips', '--json'])
    const rows = parseJson<{maps: MapDump[]}>(r.stdout).maps[0]!.rows as {ip: string; rules: {dns: unknown}}[]
    return rows.find((row) => row.ip === lab.pod('h').ip)?.rules.dns
  }

  it('a FIFO mounted over its resolv.conf: enable finishes, and DNS to its resolvers is captured', async () => {
    const fifo = join(lab.tmp, 'resolv.fifo')
    await hostileProcess(`mkfifo ${fifo} && mount --bind ${fifo} /etc/resolv.conf`)
    const r = await merbridge(['enable', '--cgroup', lab.cgroup, '--pods-file', lab.writePodList()])
    assert.equal(r.timedOut, false, 'enable blocked on the FIFO')
    assert.equal(r.exitCode, 0, r.stdout + r.stderr)
    assert.deepEqual(await dnsRule(), [REMOTE_IP])
  })

  it('a link to /dev/zero as its resolv.conf: sync finishes, in bounded memory, and DNS stays captured', async () => {
    await hostileProcess('mount -t tmpfs none /etc && ln -s /dev/zero /etc/resolv.conf')
    const r = await merbridge(['sync', '--pods-file', lab.writePodList()])
    assert.equal(r.timedOut, false, 'sync kept reading /dev/zero')
    assert.equal(r.exitCode, 0, r.stdout + r.stderr)
    assert.deepEqual(await dnsRule(), [REMOTE_IP])
  })

  it('when no file of the pod can be read, all its DNS is captured (fail closed)', async () => {
    // the namespace's own file gone too: nothing says which resolvers it uses
    const named = join('/etc/netns', lab.pod('h').netns, 'resolv.conf')
    await execa('mv', [named, `${named}.aside`])
    try {
      const r = await merbridge(['sync', '--pods-file', lab.writePodList()])
      assert.equal(r.exitCode, 0, r.stdout + r.stderr)
      assert.match(r.stdout + r.stderr, /its resolv\.conf cannot be read; capturing port 53 to any address \(fail closed\)/)
      assert.equal(await dnsRule(), '*')
    } finally {
      await execa('mv', [`${named}.aside`, named])
    }
  })
})
