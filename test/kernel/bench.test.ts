// `merbridge bench`: a short run gives a complete report, and a mode that is not doing its job is caught.
import assert from 'node:assert/strict'
import {readdirSync} from 'node:fs'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {Bench} from '../../src/lab/bench.js'
import {type BenchReport, MODES, SCENARIOS} from '../../src/lab/bench-report.js'
import {cli, kernelSkipReason, parseJson, ROOT, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'nginx', 'wrk'])

describe('merbridge bench', {skip, timeout: suiteTimeout(180_000)}, () => {
  it('produces a complete report from one round of one second and leaves nothing', async () => {
    const netns = (await execa('ip', ['netns', 'list'])).stdout
    const r = await cli(['bench', '--rounds', '1', '--duration', '1', '--json'])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    const report = parseJson<BenchReport>(r.stdout)
    assert.deepEqual(
      report.shapes.map((s) => s.sidecarThreads),
      [1, 2],
      'both sidecar shapes by default',
    )
    for (const shape of report.shapes) {
      assert.equal(shape.summary.length, Object.keys(SCENARIOS).length)
      for (const s of shape.summary) {
        for (const m of MODES) {
          assert.ok(s.modes[m].requestsPerSec > 0, `${shape.sidecarThreads} ${s.scenario} ${m}`)
          assert.ok(s.modes[m].p99 > 0)
          assert.ok(s.modes[m].cpuPerRequestUs > 0)
          assert.equal(s.modes[m].errors, 0, `${s.scenario} ${m} errors`)
        }
        // the one round is either quiet, and gives ratios, or left out with the CPU others (and the hypervisor) took
        if (s.quietRounds.length === 1)
          assert.ok(Number.isFinite(s.ratios.requestsPerSec.median) && s.ratios.requestsPerSec.low === s.ratios.requestsPerSec.high)
        else assert.ok(s.leftOut.length === 1 && s.leftOut[0]!.otherCpuPct + s.leftOut[0]!.stealPct > 10, JSON.stringify(s.leftOut))
        assert.equal(s.reliable, false, 'one round is never reliable')
      }
    }
    assert.equal(report.samples.length, 2 * MODES.length * Object.keys(SCENARIOS).length)
    // outside the mesh, merbridge enabled is compared with not enabled
    const outside = report.shapes[0]!.summary.filter((s) => s.outside).map((s) => s.scenario)
    assert.deepEqual(outside, ['outside-keepalive', 'outside-new-connection'])
    for (const x of report.samples) {
      assert.ok(x.otherCpuPct >= 0 && x.otherCpuPct <= 100, `other CPU ${x.otherCpuPct}`)
      assert.ok(x.stealPct >= 0 && x.stealPct <= 100, `steal ${x.stealPct}`)
    }
    assert.equal((await execa('ip', ['netns', 'list'])).stdout, netns)
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-bench')),
      [],
    )
  })

  it('prints Markdown tables on request', async () => {
    const r = await cli(['bench', '--rounds', '1', '--duration', '1', '--scenarios', 'keepalive', '--sidecar-threads', '2', '--markdown'])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    assert.match(r.stdout, /\| mode \| requests\/s \| p50 µs \| p90 µs \| p99 µs \| CPU µs\/req \| errors \|/)
    assert.match(r.stdout, /\| ebpf \| [\d,]+ \|/)
    assert.match(r.stdout, /^## sidecars with 2 threads$/m)
    assert.doesNotMatch(r.stdout, /sidecars with 1 thread/)
    assert.match(r.stdout, /not reliable: fewer than 2 quiet rounds/)
  })

  it("holds the scale scenario's connections through both sidecars, all redirected, and leaves nothing", async () => {
    const netns = (await execa('ip', ['netns', 'list'])).stdout
    const r = await cli(['bench', '--scenarios', 'scale', '--scale-connections', '2000', '--json'])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    const report = parseJson<BenchReport>(r.stdout)
    assert.deepEqual(report.shapes, [], 'no wrk scenario was asked for')
    const s = report.scale
    assert.ok(s, 'a scale report')
    const context = JSON.stringify(s)
    assert.equal(s.connections, 2000)
    assert.equal(s.held, 2000, context)
    assert.equal(s.failed, 0, context)
    // each connection: the app's socket and the outbound sidecar's two, the inbound sidecar's two and the app's; the app's connect is
    // rewritten (the outbound sidecar's goes to the destination as it is, whose capture hands it over)
    assert.ok(s.entries.sockets >= 6 * 2000, context)
    assert.ok(s.entries.origins >= 2000, context)
    assert.ok((s.counters.msgRedirected ?? 0) >= 2000, context)
    for (const k of ['sockhashFull', 'socketOverShare', 'originLost', 'originOverShare'] as const)
      assert.equal(s.counters[k], 0, `${k}: ${context}`)
    assert.ok(s.memoryBytes.sockPairMap > 0 && s.memoryBytes.pairOriginalDst > 0, context)
    assert.equal(s.allRedirected, true, context)
    assert.equal((await execa('ip', ['netns', 'list'])).stdout, netns)
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-bench')),
      [],
    )
  })

  it('measures a baseline as a fourth mode, with ebpf/baseline ratios, and leaves nothing', async () => {
    const support = join(ROOT, 'test', 'support')
    const r = await cli([
      'bench',
      '--rounds',
      '1',
      '--duration',
      '1',
      '--scenarios',
      'keepalive',
      '--sidecar-threads',
      '1',
      '--baseline-up',
      join(support, 'baseline-up.mjs'),
      '--baseline-down',
      join(support, 'baseline-down.mjs'),
      '--baseline-name',
      'itself',
      '--json',
    ])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    const report = parseJson<BenchReport>(r.stdout)
    assert.equal(report.baseline, 'itself')
    assert.deepEqual(report.samples.map((s) => s.mode).sort(), ['baseline', 'direct', 'ebpf', 'iptables'])
    const [s] = report.shapes[0]!.summary
    assert.ok(s?.modes.baseline && s.modes.baseline.requestsPerSec > 0 && s.modes.baseline.errors === 0, JSON.stringify(s?.modes))
    if (s.quietRounds.length === 1)
      assert.ok(
        Number.isFinite(s.ratios.baselineRequestsPerSec.median) && Number.isFinite(s.ratios.baselineP50.median),
        JSON.stringify(s.ratios),
      )
    else assert.ok(s.leftOut.length === 1 && s.leftOut[0]!.otherCpuPct + s.leftOut[0]!.stealPct > 10, JSON.stringify(s.leftOut))
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-bench')),
      [],
    )
  })

  it('measures the sidecars without interception on request, and splits off what interception costs', async () => {
    const r = await cli([
      'bench',
      '--rounds',
      '1',
      '--duration',
      '1',
      '--scenarios',
      'new-connection',
      '--sidecar-threads',
      '1',
      '--sidecars-mode',
      '--json',
    ])
    assert.equal(r.code, 0, r.stderr.slice(-2000))
    const report = parseJson<BenchReport>(r.stdout)
    assert.deepEqual(report.samples.map((s) => s.mode).sort(), ['direct', 'ebpf', 'iptables', 'sidecars'])
    const [s] = report.shapes[0]!.summary
    const sc = s?.modes.sidecars
    assert.ok(sc && sc.requestsPerSec > 0 && sc.cpuPerRequestUs > 0 && sc.errors === 0, JSON.stringify(s?.modes))
    const split = s.sidecars
    assert.ok(split, 'the sidecars part of the summary')
    if (s.quietRounds.length === 1)
      for (const r of [split.requestsPerSec, split.addedCpu, split.cpuBeyondUs.iptables, split.cpuBeyondUs.ebpf])
        assert.ok(Number.isFinite(r.median), JSON.stringify(split))
    else assert.ok(s.leftOut.length === 1 && s.leftOut[0]!.otherCpuPct + s.leftOut[0]!.stealPct > 10, JSON.stringify(s.leftOut))
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((n) => n.startsWith('merbridge-bench')),
      [],
    )
  })

  it('refuses a baseline command that is not an executable file, in one line', async () => {
    const r = await cli(['bench', '--baseline-up', '/nonexistent/up.sh', '--baseline-down', '/nonexistent/down.sh'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /\/nonexistent\/up.sh is not an executable file/)
    const half = await cli(['bench', '--baseline-up', '/bin/true'])
    assert.equal(half.code, 2, half.stderr)
  })

  it('rejects thread counts that are not numbers, in one line', async () => {
    const r = await cli(['bench', '--sidecar-threads', '1,two'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /--sidecar-threads 1,two: give thread counts such as 1,2/)
  })

  it('rejects an unknown scenario in one line', async () => {
    const r = await cli(['bench', '--scenarios', 'keepalive,bogus'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /unknown scenario bogus/)
  })
})

describe('bench mode checks', {skip, timeout: suiteTimeout(120_000)}, () => {
  const bench = skip ? (undefined as unknown as Bench) : new Bench()
  before(async () => bench.setup())
  after(async () => bench.teardown())

  it('accepts each mode when it does its job', async () => {
    for (const m of ['direct', 'iptables', 'ebpf', 'sidecars'] as const) {
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

  it('refuses the sidecars mode when something intercepts', async () => {
    await bench.setMode('iptables')
    await assert.rejects(
      bench.verifyMode('sidecars'),
      /mode sidecars: a request to the server was intercepted \(the server saw 127\.0\.0\.6\); refusing to report numbers/,
    )
  })

  it('refuses ebpf when merbridge is not redirecting', async () => {
    await bench.setMode('iptables')
    await assert.rejects(bench.verifyMode('ebpf'), /refusing to report numbers/)
  })
})
