// `merbridge bench`: a short run gives a complete report, and a mode that is not doing its job is caught.
import assert from 'node:assert/strict'
import {readdirSync} from 'node:fs'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {Bench, type BenchReport, MODES, SCENARIOS} from '../../src/lab/bench.js'
import {cli, kernelSkipReason, parseJson} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'nginx', 'wrk'])

describe('merbridge bench', {skip, timeout: 180_000}, () => {
  it('produces a complete report from one round of one second and leaves nothing', async () => {
    const netns = (await execa('ip', ['netns', 'list'])).stdout
    const r = await cli(['bench', '--rounds', '1', '--duration', '1', '--json'])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    const report = parseJson<BenchReport>(r.stdout)
    assert.equal(report.summary.length, Object.keys(SCENARIOS).length)
    for (const s of report.summary) {
      for (const m of MODES) {
        assert.ok(s.modes[m].requestsPerSec > 0, `${s.scenario} ${m}`)
        assert.ok(s.modes[m].p99 > 0)
        assert.ok(s.modes[m].cpuPerRequestUs > 0)
        assert.equal(s.modes[m].errors, 0, `${s.scenario} ${m} errors`)
      }
      assert.ok(Number.isFinite(s.ratios.requestsPerSec) && Number.isFinite(s.ratios.p99))
    }
    assert.equal(report.samples.length, 9)
    assert.equal((await execa('ip', ['netns', 'list'])).stdout, netns)
    assert.deepEqual(readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-bench')), [])
  })

  it('prints Markdown tables on request', async () => {
    const r = await cli(['bench', '--rounds', '1', '--duration', '1', '--scenarios', 'keepalive', '--markdown'])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    assert.match(r.stdout, /\| mode \| requests\/s \| p50 µs \| p90 µs \| p99 µs \| CPU µs\/req \| errors \|/)
    assert.match(r.stdout, /\| ebpf \| [\d,]+ \|/)
  })

  it('rejects an unknown scenario in one line', async () => {
    const r = await cli(['bench', '--scenarios', 'keepalive,bogus'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /unknown scenario bogus/)
  })
})

describe('bench mode checks', {skip, timeout: 120_000}, () => {
  const bench = skip ? (undefined as unknown as Bench) : new Bench()
  before(async () => bench.setup())
  after(async () => bench.teardown())

  it('accepts each mode when it does its job', async () => {
    for (const m of ['direct', 'iptables', 'ebpf'] as const) {
      await bench.setMode(m)
      await bench.verifyMode(m)
    }
  })

  it('refuses direct when the sidecars intercept', async () => {
    await bench.setMode('iptables')
    await assert.rejects(bench.verifyMode('direct'), /mode direct: requests went through the sidecar; refusing to report numbers/)
  })

  it('refuses iptables when the rules are missing', async () => {
    await bench.setMode('direct')
    await assert.rejects(bench.verifyMode('iptables'), /mode iptables: requests did not pass the server's sidecar/)
  })

  it('refuses ebpf when merbridge is not redirecting', async () => {
    await bench.setMode('iptables')
    await assert.rejects(bench.verifyMode('ebpf'), /refusing to report numbers/)
  })
})
