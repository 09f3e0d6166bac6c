import type {BenchReport, ScenarioSummary} from '../lab/bench.js'
import {MODES} from '../lab/bench.js'
import {renderTable} from './table.js'
import {c} from './theme.js'

const f0 = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-')
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-')
const x2 = (n: number) => (Number.isFinite(n) ? `x${n.toFixed(2)}` : '-')

function rows(s: ScenarioSummary): string[][] {
  return MODES.map((m) => {
    const v = s.modes[m]
    return [m, f0(v.requestsPerSec), f0(v.p50), f0(v.p90), f0(v.p99), f1(v.cpuPerRequestUs), String(v.errors)]
  })
}

const HEAD = ['mode', 'requests/s', 'p50 µs', 'p90 µs', 'p99 µs', 'CPU µs/req', 'errors']

function ratioLine(s: ScenarioSummary): string {
  return `ebpf/iptables (median of per-round ratios): requests/s ${x2(s.ratios.requestsPerSec)}, p50 ${x2(s.ratios.p50)}, p99 ${x2(s.ratios.p99)}, CPU added over direct ${x2(s.ratios.addedCpu)}`
}

export function renderBenchSummary(s: ScenarioSummary): string {
  return [c.bold(s.title), renderTable(HEAD, rows(s)), ratioLine(s)].join('\n')
}

export function renderBench(r: BenchReport): string {
  const out = [c.bold(`merbridge bench: ${r.rounds} round(s) of ${r.durationSec} s per mode and scenario, Linux ${r.machine.kernel}, ${r.machine.cpus} CPUs`)]
  for (const s of r.summary) out.push('', renderBenchSummary(s))
  return out.join('\n')
}

export function renderBenchMarkdown(r: BenchReport): string {
  const out = [`Rounds: ${r.rounds}, ${r.durationSec} s per mode and scenario; Linux ${r.machine.kernel}, ${r.machine.cpus} CPUs. Medians over rounds.`]
  for (const s of r.summary) {
    out.push('', `### ${s.title}`, '', `| ${HEAD.join(' | ')} |`, `|${HEAD.map(() => '---').join('|')}|`)
    for (const row of rows(s)) out.push(`| ${row.join(' | ')} |`)
    out.push('', ratioLine(s))
  }
  return out.join('\n')
}
