// `merbridge doctor` run for real on this machine, as a new user would.
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {release} from 'node:os'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import {buildSkipReason, cli, kernelSkipReason, parseJson} from '../helpers.js'

const skip = kernelSkipReason()

describe('merbridge --help', {skip: buildSkipReason()}, () => {
  it('lists the commands', async () => {
    const r = await cli(['--help'])
    assert.equal(r.code, 0)
    for (const c of ['doctor', 'enable', 'disable']) assert.match(r.stdout, new RegExp(`^  ${c} `, 'm'))
  })

  it('rejects an unknown flag in one line with exit 2 and a next step', async () => {
    const r = await cli(['doctor', '--frobnicate'])
    assert.equal(r.code, 2)
    assert.deepEqual(r.stderr.trim().split('\n'), ['Error: Nonexistent flag: --frobnicate', '  → see `merbridge doctor --help`'])
  })

  it('answers usage errors under --json with the error shape every command uses, nothing of the parser', async () => {
    for (const [args, message] of [
      [['status', '--bogus', '--json'], 'Nonexistent flag: --bogus'],
      [['dump-maps', '--limit', 'abc', '--json'], '--limit: Expected an integer but received: abc'],
      [['enable', '--mesh', 'nope', '--json'], 'Expected --mesh=nope to be one of: istio'],
    ] as const) {
      const r = await cli([...args])
      assert.equal(r.code, 2, r.stdout + r.stderr)
      assert.deepEqual(parseJson<unknown>(r.stdout), {error: {code: 'USAGE', message, suggestion: `see \`merbridge ${args[0]} --help\``}})
    }
  })
})

describe('merbridge doctor', {skip}, () => {
  it('reports this machine truthfully', async () => {
    const r = await cli(['doctor', '--json'])
    assert.equal(r.code, 0, r.stdout)
    const out = parseJson<PreflightResult>(r.stdout)
    const check = (id: string) => {
      const c = out.checks.find((x) => x.id === id)
      assert.ok(c, `doctor has a ${id} check`)
      return c
    }
    assert.equal(check('privileges').status, 'pass')
    assert.equal(check('kernel').detail, release())
    assert.equal(check('cgroup').status, 'pass')
    assert.equal(out.cgroup, findCgroup2(readMounts()).path)
    assert.match(check('clang').detail, /^clang \d+\.\d+\.\d+, targets bpf$/)
    assert.match(check('bpftool').detail, /^bpftool v?\d+\.\d+/)
    assert.equal(check('features').status, 'pass', check('features').detail)
    assert.equal(out.ok, true)
  })

  it('fails a wrong --cgroup with the remedy, in text and JSON', async () => {
    const text = await cli(['doctor', '--cgroup', '/proc'])
    assert.equal(text.code, 1)
    assert.match(text.stdout, /✖ cgroup v2 +\/proc is not on a cgroup v2 mount \(it is proc\)/)
    assert.match(text.stdout, /→ use --cgroup \//)
    assert.match(text.stdout, /This node cannot run merbridge: 1 required check failed\./)

    const json = await cli(['doctor', '--cgroup', '/no/such/dir', '--json'])
    assert.equal(json.code, 1)
    const out = parseJson<PreflightResult>(json.stdout)
    assert.equal(out.ok, false)
    assert.equal(out.checks.find((c) => c.id === 'cgroup')?.status, 'fail')
  })

  it('honours MERBRIDGE_CGROUP', async () => {
    const r = await cli(['doctor', '--json'], {MERBRIDGE_CGROUP: '/proc'})
    assert.equal(r.code, 1)
  })
})
