import {existsSync, statSync} from 'node:fs'
import {Flags} from '@oclif/core'
import {enable, type EnableContext} from '../datapath/enable.js'
import type {InstallState} from '../datapath/installation.js'
import {podsRecord} from '../datapath/sync.js'
import {required} from '../errors.js'
import {MESH_NAMES} from '../mesh/profiles.js'
import {requirePrivileges} from '../node/caps.js'
import {parseListenAddress} from '../listen-address.js'
import {BaseCommand} from '../ui/base-command.js'
import {runWithProgress} from '../ui/steps.js'
import {allowEmptyFlag, bpffsFlag, hostProcFlag, metricsAddrFlag, podSourceFlags, recheckFlag, useHostProc} from '../ui/flags.js'
import {serveEarly, watchInForeground} from '../ui/foreground.js'
import {c} from '../ui/theme.js'

export interface EnableResult {
  enabled: true
  mode: EnableContext['mode']
  bpffs: string
  cgroup: string
  mesh: string
  node: string
  objectHash: string
  /** entries of the connection maps */
  maxConnections: number
  compiled: boolean
  pods: InstallState['pods']
  /** what was wrong with an up-to-date installation that this enable replaced */
  repaired?: string
  /**
   * how a replace went: 'in place' (the new programs took the old ones' places on the same maps,
   * never nothing attached), 'new maps' (the maps' layout changed: the new programs ran beside the
   * old ones on maps of their own until the old ones were drained and detached; why, and the old
   * sockhash's sockets released or left), or 'anew' (removed, then loaded: a broken installation,
   * with why)
   */
  replaced?: {how: 'in place' | 'new maps' | 'anew'; why?: string; released?: number; unreleased?: number}
}

export default class Enable extends BaseCommand {
  static override summary = "Load the eBPF datapath, attach it to the cgroup v2 root and load this node's pods"
  static override description = `Checks the node, compiles the programs in bpf/ (cached by a hash of sources and flags), loads and pins them under one bpffs folder, attaches them to the cgroup v2 root, and fills the maps with the meshed pods of this node. If any step fails, everything done so far is undone. Enabling an enabled node reloads its pods, or replaces the programs when their sources changed.`

  static override examples = [
    {command: '<%= config.bin %> enable', description: 'Enable with the pods the Kubernetes API reports for this node'},
    {command: '<%= config.bin %> enable --watch', description: 'Enable, then keep the pods in sync until stopped'},
    {command: 'kubectl get pods -A -o json | <%= config.bin %> enable --pods-file -', description: 'Enable with the pods kubectl reports'},
    {
      command: '<%= config.bin %> enable --cgroup /sys/fs/cgroup/unified --pods-file pods.json --json',
      description: 'Choose the cgroup; print the result as data',
    },
  ]

  static override flags = {
    mesh: Flags.string({description: 'service mesh whose sidecars to accelerate', options: MESH_NAMES, default: 'istio'}),
    cgroup: Flags.string({description: 'cgroup v2 folder to attach to (default: the cgroup v2 root)', env: 'MERBRIDGE_CGROUP'}),
    bpffs: bpffsFlag,
    'host-proc': hostProcFlag,
    ...podSourceFlags,
    watch: Flags.boolean({description: 'after enabling, keep the maps matching the pods until stopped (what a node service runs)'}),
    recheck: recheckFlag,
    'metrics-addr': metricsAddrFlag,
    'cni-socket': Flags.string({
      description:
        'with --watch: answer merbridge-cni, the chained CNI plugin, on this unix socket (CNI mode: pods are registered before their first container starts)',
    }),
    'cni-conf-dir': Flags.string({
      description:
        "with --cni-socket: put merbridge-cni at the end of the runtime's network configuration in this folder (/etc/cni/net.d), and back whenever it is rewritten; disable takes it out",
    }),
    'cni-bin-dir': Flags.string({
      description: 'with --cni-conf-dir: the CNI plugin binaries folder to copy merbridge-cni into (/opt/cni/bin)',
    }),
    'max-connections': Flags.integer({
      description:
        'entries of the connection maps (sock_pair_map, pair_original_dst): about six per proxied connection; default: what the installation has, else 65535',
      min: 1024,
      max: 4_194_304,
    }),
    rebuild: Flags.boolean({description: 'compile the programs even if the cache holds them'}),
    'allow-empty': allowEmptyFlag,
  }

  async run(): Promise<EnableResult | undefined> {
    const {flags} = await this.parse(Enable)
    useHostProc(flags['host-proc'])
    if (flags.watch && flags['pods-file']) this.error('--watch follows the Kubernetes API; it cannot watch --pods-file', {exit: 2})
    if (flags['metrics-addr'] !== undefined && !flags.watch)
      this.error('--metrics-addr serves metrics while watching: add --watch', {exit: 2})
    if (flags['metrics-addr'] !== undefined) parseListenAddress(flags['metrics-addr'])
    if (flags['cni-socket'] !== undefined && !flags.watch)
      this.error('--cni-socket answers the CNI plugin while watching: add --watch', {exit: 2})
    if (flags['cni-socket'] !== undefined && !flags['cni-socket'].startsWith('/'))
      this.error(`--cni-socket ${flags['cni-socket']} is not an absolute path: give one such as /run/merbridge/cni.sock`, {exit: 2})
    if ((flags['cni-conf-dir'] === undefined) !== (flags['cni-bin-dir'] === undefined))
      this.error('--cni-conf-dir and --cni-bin-dir go together: give both, or neither', {exit: 2})
    if (flags['cni-conf-dir'] !== undefined && flags['cni-socket'] === undefined)
      this.error('--cni-conf-dir installs the plugin for the agent: add --cni-socket (and --watch)', {exit: 2})
    for (const f of ['cni-conf-dir', 'cni-bin-dir'] as const) {
      const dir = flags[f]
      if (dir !== undefined && !(existsSync(dir) && statSync(dir).isDirectory()))
        this.error(`--${f} ${dir} is not a folder: give the node's CNI folder`, {exit: 2})
    }
    requirePrivileges('enable')
    const kube = {kubeconfig: flags.kubeconfig, context: flags.context}
    // Ctrl-C or a service manager's SIGTERM: finish the step under way, undo everything, say so
    const interrupt = new AbortController()
    const onSignal = (name: NodeJS.Signals) => interrupt.abort(name)
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    let ctx: EnableContext
    // liveness from the first second: a first enable on a big node takes a while
    const early =
      flags.watch && flags['metrics-addr'] !== undefined
        ? await serveEarly(flags['metrics-addr'], (l) => (this.jsonEnabled() ? undefined : this.log(l)))
        : undefined
    try {
      const silent = this.jsonEnabled()
      ctx = await enable(
        {
          mesh: flags.mesh,
          cgroup: flags.cgroup,
          bpffs: flags.bpffs,
          podsFile: flags['pods-file'],
          node: flags.node,
          rebuild: flags.rebuild,
          maxConnections: flags['max-connections'],
          kube,
          allowEmpty: flags['allow-empty'],
          cni: flags['cni-socket'] !== undefined,
        },
        {runSteps: (steps, c, hooks) => runWithProgress(steps, c, {silent, ...hooks}), signal: interrupt.signal},
      )
    } catch (error) {
      early?.server.close()
      throw error
    } finally {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    const result = toResult(ctx)
    this.log('')
    this.log(summary(result))
    if (flags.watch) {
      if (this.jsonEnabled()) process.stdout.write(JSON.stringify(result) + '\n')
      const metrics = flags['metrics-addr'] === undefined ? undefined : {addr: flags['metrics-addr'], version: this.config.version, early}
      await watchInForeground(
        {log: (l) => this.log(l), json: this.jsonEnabled()},
        ctx.inst,
        {
          kube,
          node: ctx.node,
          mesh: ctx.mesh,
          recheckMs: flags.recheck * 1000,
          cniSocket: flags['cni-socket'],
          ...(flags['cni-conf-dir'] && flags['cni-bin-dir']
            ? {cniInstall: {confDir: flags['cni-conf-dir'], binDir: flags['cni-bin-dir']}}
            : {}),
        },
        metrics,
      )
      return undefined
    }
    return result
  }
}

function toResult(ctx: EnableContext): EnableResult {
  return {
    enabled: true,
    mode: ctx.mode,
    bpffs: ctx.inst.dir,
    cgroup: required(ctx.cgroup, 'the cgroup'),
    mesh: ctx.mesh.name,
    node: ctx.node,
    objectHash: required(ctx.objects, 'the built objects').hash,
    maxConnections: ctx.maxConnections,
    compiled: required(ctx.objects, 'the built objects').compiled,
    pods: podsRecord(required(ctx.podsSource, 'the pods source'), required(ctx.applied, 'the applied pods')),
    ...(ctx.repaired ? {repaired: ctx.repaired} : {}),
    ...(ctx.mode === 'replace' ? {replaced: replaced(ctx)} : {}),
  }
}

function replaced(ctx: EnableContext): NonNullable<EnableResult['replaced']> {
  if (ctx.swap === 'shared') return {how: 'in place'}
  if (ctx.swap === 'new maps')
    return {how: 'new maps', why: ctx.notShared ?? '', released: ctx.retired?.released ?? 0, unreleased: ctx.retired?.unreleased ?? 0}
  return {how: 'anew', why: ctx.repaired ?? ctx.notShared ?? 'the previous installation was incomplete'}
}

function replacedLine(r: NonNullable<EnableResult['replaced']>): string {
  if (r.how === 'in place') return 'in place, on the same maps (nothing was detached before its successor ran)'
  if (r.how === 'anew') return `anew (${r.why ?? ''}): connections made meanwhile went direct`
  const left = r.unreleased ? `; ${r.unreleased} socket(s) still reading what was moved to them stay on the old maps until they close` : ''
  return `on new maps (${r.why ?? ''}): the new programs ran beside the old ones until those were drained and detached, so every connection was captured${left}`
}

function summary(r: EnableResult): string {
  const head = {
    fresh: 'merbridge is enabled',
    resync: 'merbridge was already enabled; pods reloaded',
    replace: 'merbridge is enabled (programs replaced)',
  }[r.mode]
  const lines = [
    c.green(`✔ ${head}`) + ` on node ${c.bold(r.node)}`,
    `  cgroup   ${r.cgroup}`,
    `  pins     ${r.bpffs}`,
    `  mesh     ${r.mesh}`,
    ...(r.repaired ? [`  repaired ${r.repaired}`] : []),
    ...(r.replaced ? [`  replaced ${replacedLine(r.replaced)}`] : []),
    `  pods     ${r.pods.meshed.length} meshed and registered, ${r.pods.unregistered.length} meshed but not found on this node, ${r.pods.skipped.length} skipped (from ${r.pods.source})`,
  ]
  for (const p of r.pods.unregistered)
    lines.push(
      c.yellow(
        `  ! ${p.namespace}/${p.name} (${p.ip}): no network namespace with this IP on the node; its sidecar is used once it listens`,
      ),
    )
  for (const w of r.pods.warnings) lines.push(c.yellow(`  ! ${w}`))
  return lines.join('\n')
}
