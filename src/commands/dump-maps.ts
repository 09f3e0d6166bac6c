import {Args, Flags} from '@oclif/core'
import {isIP} from 'node:net'
import {DUMPABLE, dumpMaps, type Endpoint, type MapDump, type Row} from '../datapath/dump.js'
import {Installation} from '../datapath/installation.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderTable} from '../ui/table.js'
import {c} from '../ui/theme.js'

export default class DumpMaps extends BaseCommand {
  static override summary = "Decode merbridge's maps into readable rows"
  static override description = `Decodes every map of the installation (or the ones named): connections and their two ends, original destinations with the pid that connected, sidecar processes, the local pods and their rules, pod identities, settings and counters. IPs and ports in the usual notation, with the pod's namespace/name beside every IP of a known pod. Valid map names: ${DUMPABLE.join(', ')}.`

  static override strict = false
  static override args = {
    map: Args.string({description: `maps to show (default: all): ${DUMPABLE.join(', ')}`}),
  }

  static override examples = [
    {command: '<%= config.bin %> dump-maps', description: 'Every map'},
    {command: '<%= config.bin %> dump-maps pair_original_dst --pod reviews-v1 --limit 20', description: "One pod's connections"},
    {command: '<%= config.bin %> dump-maps sock_pair_map --port 15006 --json', description: 'As data'},
  ]

  static override flags = {
    bpffs: Flags.string({description: 'bpffs folder of the installation', env: 'MERBRIDGE_BPFFS', default: '/sys/fs/bpf/merbridge'}),
    limit: Flags.integer({description: 'at most this many rows per map', min: 1}),
    pod: Flags.string({description: 'only rows about this pod (name or namespace/name)'}),
    ip: Flags.string({description: 'only rows with this IP'}),
    port: Flags.integer({description: 'only rows with this port', min: 0, max: 65535}),
  }

  async run(): Promise<{maps: MapDump[]}> {
    const {argv, flags} = await this.parse(DumpMaps)
    if (flags.ip && !isIP(flags.ip)) this.error(`--ip ${flags.ip} is not an IP address`, {exit: 2})
    requirePrivileges('dump-maps')
    const maps = await dumpMaps(new Installation(flags.bpffs), argv as string[], {pod: flags.pod, ip: flags.ip, port: flags.port}, flags.limit)
    for (const m of maps) this.log(render(m) + '\n')
    return {maps}
  }
}

const endpoint = (e?: Endpoint) => (e ? `${e.ip}${e.port === undefined ? '' : `:${e.port}`}${e.pod ? c.cyan(` ${e.pod}`) : ''}` : '-')
const list = (v: unknown) => (Array.isArray(v) ? (v.length ? v.join(',') : '-') : String(v))

function render(m: MapDump): string {
  const head = `${c.bold(m.map)} ${c.dim(`(${m.rows.length} shown of ${m.total})`)}`
  if (m.rows.length === 0) return `${head}\n  ${c.dim('empty')}`
  const r = m.rows as Row[]
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
