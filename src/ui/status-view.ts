import {COUNTERS, type CounterName} from '../bpf/layout.js'
import type {StatusReport} from '../datapath/status.js'
import {renderTable} from './table.js'
import {c, mark} from './theme.js'
import {duration, secondsSince} from '../text.js'

const COUNTER_LABELS: Record<CounterName, string> = {
  connOutbound: 'connections sent to the outbound sidecar',
  connInbound: 'sidecar connections sent to the inbound sidecar of a pod not registered yet',
  connUnregistered: '  of the outbound ones, from unregistered pods',
  msgRedirected: 'messages moved socket to socket',
  bytesRedirected: 'bytes moved socket to socket',
  redirectMiss: 'sockets kept on TCP (data took TCP before its peer was tracked)',
  getsockoptAnswered: 'SO_ORIGINAL_DST answers',
  sockhashFull: 'sockets left on TCP (sock_pair_map full)',
  originLost: 'connections refused: no room for their original destination (fail closed)',
  connOwnInbound: 'sidecar connections to their own pod sent to its inbound sidecar',
  inboundAssigned: 'packets from elsewhere handed to an inbound sidecar',
  inboundNoListener: 'packets dropped: no inbound sidecar listening (fail closed)',
  dnsRedirected: 'DNS connections and queries sent to the proxy',
  dnsReplyRestored: "DNS replies shown as the resolver's",
  inboundUnparsed: "TCP packets to a meshed pod's listener dropped: no TCP header found (fail closed)",
  socketOverShare: 'sockets left on TCP: their pod was over its share of a busy sock_pair_map',
  originOverShare: 'original destinations refused: their pod was over its share of a busy pair_original_dst',
  inboundRewritten:
    'connections from elsewhere sent to an inbound sidecar by rewriting their port (the kernel cannot hand them to its listener)',
  inboundReopened: 'SYNs reopening a connection still in TIME_WAIT, sent to an inbound sidecar by rewriting their port',
  inboundUncovered:
    "SYNs to a captured port dropped at an app's listener: they came in where inbound capture is not attached (merbridge sync attaches it), or in fragments (fail closed)",
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`

export function renderStatus(r: StatusReport): string {
  if (r.verdict === 'not-enabled')
    return `merbridge is not enabled on this node (no installation in ${r.bpffs})\n  ${c.dim('→ merbridge enable')}`
  const out: string[] = []
  out.push(`${c.bold('installation')}  ${r.bpffs}`)
  out.push(`${c.bold('cgroup')}        ${r.cgroup ?? '?'}`)
  out.push(
    `${c.bold('mesh')}          ${r.mesh ?? '?'}   ${c.bold('node')} ${r.node ?? '?'}   ${c.bold('enabled')} ${r.enabledAt ?? '?'}${r.cni ? `   ${c.bold('CNI mode')}` : ''}`,
  )
  out.push('')
  out.push(
    renderTable(
      ['program', 'id', 'type', 'attached to', 'state', 'loaded', 'runs', 'avg ns'],
      r.programs.map((p) => [
        p.name,
        p.id ?? '-',
        p.type ?? '-',
        p.attachPoint,
        p.id === undefined
          ? c.red('not pinned')
          : p.attached === undefined
            ? 'attached by enable'
            : p.attached
              ? c.green('attached')
              : c.red('not attached'),
        p.loadedAt?.replace('T', ' ').replace(/\.\d+Z$/, 'Z') ?? '-',
        r.statsEnabled ? (p.runCount ?? 0) : 'off',
        r.statsEnabled && p.runCount ? Math.round((p.runTimeNs ?? 0) / p.runCount) : '-',
      ]),
    ),
  )
  out.push(
    renderTable(
      ['map', 'id', 'type', 'entries', 'capacity', 'memory'],
      [
        ...r.maps.map((m) => [
          m.name,
          m.id ?? '-',
          m.type ?? c.red('not pinned'),
          m.entries ?? '-',
          m.capacity ?? '-',
          m.memoryBytes === undefined ? '-' : mib(m.memoryBytes),
        ]),
        ['', '', '', '', c.bold('total'), mib(r.maps.reduce((t, m) => t + (m.memoryBytes ?? 0), 0))],
      ],
    ),
  )
  if (r.pods) {
    out.push(
      `${c.bold('pods')} (last sync ${r.pods.syncedAt} from ${r.pods.source}): ${r.pods.meshed.length} meshed and registered, ${r.pods.unregistered.length} meshed but not found on the node, ${r.pods.skipped.length} skipped`,
    )
    for (const p of r.pods.meshed) out.push(`  ${mark.pass} ${p.namespace}/${p.name} ${p.ip}`)
    for (const p of r.pods.unregistered)
      out.push(
        `  ${mark.warn} ${p.namespace}/${p.name} ${p.ip}: network namespace not found on this node${p.since ? ` for ${duration(secondsSince(p.since))} (since ${p.since})` : ''}: inbound not captured, outbound only once its sidecar listens`,
      )
    for (const p of r.pods.skipped) out.push(`  ${c.dim(`- ${p.namespace}/${p.name}: ${p.reason}`)}`)
    for (const w of r.pods.warnings) out.push(`  ${mark.warn} ${w}`)
  }
  if (r.counters) {
    out.push(c.bold('datapath counters'))
    for (const k of COUNTERS) out.push(`  ${String(r.counters[k]).padStart(14)}  ${COUNTER_LABELS[k]}`)
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
