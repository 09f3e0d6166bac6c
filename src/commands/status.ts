import {Flags} from '@oclif/core'
import {inspect, type StatusReport} from '../datapath/inspect.js'
import {Installation} from '../datapath/installation.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderTable} from '../ui/table.js'
import {c, mark} from '../ui/theme.js'

export const STATUS_EXIT = {healthy: 0, 'not-enabled': 3, unhealthy: 4} as const

const COUNTER_LABELS: Record<string, string> = {
  connOutbound: 'connections sent to the outbound sidecar',
  connInbound: 'sidecar connections sent to a local inbound sidecar',
  connUnregistered: '  of the outbound ones, from unregistered pods',
  msgRedirected: 'messages moved socket to socket',
  bytesRedirected: 'bytes moved socket to socket',
  redirectMiss: 'messages left on TCP (peer not tracked)',
  getsockoptAnswered: 'SO_ORIGINAL_DST answers',
  sockhashFull: 'sockets left on TCP (sock_pair_map full)',
  originLost: 'original destinations that could not be stored',
}

export default class Status extends BaseCommand {
  static override summary = 'Show whether merbridge is enabled on this node and healthy'
  static override description = 'Reads the installation from the kernel: each program (attached or not, load time, run count and time when kernel.bpf_stats_enabled is on), each map (entries and capacity), the pods registered at the last sync, the datapath counters, a verdict and a hint for every unhealthy state. Exit codes: 0 enabled and healthy, 3 not enabled, 4 enabled but unhealthy.'

  static override examples = [
    {command: '<%= config.bin %> status', description: 'Show the installation'},
    {command: '<%= config.bin %> status --json | jq .counters', description: 'The datapath counters, as data'},
  ]

  static override flags = {
    bpffs: Flags.string({description: 'bpffs folder of the installation', env: 'MERBRIDGE_BPFFS', default: '/sys/fs/bpf/merbridge'}),
  }

  async run(): Promise<StatusReport> {
    const {flags} = await this.parse(Status)
    requirePrivileges('status')
    const report = await inspect(new Installation(flags.bpffs))
    this.log(render(report))
    process.exitCode = STATUS_EXIT[report.verdict]
    return report
  }
}

function render(r: StatusReport): string {
  if (r.verdict === 'not-enabled') return `merbridge is not enabled on this node (no installation in ${r.bpffs})\n  ${c.dim('→ merbridge enable')}`
  const out: string[] = []
  out.push(`${c.bold('installation')}  ${r.bpffs}`)
  out.push(`${c.bold('cgroup')}        ${r.cgroup ?? '?'}`)
  out.push(`${c.bold('mesh')}          ${r.mesh ?? '?'}   ${c.bold('node')} ${r.node ?? '?'}   ${c.bold('enabled')} ${r.enabledAt ?? '?'}`)
  out.push('')
  out.push(
    renderTable(
      ['program', 'id', 'type', 'attached to', 'state', 'loaded', 'runs', 'avg ns'],
      r.programs.map((p) => [
        p.name,
        p.id ?? '-',
        p.type ?? '-',
        p.attachPoint,
        p.id === undefined ? c.red('not pinned') : p.attached === undefined ? 'attached by enable' : p.attached ? c.green('attached') : c.red('not attached'),
        p.loadedAt?.replace('T', ' ').replace(/\.\d+Z$/, 'Z') ?? '-',
        r.statsEnabled ? (p.runCount ?? 0) : 'off',
        r.statsEnabled && p.runCount ? Math.round((p.runTimeNs ?? 0) / p.runCount) : '-',
      ]),
    ),
  )
  out.push(
    renderTable(
      ['map', 'id', 'type', 'entries', 'capacity'],
      r.maps.map((m) => [m.name, m.id ?? '-', m.type ?? c.red('not pinned'), m.entries ?? '-', m.capacity ?? '-']),
    ),
  )
  if (r.pods) {
    out.push(`${c.bold('pods')} (last sync ${r.pods.syncedAt} from ${r.pods.source}): ${r.pods.meshed.length} meshed and registered, ${r.pods.unregistered.length} meshed but not found on the node, ${r.pods.skipped.length} skipped`)
    for (const p of r.pods.meshed) out.push(`  ${mark.pass} ${p.namespace}/${p.name} ${p.ip}`)
    for (const p of r.pods.unregistered) out.push(`  ${mark.warn} ${p.namespace}/${p.name} ${p.ip}: network namespace not found on this node`)
    for (const p of r.pods.skipped) out.push(`  ${c.dim(`- ${p.namespace}/${p.name}: ${p.reason}`)}`)
    for (const w of r.pods.warnings) out.push(`  ${mark.warn} ${w}`)
  }
  if (r.counters) {
    out.push(c.bold('datapath counters'))
    for (const [k, v] of Object.entries(r.counters)) out.push(`  ${String(v).padStart(14)}  ${COUNTER_LABELS[k] ?? k}`)
  }
  out.push('')
  if (r.verdict === 'healthy') out.push(c.green(`${mark.pass} merbridge is enabled and healthy`))
  else {
    out.push(c.red(`${mark.fail} merbridge is enabled but unhealthy:`))
    for (const p of r.problems) out.push(`  - ${p}`)
  }
  for (const h of r.hints) out.push(c.dim(`  → ${h}`))
  return out.join('\n')
}
