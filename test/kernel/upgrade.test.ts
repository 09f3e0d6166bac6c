// An upgrade as a node gets it: an installation made by an older merbridge, whose maps differ
// from today's, replaced by today's enable while a pod makes a new connection per request. The
// older version is built from this repository's history.
import assert from 'node:assert/strict'
import {existsSync, mkdtempSync, rmSync, symlinkSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa, execaSync} from 'execa'
import {APP_PORT, Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {EnableResult} from '../../src/commands/enable.js'
import type {StatusReport} from '../../src/datapath/status.js'
import {
  assertAllThroughSidecars,
  cli,
  kernelSkipReason,
  parseJson,
  requestsDuring,
  ROOT,
  skipOrFail,
  suiteTimeout,
  uniqueInstall,
} from '../helpers.js'

/** The version of 2026-11-26: its maps lack several of today's (inbound_nat, pod_other_ips, ...). */
const OLD = '533222b'

function historyGap(): string | undefined {
  const r = execaSync('git', ['-C', ROOT, 'cat-file', '-e', `${OLD}^{commit}`], {reject: false})
  return r.exitCode === 0 ? undefined : `the upgrade test needs commit ${OLD} in the repository's history (a full clone)`
}

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'git', 'tar']) ?? skipOrFail(historyGap())

describe('upgrade from an older version', {skip, timeout: suiteTimeout(900_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const old = mkdtempSync(join(tmpdir(), 'mb-old-'))
  const oldCli = (args: string[]) =>
    execa(process.execPath, [join(old, 'bin', 'run.js'), ...args], {env: {...install.env, NO_COLOR: '1'}, reject: false, stdin: 'ignore'})
  const url = () => `http://${lab.pod('b').ip}:${APP_PORT}/whoami`

  before(async () => {
    // the older version's tree, built with today's packages (its own are a subset)
    await execa('sh', ['-c', 'git -C "$1" archive "$2" | tar -x -C "$3"', 'sh', ROOT, OLD, old])
    symlinkSync(join(ROOT, 'node_modules'), join(old, 'node_modules'))
    await execa(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(old, 'tsconfig.json')])
    await execa(process.execPath, [join(old, 'dist', 'bpf', 'build-objects.js')], {cwd: old})
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
    ])
    for (const p of ['a', 'b']) await lab.sidecars.start(p)
    await lab.clients.startApp('b')
  })

  after(async () => {
    await cli(['disable', '--bpffs', install.bpffs], install.env)
    await oldCli(['disable', '--bpffs', install.bpffs])
    await lab.destroy()
    install.cleanup()
    rmSync(old, {recursive: true, force: true})
  })

  it("replaces the older datapath on new maps: no request skips a sidecar, and today's disable leaves nothing", async () => {
    const e = await oldCli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()])
    assert.equal(e.exitCode, 0, e.stderr)
    const oldIds = (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout) as {id: number}[]).map((p) => p.id)
    assert.ok(oldIds.length > 0, 'the older version attached its programs')

    let replaced: EnableResult['replaced']
    const seen = await requestsDuring(lab, 'a', url(), async () => {
      const r = await cli(
        ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
        install.env,
      )
      assert.equal(r.code, 0, r.stderr + r.stdout)
      replaced = parseJson<EnableResult>(r.stdout).replaced
    })
    assert.equal(replaced?.how, 'new maps', JSON.stringify(replaced))
    assertAllThroughSidecars(seen)

    const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
    assert.equal(status.verdict, 'healthy', status.problems.join('; '))
    const attached = (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout) as {id: number}[]).map((p) => p.id)
    assert.deepEqual(
      attached.filter((id) => oldIds.includes(id)),
      [],
      'the older programs are detached',
    )

    const d = await cli(['disable', '--bpffs', install.bpffs], install.env)
    assert.equal(d.code, 0, d.stderr)
    assert.equal((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout.trim().replace(/^\[\]$/, ''), '', 'nothing attached')
    assert.ok(!existsSync(install.bpffs), 'no pins')
  })
})
