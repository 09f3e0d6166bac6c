import {Flags} from '@oclif/core'
import {hostname} from 'node:os'
import {buildObjects} from '../bpf/objects.js'
import {Installation} from '../datapath/installation.js'
import {withInstallationLock} from '../datapath/lock.js'
import {applyPods, podsRecord, savePodsRecord} from '../datapath/pods-sync.js'
import {MerbridgeError} from '../errors.js'
import {loadPods} from '../kube/source.js'
import {meshProfile} from '../mesh/profiles.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {bpffsFlag, podSourceFlags, recheckFlag, watchInForeground} from '../ui/flags.js'
import {c} from '../ui/theme.js'

export interface SyncCommandResult {
  source: string
  meshed: {namespace: string; name: string; ip: string; netns?: string}[]
  unregistered: {namespace: string; name: string; ip: string}[]
  skipped: {namespace: string; name: string; reason: string}[]
  warnings: string[]
  written: number
  deleted: number
}

export default class Sync extends BaseCommand {
  static override summary = "Make merbridge's maps match this node's pods, once or continuously"
  static override description = 'Lists the pods of this node (from the Kubernetes API, or --pods-file), registers the meshed ones with the datapath and removes the rest, in one batch of map updates. With --watch it keeps doing so: it watches from the list\'s resourceVersion, lists again on 410 Gone, reconnects with backoff, retries pods whose network namespace is not found yet, logs one line per change, and stops cleanly on SIGINT or SIGTERM. A failure before anything is written leaves the maps as they were.'

  static override examples = [
    {command: '<%= config.bin %> sync', description: 'Sync once from the Kubernetes API'},
    {command: '<%= config.bin %> sync --watch --kubeconfig /etc/kubernetes/kubelet.conf', description: 'Keep syncing, as a node service would'},
    {command: 'kubectl get pods -A -o json | <%= config.bin %> sync --pods-file -', description: 'Sync from a pods list'},
  ]

  static override flags = {
    ...podSourceFlags,
    watch: Flags.boolean({description: 'keep the maps matching the pods until stopped'}),
    recheck: recheckFlag,
    bpffs: bpffsFlag,
  }

  async run(): Promise<SyncCommandResult | undefined> {
    const {flags} = await this.parse(Sync)
    if (flags.watch && flags['pods-file']) this.error('--watch follows the Kubernetes API; it cannot watch --pods-file', {exit: 2})
    requirePrivileges('sync')
    const inst = new Installation(flags.bpffs)
    const state = await inst.readState()
    if (!state) throw new MerbridgeError(`merbridge is not enabled with ${inst.dir}`, {code: 'NOT_ENABLED', exitCode: 3, suggestion: 'merbridge enable first'})
    const node = flags.node ?? hostname()
    const mesh = meshProfile(state.mesh)
    const kube = {kubeconfig: flags.kubeconfig, context: flags.context}

    if (flags.watch) {
      await watchInForeground({log: (l) => this.log(l), json: this.jsonEnabled()}, inst, {kube, node, mesh, recheckMs: flags.recheck * 1000})
      return undefined
    }

    const loaded = await loadPods(flags['pods-file'], node, kube)
    const record = await withInstallationLock(inst, 'sync', async () => {
      const applied = await applyPods(inst, await buildObjects(), loaded.pods, {node, mesh, attachInbound: true})
      const pods = podsRecord(loaded.source, applied)
      await savePodsRecord(inst, pods)
      return {...pods, written: applied.sync.written, deleted: applied.sync.deleted}
    })
    const result: SyncCommandResult = record
    this.log(`${c.green('✔')} synced from ${result.source}: ${result.meshed.length} meshed and registered, ${result.unregistered.length} meshed but not found on this node, ${result.skipped.length} skipped; ${result.written} map entries written, ${result.deleted} removed`)
    for (const p of result.unregistered) this.log(c.yellow(`  ! ${p.namespace}/${p.name} (${p.ip}): no network namespace with this IP on the node yet`))
    for (const w of result.warnings) this.log(c.yellow(`  ! ${w}`))
    return result
  }
}
