import type {Endpoint, MapDump} from '../datapath/dump-maps.js'
import {renderTable} from './table.js'
import {c} from './theme.js'

const endpoint = (e?: Endpoint) => (e ? `${e.ip}${e.port === undefined ? '' : `:${e.port}`}${e.pod ? c.cyan(` ${e.pod}`) : ''}` : '-')
const list = (v: string | (string | number)[]) => (Array.isArray(v) ? (v.length ? v.join(',') : '-') : v)

export function renderMapDump(m: MapDump): string {
  const head = `${c.bold(m.map)} ${c.dim(`(${m.rows.length} shown of ${m.total})`)}`
  if (m.rows.length === 0) return `${head}\n  ${c.dim('empty')}`
  return `${head}\n${table(m)}`
}

function table(m: MapDump): string {
  switch (m.map) {
    case 'sock_pair_map':
      return renderTable(
        ['local end', 'remote end', 'netns', 'socket cookie'],
        m.rows.map((x) => [endpoint(x.local), endpoint(x.remote), x.netns, x.cookie ?? '-']),
      )
    case 'pair_original_dst':
      return renderTable(
        ['connection (connecting end)', 'original destination', 'pid', 'flags'],
        m.rows.map((x) => [
          `${endpoint(x.connection.local)} → ${endpoint(x.connection.remote)}`,
          endpoint(x.originalDst),
          `${x.pid}${x.process ? ` ${x.process}` : ''}`,
          list(x.flags),
        ]),
      )
    case 'pod_usage':
      return renderTable(
        ['netns cookie', 'pod', 'sockets (sock_pair_map)', 'original destinations'],
        m.rows.map((x) => [x.netns === '0' ? c.bold('node total') : x.netns, x.pod ?? '-', x.sockets, x.origins]),
      )
    case 'process_ip':
      return renderTable(
        ['pid', 'process', 'pod IP', 'pod', 'netns'],
        m.rows.map((x) => [x.pid, x.process ?? c.dim('(exited)'), x.podIp, x.pod ?? '-', x.netns]),
      )
    case 'local_pod_ips':
      return renderTable(
        [
          'pod IP',
          'pod',
          'outbound CIDRs',
          'excluded CIDRs',
          'out ports',
          'excluded out ports',
          'inbound ports',
          'excluded in ports',
          'DNS capture',
          'proxy uid/gid',
          'IPv6',
          'out groups',
          'localhost',
        ],
        m.rows.map((x) => [
          x.ip,
          x.pod ?? '-',
          list(x.rules.outboundCidrs),
          list(x.rules.excludedOutboundCidrs),
          list(x.rules.outboundPorts),
          list(x.rules.excludedOutboundPorts),
          list(x.rules.inboundPorts),
          list(x.rules.excludedInboundPorts),
          x.rules.dns === null ? 'off' : list(x.rules.dns),
          `${x.rules.proxyUid}/${x.rules.proxyGid}`,
          x.rules.ipv6 ? 'captured' : 'left alone',
          x.rules.excludedOutboundGroups.length > 0 ? `* but ${list(x.rules.excludedOutboundGroups)}` : list(x.rules.outboundGroups),
          x.rules.localhost,
        ]),
      )
    case 'netns_pod_ips':
      return renderTable(
        ['netns cookie', 'pod IPs', 'pod'],
        m.rows.map((x) => [x.netns, x.ip6 ? `${x.ip} ${x.ip6}` : x.ip, x.pod ?? '-']),
      )
    case 'pod_other_ips':
      return renderTable(
        ['address', 'pod IP', 'pod'],
        m.rows.map((x) => [x.ip, x.owner ?? c.dim('(shared by pods of separate networks)'), x.pod ?? '-']),
      )
    case 'inbound_skip':
      return renderTable(
        ['netns cookie', 'interface index', 'pod'],
        m.rows.map((x) => [x.netns, x.ifindex, x.pod ?? '-']),
      )
    case 'settings':
      return renderTable(
        ['field', 'value'],
        Object.entries(m.rows[0] ?? {}).map(([k, v]) => [k, String(v)]),
      )
    case 'counters':
      return renderTable(
        ['counter', 'value'],
        m.rows.map((x) => [x.counter, x.value]),
      )
  }
}
