import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {machineTimesUs, programDeltas, summarize, type Sample} from '../../src/lab/bench-report.js'
import {median, parseWrk} from '../../src/lab/wrk.js'
import {renderBenchSummary} from '../../src/ui/bench-view.js'

const REPORT = `Running 2s test @ http://10.77.0.3:8080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   250.12us  300.00us   9.50ms   95.00%
    Req/Sec    37.90k     2.10k   41.00k    70.00%
  Latency Distribution
     50%  190.00us
     75%  220.00us
     90%  268.00us
     99%    1.39ms
  156580 requests in 2.00s, 23.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  78290.12
Transfer/sec:     11.50MB
`

describe('wrk report', () => {
  it('reads requests, rate, percentiles in microseconds and errors', () => {
    assert.deepEqual(parseWrk(REPORT), {requests: 156580, requestsPerSec: 78290.12, p50: 190, p90: 268, p99: 1390, errors: 6})
  })

  it('refuses output without a report', () => {
    assert.throws(() => parseWrk('unable to connect to 10.77.0.3:8080 Connection refused'), /wrk printed no report/)
  })

  it('takes medians of odd and even counts, ignoring non-numbers', () => {
    assert.equal(median([3, 1, 2]), 2)
    assert.equal(median([4, 1, 3, 2]), 2.5)
    assert.equal(median([Number.NaN, 5]), 5)
    assert.ok(Number.isNaN(median([])))
  })
})

describe('bench summary', () => {
  const s = (round: number, mode: Sample['mode'], rps: number, cpu: number, otherCpuPct = 1): Sample => ({
    round,
    mode,
    scenario: 'keepalive',
    sidecarThreads: 1,
    requests: rps,
    requestsPerSec: rps,
    p50: 1e6 / rps,
    p90: 0,
    p99: 2e6 / rps,
    errors: 0,
    cpuPerRequestUs: cpu,
    otherCpuPct,
    stealPct: 0,
  })
  const three = [
    s(1, 'direct', 100, 10),
    s(1, 'iptables', 40, 40),
    s(1, 'ebpf', 80, 20),
    s(2, 'direct', 100, 10),
    s(2, 'iptables', 50, 50),
    s(2, 'ebpf', 50, 30),
    s(3, 'direct', 90, 10),
    s(3, 'iptables', 40, 30),
    s(3, 'ebpf', 60, 20),
  ]

  it('reports medians per mode and medians of per-round ratios, with their spread', () => {
    const [k] = summarize(three, ['keepalive'])
    assert.equal(k!.modes.ebpf.requestsPerSec, 60)
    assert.equal(k!.modes.iptables.requestsPerSec, 40)
    // per-round ratios 2, 1, 1.5 -> median 1.5, spread 1-2
    assert.deepEqual(k!.ratios.requestsPerSec, {median: 1.5, low: 1, high: 2, rounds: 3})
    // added CPU per round: (20-10)/(40-10)=0.333, (30-10)/(50-10)=0.5, (20-10)/(30-10)=0.5 -> 0.5
    assert.equal(k!.ratios.addedCpu.median, 0.5)
    assert.deepEqual(k!.quietRounds, [1, 2, 3])
    assert.equal(k!.reliable, true)
  })

  it('compares traffic outside the mesh with merbridge not enabled (direct), not with iptables', () => {
    const out = (round: number, mode: Sample['mode'], rps: number, cpu: number): Sample => ({
      ...s(round, mode, rps, cpu),
      scenario: 'outside-keepalive',
    })
    const [o] = summarize([out(1, 'direct', 100, 10), out(1, 'iptables', 50, 40), out(1, 'ebpf', 99, 10.1)], ['outside-keepalive'])
    assert.equal(o!.outside, true)
    assert.equal(o!.ratios.requestsPerSec.median, 0.99)
    assert.ok(Math.abs(o!.ratios.cpuPerRequest.median - 1.01) < 1e-9)
    assert.ok(Number.isNaN(o!.ratios.addedCpu.median), 'no CPU added over direct to speak of')
    assert.match(renderBenchSummary(o!), /ebpf\/direct \(merbridge enabled against not/)
  })

  it("counts each datapath's programs per request when the kernel counts their runs", () => {
    const before = [
      {name: 'mb_sockops', runs: 100, ns: 10_000},
      {name: 'mb_connect4', runs: 5, ns: 5000},
    ]
    const after = [
      {name: 'mb_sockops', runs: 1100, ns: 260_000},
      {name: 'mb_connect4', runs: 35, ns: 41_000},
    ]
    assert.deepEqual(programDeltas(before, after), [
      {name: 'mb_connect4', runs: 30, ns: 36_000},
      {name: 'mb_sockops', runs: 1000, ns: 250_000},
    ])
    const withRuns = three.map((x) => (x.mode === 'ebpf' ? {...x, requests: 10, programs: programDeltas(before, after)} : x))
    const [k] = summarize(withRuns, ['keepalive'])
    assert.deepEqual(k!.programs?.ebpf, [
      {name: 'mb_connect4', runsPerRequest: 3, nsPerRun: 1200, usPerRequest: 3.6},
      {name: 'mb_sockops', runsPerRequest: 100, nsPerRun: 250, usPerRequest: 25},
    ])
    assert.match(renderBenchSummary(k!), /programs per request in ebpf .*mb_sockops 100\.0 x 250 = 25\.00; all 28\.6 µs/)
    assert.equal(summarize(three, ['keepalive'])[0]!.programs, undefined, 'none without the counts')
  })

  it('leaves out rounds where other processes or the hypervisor were busy, and says when too few are left', () => {
    const busy = three.map((x) =>
      x.round === 1 && x.mode === 'iptables'
        ? {...x, otherCpuPct: 35}
        : x.round === 2
          ? {...x, otherCpuPct: 6, stealPct: 6}
          : x.round === 3
            ? {...x, otherCpuPct: 4, stealPct: 5}
            : x,
    )
    const [k] = summarize(busy, ['keepalive'])
    assert.deepEqual(k!.quietRounds, [3], 'round 2: 6% + 6% of steal is over 10%; round 3: 9%')
    assert.deepEqual(k!.leftOut, [
      {round: 1, otherCpuPct: 35, stealPct: 0},
      {round: 2, otherCpuPct: 6, stealPct: 6},
    ])
    assert.match(renderBenchSummary(k!), /noisy: round 1 .*round 2 \(other processes took up to 6% of the machine, the hypervisor 6%\)/)
    assert.deepEqual(k!.ratios.requestsPerSec, {median: 1.5, low: 1.5, high: 1.5, rounds: 1}, 'round 3 alone')
    assert.equal(k!.reliable, false)
  })

  it('keeps a round for a ratio whose samples were quiet, though another mode of that round was not', () => {
    // steal during round 1's sidecars run and round 2's ebpf run
    const withSidecars = [...three, s(1, 'sidecars', 60, 30), s(2, 'sidecars', 60, 40), s(3, 'sidecars', 50, 25)].map((x) =>
      (x.round === 1 && x.mode === 'sidecars') || (x.round === 2 && x.mode === 'ebpf') ? {...x, stealPct: 30} : x,
    )
    const [k] = summarize(withSidecars, ['keepalive'])
    assert.deepEqual(k!.quietRounds, [3])
    assert.equal(k!.ratios.requestsPerSec.rounds, 2, 'ebpf/iptables: rounds 1 and 3')
    const split = k!.sidecars
    assert.ok(split, 'the sidecars part')
    assert.equal(split.requestsPerSec.rounds, 2, 'sidecars/iptables: rounds 2 and 3')
    assert.equal(split.cpuBeyondUs.ebpf.rounds, 1, 'ebpf beyond the sidecars: round 3 only')
    assert.equal(k!.reliable, true)
  })

  it("splits each mode's CPU into sidecars and interception when the sidecars mode was measured", () => {
    const withSidecars = [...three, s(1, 'sidecars', 60, 30), s(2, 'sidecars', 60, 40), s(3, 'sidecars', 50, 25)]
    const [k] = summarize(withSidecars, ['keepalive'])
    assert.equal(k!.modes.sidecars?.requestsPerSec, 60)
    // ebpf beyond the sidecars: 20-30, 30-40, 20-25 -> -10 (-10 to -5); iptables: 10, 10, 5 -> 10
    const split = k!.sidecars
    assert.ok(split, 'the sidecars part')
    assert.deepEqual(split.cpuBeyondUs, {
      iptables: {median: 10, low: 5, high: 10, rounds: 3},
      ebpf: {median: -10, low: -10, high: -5, rounds: 3},
    })
    // the sidecars against iptables: 60/40, 60/50, 50/40 -> 1.25; (30-10)/(40-10), (40-10)/(50-10), (25-10)/(30-10) -> 0.75
    assert.deepEqual(split.requestsPerSec, {median: 1.25, low: 1.2, high: 1.5, rounds: 3})
    assert.equal(split.addedCpu.median, 0.75)
    // without the mode there is no such part, and the other ratios stay as they were
    const [plain] = summarize(three, ['keepalive'])
    assert.equal(plain!.modes.sidecars, undefined)
    assert.equal(plain!.sidecars, undefined)
    assert.deepEqual(plain!.ratios, k!.ratios)
    // outside the mesh no sidecar carries the request: no split, though the mode was measured
    const [outside] = summarize(
      withSidecars.map((x) => ({...x, scenario: 'outside-keepalive' as const})),
      ['outside-keepalive'],
    )
    assert.ok(outside!.modes.sidecars, 'the mode is still reported')
    assert.equal(outside!.sidecars, undefined)
    const text = renderBenchSummary(k!)
    assert.match(text, /│ sidecars +│ 60 +│/)
    assert.match(
      text,
      /CPU µs per request beyond the sidecars mode \(the same sidecars on plain TCP, nothing intercepted\): iptables \+10\.0 \(\+5\.0 to \+10\.0\), ebpf -10\.0 \(-10\.0 to -5\.0\)/,
    )
    assert.match(
      text,
      /sidecars\/iptables, all that removing interception alone gives \(3 round\(s\)\): requests\/s x1\.25 \(x1\.20-x1\.50\), CPU added over direct x0\.75/,
    )
    assert.doesNotMatch(renderBenchSummary(plain!), /sidecars/)
  })

  it("reads the machine's busy and stolen time from /proc/stat, leaving interrupt work out", () => {
    // user nice system idle iowait irq softirq steal guest guest_nice: ticks of 1/100 s
    assert.deepEqual(machineTimesUs('cpu  100 20 30 5000 7 11 13 40 0 0\ncpu0 50 10 15 2500 3 5 6 20 0 0\n'), {busyUs: 1.5e6, stealUs: 4e5})
  })
})
