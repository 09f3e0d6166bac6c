import {Args, Flags} from '@oclif/core'
import {isIP} from 'node:net'
import {DUMPABLE, dumpMaps, type MapDump} from '../datapath/dump-maps.js'
import {Installation} from '../datapath/installation.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {bpffsFlag, hostProcFlag, useHostProc} from '../ui/flags.js'
import {renderMapDump} from '../ui/dump-view.js'

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
    bpffs: bpffsFlag,
    'host-proc': hostProcFlag,
    limit: Flags.integer({description: 'at most this many rows per map', min: 1}),
    pod: Flags.string({description: 'only rows about this pod (name or namespace/name)'}),
    ip: Flags.string({description: 'only rows with this IP'}),
    port: Flags.integer({description: 'only rows with this port', min: 0, max: 65535}),
  }

  async run(): Promise<{maps: MapDump[]} | undefined> {
    const {argv, flags} = await this.parse(DumpMaps)
    useHostProc(flags['host-proc'])
    if (flags.ip && !isIP(flags.ip)) this.error(`--ip ${flags.ip} is not an IP address`, {exit: 2})
    requirePrivileges('dump-maps')
    const maps = await dumpMaps(
      new Installation(flags.bpffs),
      argv as string[],
      {pod: flags.pod, ip: flags.ip, port: flags.port},
      flags.limit,
    )
    if (this.jsonEnabled()) {
      // row by row: one string of a full 65,535-entry map would be tens of megabytes
      await writeJson(maps)
      return undefined
    }
    for (const m of maps) this.log(renderMapDump(m) + '\n')
    return {maps}
  }
}

async function writeJson(maps: MapDump[]): Promise<void> {
  const out = process.stdout
  // rows gathered into chunks of about 64 KiB: a write per row cost more than decoding the map
  let chunk = ''
  const flush = () => {
    const text = chunk
    chunk = ''
    return out.write(text) ? Promise.resolve() : new Promise<void>((resolve) => out.once('drain', () => resolve()))
  }
  const write = async (text: string) => {
    chunk += text
    if (chunk.length >= 65_536) await flush()
  }
  await write('{"maps": [')
  for (const [i, m] of maps.entries()) {
    await write(`${i ? ',' : ''}\n  {"map": ${JSON.stringify(m.map)}, "total": ${m.total}, "rows": [`)
    for (let r = 0; r < m.rows.length; r++) await write(`${r ? ',' : ''}\n    ${JSON.stringify(m.rows[r])}`)
    await write(m.rows.length ? '\n  ]}' : ']}')
  }
  await write('\n]}\n')
  await flush()
}
