// `merbridge demo` as a user runs it: it proves its points and leaves nothing behind.
import assert from 'node:assert/strict'
import {readdirSync} from 'node:fs'
import {describe, it} from 'node:test'
import {execa} from 'execa'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import {cli, kernelSkipReason, parseJson} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'nginx', 'wrk'])

describe('merbridge demo', {skip, timeout: 180_000}, () => {
  it('shows the acceleration and cleans up', async () => {
    const netnsBefore = (await execa('ip', ['netns', 'list'])).stdout
    const r = await cli(['demo', '--json'])
    assert.equal(r.code, 0, r.stderr + r.stdout.slice(-2000))
    const facts = parseJson(r.stdout)
    assert.notEqual(facts.direct.remoteAddress, '127.0.0.6')
    assert.equal(facts.accelerated.remoteAddress, '127.0.0.6')
    assert.equal(facts.accelerated.outboundSidecarSaw, facts.accelerated.inboundSidecarSaw)
    assert.ok(facts.accelerated.bodyIntact)
    assert.ok(facts.accelerated.packets * 10 < facts.direct.packets, `${facts.accelerated.packets} vs ${facts.direct.packets}`)
    assert.equal(facts.status.verdict, 'healthy')
    assert.ok(facts.maps.find((m: {map: string}) => m.map === 'sock_pair_map').total >= 4)
    assert.equal(facts.cleanedUp, true)
    assert.equal(facts.bench.scenario, 'keepalive')
    for (const m of ['direct', 'iptables', 'ebpf']) assert.ok(facts.bench.modes[m].requestsPerSec > 0 && facts.bench.modes[m].errors === 0, m)
    assert.ok(Number.isFinite(facts.bench.ratios.requestsPerSec))

    assert.equal((await execa('ip', ['netns', 'list'])).stdout, netnsBefore)
    assert.deepEqual(readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-demo')), [])
    assert.deepEqual(readdirSync(findCgroup2(readMounts()).path!).filter((n) => n.startsWith('merbridge-lab')), [])
  })
})
