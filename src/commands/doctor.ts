import {Flags} from '@oclif/core'
import {runPreflight, type PreflightResult} from '../datapath/doctor.js'
import {BaseCommand} from '../ui/base-command.js'
import {bpffsFlag} from '../ui/flags.js'
import {checksVerdict, renderChecks} from '../ui/checks.js'

export default class Doctor extends BaseCommand {
  static override summary = 'Check whether this node can run merbridge, and what to fix if not'
  static override description = `Runs every preflight check for real on this node: privileges, kernel version and BTF, the cgroup v2 mount, the bpf filesystem, clang and bpftool, the kernel's BPF program types, map types and helpers, programs other tools attached to the cgroup, whether merbridge is already enabled, and if so whether its inbound capture is on every interface of the registered pods found on this node. Exit code 0 when every required check passes, 1 otherwise.`

  static override examples = [
    {
      command: '<%= config.bin %> doctor',
      description: 'Check this node',
    },
    {
      command: '<%= config.bin %> doctor --cgroup /sys/fs/cgroup/unified --json',
      description: 'Check a chosen cgroup v2 mount, as data',
    },
  ]

  static override flags = {
    cgroup: Flags.string({description: 'cgroup v2 folder to attach to (default: found automatically)', env: 'MERBRIDGE_CGROUP'}),
    bpffs: bpffsFlag,
  }

  async run(): Promise<PreflightResult> {
    const {flags} = await this.parse(Doctor)
    const result = await runPreflight({cgroup: flags.cgroup, bpffs: flags.bpffs, inbound: true, probeLoads: true})
    this.log(renderChecks(result.checks))
    this.log('')
    this.log(checksVerdict(result.checks))
    if (!result.ok) process.exitCode = 1
    return result
  }
}
