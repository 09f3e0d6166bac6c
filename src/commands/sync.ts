import {Flags} from '@oclif/core'
import {hostname} from 'node:os'
import {Installation} from '../datapath/installation.js'
import {type SyncOnceResult, syncOnce} from '../datapath/sync.js'
import {meshProfile} from '../mesh/profiles.js'
import {requirePrivileges} from '../node/caps.js'
import {parseListenAddress} from '../listen-address.js'
import {BaseCommand} from '../ui/base-command.js'
import {allowEmptyFlag, bpffsFlag, hostProcFlag, metricsAddrFlag, podSourceFlags, recheckFlag, useHostProc} from '../ui/flags.js'
import {watchInForeground} from '../ui/foreground.js'
import {c} from '../ui/theme.js'

export default class Sync extends BaseCommand {
  static override summary = "Make merbridge's maps match this node's pods, once or continuously"
  static override description =
    "Lists the pods of this node (from the Kubernetes API, or --pods-file), registers the meshed ones with the datapath and removes the rest, in one batch of map updates. With --watch it keeps doing so: it watches from the list's resourceVersion, lists again on 410 Gone, reconnects with backoff, retries pods whose network namespace is not found yet, logs one line per change, and stops cleanly on SIGINT or SIGTERM. A failure before anything is written leaves the maps as they were."

  static override examples = [
    {command: '<%= config.bin %> sync', description: 'Sync once from the Kubernetes API'},
    {
      command: '<%= config.bin %> sync --watch --kubeconfig /etc/kubernetes/kubelet.conf',
      description: 'Keep syncing, as a node service would',
    },
    {command: 'kubectl get pods -A -o json | <%= config.bin %> sync --pods-file -', description: 'Sync from a pods list'},
  ]

  static override flags = {
    ...podSourceFlags,
    watch: Flags.boolean({description: 'keep the maps matching the pods until stopped'}),
    'allow-empty': allowEmptyFlag,
    recheck: recheckFlag,
    'metrics-addr': metricsAddrFlag,
    bpffs: bpffsFlag,
    'host-proc': hostProcFlag,
  }

  async run(): Promise<SyncOnceResult | undefined> {
    const {flags} = await this.parse(Sync)
    useHostProc(flags['host-proc'])
    if (flags.watch && flags['pods-file']) this.error('--watch follows the Kubernetes API; it cannot watch --pods-file', {exit: 2})
    if (flags['metrics-addr'] !== undefined && !flags.watch)
      this.error('--metrics-addr serves metrics while watching: add --watch', {exit: 2})
    if (flags['metrics-addr'] !== undefined) parseListenAddress(flags['metrics-addr'])
    requirePrivileges('sync')
    const inst = new Installation(flags.bpffs)
    const node = flags.node ?? hostname()
    const kube = {kubeconfig: flags.kubeconfig, context: flags.context}

    if (flags.watch) {
      const state = await inst.requireState()
      const metrics = flags['metrics-addr'] === undefined ? undefined : {addr: flags['metrics-addr'], version: this.config.version}
      await watchInForeground(
        {log: (l) => this.log(l), json: this.jsonEnabled()},
        inst,
        {kube, node, mesh: meshProfile(state.mesh), recheckMs: flags.recheck * 1000},
        metrics,
      )
      return undefined
    }

    const result = await syncOnce(inst, {podsFile: flags['pods-file'], kube, node, allowEmpty: flags['allow-empty']})
    this.log(
      `${c.green('✔')} synced from ${result.source}: ${result.meshed.length} meshed and registered, ${result.unregistered.length} meshed but not found on this node, ${result.skipped.length} skipped; ${result.written} map entries written, ${result.deleted} removed`,
    )
    for (const p of result.unregistered)
      this.log(c.yellow(`  ! ${p.namespace}/${p.name} (${p.ip}): no network namespace with this IP on the node yet`))
    for (const w of result.warnings) this.log(c.yellow(`  ! ${w}`))
    return result
  }
}
