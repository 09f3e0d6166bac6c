import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {summarize, type Sample} from '../../src/lab/bench.js'
import {median, parseWrk} from '../../src/lab/wrk.js'

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
  it('reports medians per mode and medians of per-round ratios', () => {
    const s = (round: number, mode: Sample['mode'], rps: number, cpu: number): Sample => ({round, mode, scenario: 'keepalive', requests: rps, requestsPerSec: rps, p50: 1e6 / rps, p90: 0, p99: 2e6 / rps, errors: 0, cpuPerRequestUs: cpu})
    const samples = [s(1, 'direct', 100, 10), s(1, 'iptables', 40, 40), s(1, 'ebpf', 80, 20), s(2, 'direct', 100, 10), s(2, 'iptables', 50, 50), s(2, 'ebpf', 50, 30), s(3, 'direct', 90, 10), s(3, 'iptables', 40, 30), s(3, 'ebpf', 60, 20)]
    const [k] = summarize(samples, ['keepalive'])
    assert.equal(k!.modes.ebpf.requestsPerSec, 60)
    assert.equal(k!.modes.iptables.requestsPerSec, 40)
    // per-round ratios 2, 1, 1.5 -> median 1.5 (the ratio of medians would be 1.5 too; CPU shows the difference)
    assert.equal(k!.ratios.requestsPerSec, 1.5)
    // added CPU per round: (20-10)/(40-10)=0.333, (30-10)/(50-10)=0.5, (20-10)/(30-10)=0.5 -> 0.5
    assert.equal(k!.ratios.addedCpu, 0.5)
  })
})
