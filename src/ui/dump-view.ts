import type {Endpoint, MapDump, Row} from '../datapath/dump.js'
import {renderTable} from './table.js'
import {c} from './theme.js'

const endpoint = (e?: Endpoint) => (e ? `${e.ip}${e.port === undefined ? '' : `:${e.port}`}${e.pod ? c.cyan(` ${e.pod}`) : ''}` : '-')
const list = (v: unknown) => (Array.isArray(v) ? (v.length ? v.join(',') : '-') : String(v))

export function renderMapDump(m: MapDump): string {
  const head = `${c.bold(m.map)} ${c.dim(`(${m.rows.length} shown of ${m.total})`)}`
  if (m.rows.length === 0) return `${head}\n  ${c.dim('empty')}`
  const r = m.rows
  const tables: Record<string, () => string> = {
    sock_pair_map: () => renderTable(['local end', 'remote end', 'netns', 'socket cookie'], r.map((x: any) => [endpoint(x.local), endpoint(x.remote), x.netns, x.cookie ?? '-'])),
    pair_original_dst: () =>
      renderTable(['connection (connecting end)', 'original destination', 'pid', 'flags'], r.map((x: any) => [`${endpoint(x.connection.local)} → ${endpoint(x.connection.remote)}`, endpoint(x.originalDst), `${x.pid}${x.process ? ` ${x.process}` : ''}`, list(x.flags)])),
    process_ip: () => renderTable(['pid', 'process', 'pod IP', 'pod', 'netns'], r.map((x: any) => [x.pid, x.process ?? c.dim('(exited)'), x.podIp, x.pod ?? '-', x.netns])),
    local_pod_ips: () =>
      renderTable(
        ['pod IP', 'pod', 'outbound CIDRs', 'excluded CIDRs', 'out ports', 'excluded out ports', 'inbound ports', 'excluded in ports'],
        r.map((x: any) => [x.ip, x.pod ?? '-', list(x.rules.outboundCidrs), list(x.rules.excludedOutboundCidrs), list(x.rules.outboundPorts), list(x.rules.excludedOutboundPorts), list(x.rules.inboundPorts), list(x.rules.excludedInboundPorts)]),
      ),
    netns_pod_ips: () => renderTable(['netns cookie', 'pod IP', 'pod'], r.map((x: any) => [x.netns, x.ip, x.pod ?? '-'])),
    settings: () => renderTable(['field', 'value'], Object.entries(r[0] ?? {}).map(([k, v]) => [k, String(v)])),
    counters: () => renderTable(['counter', 'value'], r.map((x: any) => [x.counter, x.value])),
  }
  return `${head}\n${tables[m.map]!()}`
}
