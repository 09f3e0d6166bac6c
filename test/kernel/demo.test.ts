// `merbridge demo` as a user runs it: it proves its points, says what it could not show, and
// leaves nothing behind.
import assert from 'node:assert/strict'
import {readdirSync} from 'node:fs'
import {describe, it} from 'node:test'
import {execa} from 'execa'
import type {DemoFacts} from '../../src/lab/demo.js'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import {cli, kernelSkipReason, parseJson, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'nginx', 'wrk'])

/** What a demo run leaves on the machine that a demo could have made. */
async function leftovers(): Promise<string> {
  const netns = (await execa('ip', ['netns', 'list'])).stdout
  const pins = readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-demo'))
  const cgroups = readdirSync(findCgroup2(readMounts()).path!).filter((n) => n.startsWith('merbridge-lab'))
  return JSON.stringify({netns, pins, cgroups})
}

describe('merbridge demo', {skip, timeout: suiteTimeout(300_000)}, () => {
  it('shows the acceleration and cleans up', async () => {
    const before = await leftovers()
    const r = await cli(['demo', '--json'])
    assert.equal(r.code, 0, r.stderr + r.stdout.slice(-2000))
    const facts = parseJson<DemoFacts>(r.stdout)
    assert.equal(facts.claims.length, 7, JSON.stringify(facts.claims))
    for (const claim of facts.claims) assert.ok(claim.shown, claim.text)
    assert.notEqual(facts.direct!.remoteAddress, '127.0.0.6')
    assert.equal(facts.accelerated!.remoteAddress, '127.0.0.6')
    assert.equal(facts.accelerated!.outboundSidecarSaw, facts.accelerated!.inboundSidecarSaw)
    assert.ok(facts.accelerated!.bodyIntact)
    assert.ok(facts.accelerated!.packets * 10 < facts.direct!.packets, `${facts.accelerated!.packets} vs ${facts.direct!.packets}`)
    assert.equal(facts.status!.verdict, 'healthy')
    assert.ok(facts.maps!.find((m) => m.map === 'sock_pair_map')!.total >= 4)
    assert.equal(facts.cleanedUp, true)
    assert.equal(facts.failure, undefined)
    assert.equal(facts.benchSkipped, undefined)
    assert.equal(facts.bench!.scenario, 'keepalive')
    for (const m of ['direct', 'iptables', 'ebpf'] as const)
      assert.ok(facts.bench!.modes[m].requestsPerSec > 0 && facts.bench!.modes[m].errors === 0, m)
    assert.ok(Number.isFinite(facts.bench!.ratios.requestsPerSec.median))
    assert.equal(await leftovers(), before)
  })

  it('says what it showed, and why the bench did not run, when the bench cannot run', async () => {
    const before = await leftovers()
    // a wrk that is not there: the bench's own tool check refuses before building anything
    const r = await cli(['demo'], {MERBRIDGE_WRK: '/nonexistent/wrk'})
    assert.equal(r.code, 0, r.stderr + r.stdout.slice(-2000))
    const showed = r.stdout.slice(r.stdout.indexOf('What this showed'))
    assert.equal((showed.match(/^✔ /gm) ?? []).length, 7, showed)
    assert.match(showed, /^– the short bench did not run: .*wrk.* was not found/m)
    assert.equal(await leftovers(), before)
  })

  it('fails, after saying what it showed and what it could not, when a step fails', async () => {
    const before = await leftovers()
    // a clang that cannot compile: enable fails, so nothing after it is shown
    const r = await cli(['demo', '--json'], {MERBRIDGE_CLANG: '/bin/false'})
    assert.equal(r.code, 1, r.stderr + r.stdout.slice(-2000))
    const facts = parseJson<DemoFacts>(r.stdout)
    assert.match(facts.failure!.step, /Enable merbridge/)
    assert.ok(facts.claims[0]!.shown, 'the direct path was shown before the failure')
    assert.deepEqual(
      facts.claims.filter((claim) => !claim.shown).map((claim) => claim.text.includes('not shown')),
      [true, true],
    )
    assert.equal(facts.cleanedUp, true)
    assert.equal(facts.benchSkipped, 'the demo did not complete')
    assert.equal(await leftovers(), before)
  })
})
