import {inspect, type StatusReport} from '../datapath/status.js'
import {Installation} from '../datapath/installation.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {bpffsFlag} from '../ui/flags.js'
import {renderStatus} from '../ui/status-view.js'

export const STATUS_EXIT = {healthy: 0, 'not-enabled': 3, unhealthy: 4} as const

export default class Status extends BaseCommand {
  static override summary = 'Show whether merbridge is enabled on this node and healthy'
  static override description =
    'Reads the installation from the kernel: each program (attached or not, load time, run count and time when kernel.bpf_stats_enabled is on), each map (entries and capacity), the pods registered at the last sync, the datapath counters, a verdict and a hint for every unhealthy state. Exit codes: 0 enabled and healthy, 3 not enabled, 4 enabled but unhealthy.'

  static override examples = [
    {command: '<%= config.bin %> status', description: 'Show the installation'},
    {command: '<%= config.bin %> status --json | jq .counters', description: 'The datapath counters, as data'},
  ]

  static override flags = {
    bpffs: bpffsFlag,
  }

  async run(): Promise<StatusReport> {
    const {flags} = await this.parse(Status)
    requirePrivileges('status')
    const report = await inspect(new Installation(flags.bpffs))
    if (!this.jsonEnabled()) this.log(renderStatus(report))
    process.exitCode = STATUS_EXIT[report.verdict]
    return report
  }
}
