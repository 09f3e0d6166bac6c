// merbridge removes only what an installation of its own pinned: a folder that is not on bpffs,
// or that holds another tool's pins, is refused whole, with one line, and left as it was.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {buildObjects} from '../../src/bpf/objects.js'
import {Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {cli, ensureBpffs, kernelSkipReason, uniqueInstall, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip'])

/** The error lines of a run: one, saying what is wrong, and the next step. */
function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('Error:'))
}

describe('folders merbridge did not make', {skip, timeout: suiteTimeout(120_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const plain = mkdtempSync(join(tmpdir(), 'mb-not-bpffs-'))
  const foreignDir = `${install.bpffs}-foreign`
  let unmount: () => Promise<void> = () => Promise.resolve()

  before(async () => {
    unmount = await ensureBpffs()
    await lab.create([{name: 'a', meshed: true}])
    writeFileSync(join(plain, 'keep.txt'), 'precious\n')
    mkdirSync(join(plain, 'maps'))
    // another tool's pin, in a folder on bpffs
    mkdirSync(foreignDir)
    await execa('bpftool', [
      'map',
      'create',
      join(foreignDir, 'other_tool_map'),
      'type',
      'array',
      'key',
      '4',
      'value',
      '4',
      'entries',
      '1',
      'name',
      'other_tool_map',
    ])
  })

  after(async () => {
    rmSync(foreignDir, {recursive: true, force: true})
    rmSync(plain, {recursive: true, force: true})
    await lab.destroy()
    install.cleanup()
    await unmount()
  })

  it('disable refuses an ordinary folder and leaves it whole', async () => {
    const r = await cli(['disable', '--bpffs', plain], install.env)
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.deepEqual(errorLines(r.stderr), [
      `Error: ${plain} is not on a bpf filesystem: it is not a merbridge installation, and merbridge leaves it alone`,
    ])
    assert.deepEqual(readdirSync(plain).sort(), ['keep.txt', 'maps'])
  })

  it("disable refuses a bpffs folder with another tool's pin, and leaves the pin", async () => {
    const r = await cli(['disable', '--bpffs', foreignDir, '--json'], install.env)
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(r.stdout, /"code": "NOT_OURS"/)
    assert.match(r.stdout, /holds 1 pin\(s\) merbridge did not make \(other_tool_map\): nothing was changed/)
    assert.ok(existsSync(join(foreignDir, 'other_tool_map')))
  })

  it('enable refuses that folder before loading anything, and leaves the pin', async () => {
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', foreignDir, '--pods-file', lab.writePodList()], install.env)
    assert.notEqual(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stderr, /holds 1 pin\(s\) merbridge did not make/)
    assert.deepEqual(readdirSync(foreignDir), ['other_tool_map'])
    const tree = JSON.parse((await execa('bpftool', ['cgroup', 'tree', '-j'])).stdout) as {cgroup: string}[]
    assert.ok(!tree.some((t) => t.cgroup === lab.cgroup), 'nothing attached')
  })

  it("an earlier version's socket counter is merbridge's: the next enable removes it, and so does disable", async (t) => {
    // that version pinned an iterator at counts/sock_pair_map; any pinned iterator stands in for it
    const legacy = join(install.bpffs, 'counts', 'sock_pair_map')
    const plant = async () => {
      const objects = await buildObjects()
      return execa('bpftool', ['iter', 'pin', objects.counters.sockhash, legacy], {reject: false})
    }
    const enable = () => cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList()], install.env)
    try {
      const first = await enable()
      assert.equal(first.code, 0, first.stdout + first.stderr)
      const planted = await plant()
      if (planted.exitCode !== 0) {
        t.skip(`this kernel loads no iter/bpf_map program: ${planted.stderr.trim()}`)
        return
      }
      const again = await enable()
      assert.equal(again.code, 0, again.stdout + again.stderr)
      assert.ok(!existsSync(legacy), 'enable removed the earlier counter')
      assert.equal((await plant()).exitCode, 0)
      const d = await cli(['disable', '--bpffs', install.bpffs], install.env)
      assert.equal(d.code, 0, d.stdout + d.stderr)
      assert.ok(!existsSync(install.bpffs), 'disable removed every pin, the earlier counter too')
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
    }
  })

  it('an empty MERBRIDGE_BPFFS is an error, not the default or the working directory', async () => {
    const r = await cli(['disable'], {...install.env, MERBRIDGE_BPFFS: ''})
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.deepEqual(errorLines(r.stderr), ['Error: MERBRIDGE_BPFFS is set but empty'])
  })
})
