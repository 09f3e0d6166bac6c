import {type DisableResult, disable} from '../datapath/disable.js'
import {Installation} from '../datapath/installation.js'
import {withInstallationLock} from '../datapath/lock.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {bpffsFlag, hostProcFlag, useHostProc} from '../ui/flags.js'
import {c} from '../ui/theme.js'

export default class Disable extends BaseCommand {
  static override summary = 'Detach and remove everything merbridge put on this node'
  static override description = `Stops rewriting connections (established ones continue over TCP), releases each tracked socket once it has read what was moved to it (waiting up to 10 s), detaches every program of the installation wherever it is attached, unpins programs and maps, and verifies that nothing is left. Safe to run again, and cleans a half-enabled node too.`

  static override examples = [{command: '<%= config.bin %> disable', description: 'Remove merbridge from this node'}]

  static override flags = {
    bpffs: bpffsFlag,
    'host-proc': hostProcFlag,
  }

  async run(): Promise<DisableResult> {
    const {flags} = await this.parse(Disable)
    useHostProc(flags['host-proc'])
    requirePrivileges('disable')
    const inst = new Installation(flags.bpffs)
    const result = await withInstallationLock(inst, 'disable', () => disable(inst))
    if (!result.wasEnabled) this.log(`merbridge was not enabled with ${result.bpffs}; nothing to do`)
    else {
      this.log(
        c.green('✔ merbridge is disabled') +
          `: ${result.detached.length} attachment(s) removed, ${result.unpinned.length} pin(s) removed from ${result.bpffs}, ${result.released} socket(s) released to plain TCP`,
      )
      const without = result.unavailable['sockmap-iterator']
      if (without !== undefined && result.unreleased > 0)
        this.log(
          c.yellow(
            `! without the socket map iterator (${without}) no socket could be released: ${result.unreleased} tracked socket(s) go on over TCP, and the kernel frees the last of merbridge's programs and maps (unpinned, attached nowhere) when they close`,
          ),
        )
      else if (result.unreleased > 0)
        this.log(
          c.yellow(
            `! ${result.unreleased} socket(s) had not read what merbridge moved to them: left as they are (their connections go on over TCP once it is read); the kernel frees the last of merbridge's programs and maps when they close`,
          ),
        )
      const cni = result.cniConfig
      if (cni?.unreachable !== undefined)
        this.log(
          c.yellow(
            `! merbridge-cni was put into the CNI configuration in ${cni.unreachable}, which this process does not see: take it out where enable ran (the DaemonSet: deploy/uninstall.yaml), or no pod starts on this node`,
          ),
        )
      else if (cni && cni.restored.length + cni.edited.length > 0)
        this.log(`merbridge-cni taken out of ${[...cni.restored, ...cni.edited].join(', ')}`)
    }
    return result
  }
}
