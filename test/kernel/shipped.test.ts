// A package that ships its bpf objects (the image: built with clang in one stage, run without it
// in the next) enables with no compiler; one that ships none says in one line what it lacks.
import assert from 'node:assert/strict'
import {cpSync, existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {StatusReport} from '../../src/datapath/status.js'
import {kernelSkipReason, parseJson, ROOT, suiteTimeout, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy'])

describe('shipped bpf objects', {skip, timeout: suiteTimeout(180_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const tmp = mkdtempSync(join(tmpdir(), 'mb-shipped-'))
  const pkg = join(tmp, 'opt', 'merbridge')
  const install = uniqueInstall()
  // no compiler and an empty cache: only what the package ships can be used
  const bare = {...install.env, MERBRIDGE_CLANG: join(tmp, 'no-clang'), MERBRIDGE_CACHE_DIR: join(tmp, 'cache'), NO_COLOR: '1'}
  const run = (args: string[], env: Record<string, string>) =>
    execa(process.execPath, [join(pkg, 'bin', 'run.js'), ...args], {env, reject: false, stdin: 'ignore'})

  before(async () => {
    await lab.create([{name: 'a', meshed: true}])
    // the package as the image holds it
    for (const part of ['bin', 'dist', 'bpf', 'package.json', 'oclif.manifest.json'])
      cpSync(join(ROOT, part), join(pkg, part), {recursive: true})
    symlinkSync(join(ROOT, 'node_modules'), join(pkg, 'node_modules'))
  })

  after(async () => {
    await run(['disable', '--bpffs', install.bpffs], bare)
    await lab.destroy()
    install.cleanup()
    rmSync(tmp, {recursive: true, force: true})
  })

  it('without a compiler or shipped objects, enable says what it lacks in one line and changes nothing', async () => {
    const r = await run(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], bare)
    assert.equal(r.exitCode, 1, r.stdout + r.stderr)
    assert.match(r.stderr, /^Error: .*clang/m)
    assert.ok(!existsSync(install.bpffs))
  })

  it('enables, reports healthy and disables with the objects it ships, and no compiler', async () => {
    const ship = await execa(process.execPath, [join(pkg, 'dist', 'bpf', 'build-objects.js'), '--ship'], {reject: false})
    assert.equal(ship.exitCode, 0, ship.stdout + ship.stderr)
    assert.equal(readdirSync(join(pkg, 'prebuilt')).length, 2, 'one build and its index')
    const e = await run(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], bare)
    assert.equal(e.exitCode, 0, e.stdout + e.stderr)
    const s = await run(['status', '--bpffs', install.bpffs, '--json'], bare)
    const status = parseJson<StatusReport>(s.stdout)
    assert.equal(status.verdict, 'healthy', status.problems.join('; '))
    assert.ok(!existsSync(join(tmp, 'cache')) || readdirSync(join(tmp, 'cache')).length === 0, 'nothing compiled')
    // enabling again finds the same objects: the programs are kept, the pods resynced
    const again = await run(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'], bare)
    assert.equal(again.exitCode, 0, again.stdout + again.stderr)
    assert.equal(parseJson<{mode: string}>(again.stdout).mode, 'resync')
    const d = await run(['disable', '--bpffs', install.bpffs], bare)
    assert.equal(d.exitCode, 0, d.stdout + d.stderr)
    assert.ok(!existsSync(install.bpffs))
  })
})
