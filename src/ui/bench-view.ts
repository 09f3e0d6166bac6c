import {
  BASELINE,
  type BenchReport,
  MODES,
  QUIET_OTHER_CPU_PCT,
  type Ratio,
  type ScenarioSummary,
  type ShapeReport,
  SIDECARS,
} from '../lab/bench-report.js'
import type {ScaleReport} from '../lab/scale.js'
import {renderTable} from './table.js'
import {c} from './theme.js'

const f0 = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-')
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-')
const x2 = (n: number) => (Number.isFinite(n) ? `x${n.toFixed(2)}` : '-')
const sign = (n: number) => `${n >= 0 ? '+' : ''}${n.toFixed(1)}`

function rows(s: ScenarioSummary, baselineName = BASELINE): string[][] {
  const measured = [
    ...MODES.map((m) => [m, s.modes[m]] as const),
    ...(s.modes.sidecars ? [[SIDECARS, s.modes.sidecars] as const] : []),
    ...(s.modes.baseline ? [[baselineName, s.modes.baseline] as const] : []),
  ]
  return measured.map(([m, v]) => [m, f0(v.requestsPerSec), f0(v.p50), f0(v.p90), f0(v.p99), f1(v.cpuPerRequestUs), String(v.errors)])
}

const HEAD = ['mode', 'requests/s', 'p50 µs', 'p90 µs', 'p99 µs', 'CPU µs/req', 'errors']

/** x1.71 (x1.24-x1.78): the median of per-round ratios and the lowest and highest round. */
const ratio = (r: Ratio) => (Number.isFinite(r.median) ? `${x2(r.median)} (${x2(r.low)}-${x2(r.high)})` : '-')

function ratioLines(s: ScenarioSummary, baselineName = BASELINE): string[] {
  const head = `median of ${s.ratios.requestsPerSec.rounds} round(s) whose samples compared were quiet (lowest-highest round): requests/s ${ratio(s.ratios.requestsPerSec)}, p50 ${ratio(s.ratios.p50)}, p99 ${ratio(s.ratios.p99)}`
  const lines = [
    s.outside
      ? `ebpf/direct (merbridge enabled against not, for traffic it should leave alone), ${head}, CPU per request ${ratio(s.ratios.cpuPerRequest)}`
      : `ebpf/iptables, ${head}, CPU added over direct ${ratio(s.ratios.addedCpu)}`,
  ]
  if (s.modes.baseline)
    lines.push(
      `ebpf/${baselineName}, ${s.ratios.baselineRequestsPerSec.rounds} round(s): requests/s ${ratio(s.ratios.baselineRequestsPerSec)}, p50 ${ratio(s.ratios.baselineP50)}`,
    )
  if (s.sidecars) {
    const us = (r: Ratio) => (Number.isFinite(r.median) ? `${sign(r.median)} (${sign(r.low)} to ${sign(r.high)})` : '-')
    const beyond = [
      ['iptables', s.sidecars.cpuBeyondUs.iptables],
      ['ebpf', s.sidecars.cpuBeyondUs.ebpf],
      ...(s.sidecars.cpuBeyondUs.baseline ? [[baselineName, s.sidecars.cpuBeyondUs.baseline] as const] : []),
    ] as const
    lines.push(
      `CPU µs per request beyond the ${SIDECARS} mode (the same sidecars on plain TCP, nothing intercepted): ${beyond.map(([m, r]) => `${m} ${us(r)}`).join(', ')}`,
      `${SIDECARS}/iptables, all that removing interception alone gives (${s.sidecars.requestsPerSec.rounds} round(s)): requests/s ${ratio(s.sidecars.requestsPerSec)}, CPU added over direct ${ratio(s.sidecars.addedCpu)}`,
    )
  }
  for (const [mode, costs] of [
    ['ebpf', s.programs?.ebpf],
    [baselineName, s.programs?.baseline],
  ] as const)
    if (costs)
      lines.push(
        `programs per request in ${mode} (kernel.bpf_stats_enabled=1; runs x ns per run = µs): ${costs.map((p) => `${p.name} ${p.runsPerRequest.toFixed(1)} x ${f0(p.nsPerRun)} = ${p.usPerRequest.toFixed(2)}`).join(', ')}; all ${costs.reduce((a, p) => a + p.usPerRequest, 0).toFixed(1)} µs`,
      )
  if (s.leftOut.length > 0)
    lines.push(
      `noisy: ${s.leftOut.map((l) => `round ${l.round} (other processes took up to ${l.otherCpuPct.toFixed(0)}% of the machine, the hypervisor ${l.stealPct.toFixed(0)}%)`).join(', ')}; a ratio takes a round only where the samples it compares stayed at or under ${QUIET_OTHER_CPU_PCT}% of both together`,
    )
  if (!s.reliable) lines.push(`not reliable: fewer than 2 quiet rounds`)
  return lines
}

export function renderBenchSummary(s: ScenarioSummary, baselineName?: string): string {
  return [c.bold(s.title), renderTable(HEAD, rows(s, baselineName)), ...ratioLines(s, baselineName)].join('\n')
}

const shapeTitle = (shape: ShapeReport) => `sidecars with ${shape.sidecarThreads} thread${shape.sidecarThreads === 1 ? '' : 's'}`

/** The scale scenario in lines, the same for the terminal and Markdown. */
export function scaleLines(s: ScaleReport): string[] {
  const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`
  const refused = ['sockhashFull', 'socketOverShare', 'originLost', 'originOverShare'] as const
  return [
    `${s.held.toLocaleString('en-US')} of ${s.connections.toLocaleString('en-US')} connections held through both sidecars (${s.pods} client pods, ${s.pods} server pods), ${s.failed} failed, opened and echoed in ${s.openSeconds.toFixed(1)} s`,
    `enable --max-connections ${s.maxConnections}: ${s.entries.sockets.toLocaleString('en-US')} sockets in sock_pair_map, ${s.entries.origins.toLocaleString('en-US')} entries in pair_original_dst; kernel memory ${mb(s.memoryBytes.sockPairMap)} and ${mb(s.memoryBytes.pairOriginalDst)}`,
    `refused while opening: ${refused.map((k) => `${k} ${s.counters[k] ?? 0}`).join(', ')}; messages redirected ${(s.counters.msgRedirected ?? 0).toLocaleString('en-US')}, sockets kept on TCP (data took TCP first) ${s.counters.redirectMiss ?? 0}`,
    s.allRedirected ? 'every connection redirected: none left on TCP for want of an entry' : 'NOT every connection was held and redirected',
  ]
}

export function renderBench(r: BenchReport): string {
  const rounds = r.shapes.length > 0 ? `${r.rounds} round(s) of ${r.durationSec} s per mode and scenario, ` : ''
  const out = [c.bold(`merbridge bench: ${rounds}Linux ${r.machine.kernel}, ${r.machine.cpus} CPUs`)]
  for (const shape of r.shapes) {
    out.push('', c.bold(c.cyan(shapeTitle(shape))))
    for (const s of shape.summary) out.push('', renderBenchSummary(s, r.baseline))
  }
  if (r.scale)
    out.push(
      '',
      c.bold(c.cyan('scale')),
      ...scaleLines(r.scale).map((l, i, all) => (i === all.length - 1 ? (r.scale?.allRedirected ? c.green(l) : c.red(l)) : l)),
    )
  return out.join('\n')
}

export function renderBenchMarkdown(r: BenchReport): string {
  const out = [
    `${r.shapes.length > 0 ? `Rounds: ${r.rounds}, ${r.durationSec} s per mode and scenario; medians over rounds. ` : ''}Linux ${r.machine.kernel}, ${r.machine.cpus} CPUs.`,
  ]
  for (const shape of r.shapes) {
    out.push('', `## ${shapeTitle(shape)}`)
    for (const s of shape.summary) {
      out.push('', `### ${s.title}`, '', `| ${HEAD.join(' | ')} |`, `|${HEAD.map(() => '---').join('|')}|`)
      for (const row of rows(s, r.baseline)) out.push(`| ${row.join(' | ')} |`)
      out.push('', ...ratioLines(s, r.baseline).map((l) => `${l}  `))
    }
  }
  if (r.scale) out.push('', '## scale', '', ...scaleLines(r.scale).map((l) => `${l}  `))
  return out.join('\n')
}
