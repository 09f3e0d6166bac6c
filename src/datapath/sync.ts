/** Pods -> maps and record, shared by enable, sync and the watch loop. */
import {type PodJson, type PodSelection, selectMeshedPods} from '../kube/pods.js'
import type {Helpers} from '../bpf/objects.js'
import type {MeshProfile} from '../mesh/profiles.js'
import type {KubeOptions} from '../kube/client.js'
import {loadPods} from '../kube/source.js'
import {meshProfile} from '../mesh/profiles.js'
import {type CniPod, connectionCapacity, type InstallState, type Installation, type PodRecord} from './installation.js'
import {withInstallationLock} from './lock.js'
import {MerbridgeError} from '../errors.js'
import {hostname} from 'node:os'
import {existsSync} from 'node:fs'
import {type PodMapsView, type SyncResult, syncPods} from './sync-maps.js'

export interface AppliedPods {
  selection: PodSelection
  sync: SyncResult
}

/**
 * Select this node's meshed pods and make the maps match them; with `attachInbound` (the
 * datapath is attached already), newly registered pods get inbound capture too.
 */
export async function applyPods(
  inst: Installation,
  objects: Helpers,
  pods: PodJson[],
  opts: {
    node: string
    mesh: MeshProfile
    known?: PodMapsView
    attachInbound: boolean
    capacity: number
    guard?: EmptyGuard
    registeredIn?: Installation
    cniPods?: Readonly<Record<string, CniPod>>
  },
): Promise<AppliedPods> {
  const cni = opts.cniPods ?? {}
  // the API learns a pod's addresses only after its sandbox is up: until then, the runtime's
  const selection = selectMeshedPods(
    pods.map((p) => withAddresses(p, cni[podKey(p)]?.ips)),
    opts.node,
    opts.mesh,
  )
  if (opts.guard) refuseEmptying(selection, opts.node, opts.guard)
  return {
    selection,
    sync: await syncPods(inst, objects, selection, {...opts, pinned: new Map(Object.entries(cni).map(([k, v]) => [k, v.netns]))}),
  }
}

export function podKey(p: PodJson): string {
  return `${p.metadata?.namespace ?? 'default'}/${p.metadata?.name ?? ''}`
}

/** The pod with these addresses where the API has none yet. */
export function withAddresses(p: PodJson, ips: string[] | undefined): PodJson {
  if (!ips || ips.length === 0 || p.status?.podIP) return p
  return {...p, status: {...p.status, podIP: ips[0], podIPs: ips.map((ip) => ({ip}))}}
}

/** The record's CNI registrations whose namespace is still there (a sandbox gone without DEL is forgotten). */
export function liveCniPods(state: Pick<InstallState, 'cniPods'> | undefined): Record<string, CniPod> {
  return Object.fromEntries(Object.entries(state?.cniPods ?? {}).filter(([, v]) => existsSync(v.netns)))
}

/** What a sync from a list must know to refuse one that would unregister every pod by mistake. */
export interface EmptyGuard {
  /** pods registered now (the record's) */
  registered: number
  source: string
  /** the user said this node has no pods now */
  allowEmpty: boolean
}

/**
 * A list that names none of this node's pods, where pods are registered, is almost always a wrong
 * --node or the wrong file: syncing would take every registered pod's traffic around its sidecar.
 * Refused, before anything changes, unless the user says so.
 */
export function refuseEmptying(selection: PodSelection, node: string, guard: EmptyGuard): void {
  const onNode = selection.meshed.length + selection.skipped.length
  if (onNode > 0 || guard.registered === 0 || guard.allowEmpty) return
  throw new MerbridgeError(
    `${guard.source} names no pod of node ${JSON.stringify(node)} (${selection.otherNodes} on other nodes): syncing would unregister all ${guard.registered} registered pod(s)`,
    {
      code: 'EMPTY_SYNC',
      exitCode: 2,
      suggestion: `check --node (this host is ${JSON.stringify(hostname())}) and the pods list; if this node really has no pods now, add --allow-empty`,
    },
  )
}

/** What the installation's record says about the pods of a sync. */
export function podsRecord(source: string, applied: AppliedPods): InstallState['pods'] {
  const syncedAt = new Date().toISOString()
  return {
    source,
    syncedAt,
    meshed: applied.sync.meshed,
    unregistered: applied.sync.unregistered.map((p) => ({...p, since: syncedAt})),
    skipped: applied.selection.skipped,
    warnings: [...applied.selection.meshed.flatMap((p) => p.warnings), ...applied.sync.nodeWarnings],
  }
}

/**
 * A pod still not registered keeps the time a sync first found it so: how long its traffic has
 * gone uncaptured (status, /readyz and the metrics say it).
 */
export function keepSince(pods: InstallState['pods'], previous: InstallState['pods'] | undefined): InstallState['pods'] {
  const key = (p: PodRecord) => `${p.namespace}/${p.name} ${p.ip}`
  const since = new Map((previous?.unregistered ?? []).flatMap((p) => (p.since ? [[key(p), p.since] as const] : [])))
  return {...pods, unregistered: pods.unregistered.map((p) => ({...p, since: since.get(key(p)) ?? p.since ?? pods.syncedAt}))}
}

/** Update the pods part of an existing record (sync and the watch loop; enable writes it whole). */
export async function savePodsRecord(inst: Installation, pods: InstallState['pods'], cniPods?: Record<string, CniPod>): Promise<void> {
  const state = await inst.readState()
  if (state) await inst.writeState({...state, pods: keepSince(pods, state.pods), ...(cniPods ? {cniPods} : {})})
}

/** One line saying what a pod's change did, for the watch log. */
export type PodState = 'released' | 'registered' | 'not-found' | 'skipped' | 'elsewhere'

/** Where a pod stands after a sync: a state for scripts and a line for people. */
export function describePod(namespace: string, name: string, applied: AppliedPods, deleted: boolean): {state: PodState; text: string} {
  const id = `${namespace}/${name}`
  const same = (p: {namespace: string; name: string}) => p.namespace === namespace && p.name === name
  if (deleted) return {state: 'released', text: `${id}: released`}
  const meshed = applied.sync.meshed.find(same)
  if (meshed) return {state: 'registered', text: `${id}: meshed ${meshed.ip}, registered (netns ${meshed.netns})`}
  const unregistered = applied.sync.unregistered.find(same)
  if (unregistered) return {state: 'not-found', text: `${id}: meshed ${unregistered.ip}, network namespace not found yet (retrying)`}
  const skipped = applied.selection.skipped.find(same)
  if (skipped) return {state: 'skipped', text: `${id}: not meshed (${skipped.reason})`}
  return {state: 'elsewhere', text: `${id}: not on this node`}
}

export interface SyncOnceResult extends Pick<InstallState['pods'], 'source' | 'meshed' | 'unregistered' | 'skipped' | 'warnings'> {
  written: number
  deleted: number
}

/**
 * `sync`: read the pods (file or API) before taking the lock, then, holding it, make the maps
 * match and update the record. A failure before the batch is written leaves maps and record as
 * they were.
 */
export async function syncOnce(
  inst: Installation,
  opts: {podsFile?: string; kube: KubeOptions; node: string; allowEmpty?: boolean},
): Promise<SyncOnceResult> {
  const state = await inst.requireState()
  inst.requireMaps(['local_pod_ips', 'netns_pod_ips'])
  const helpers = inst.requireHelpers()
  const loaded = await loadPods(opts.podsFile, opts.node, opts.kube)
  return withInstallationLock(inst, 'sync', async () => {
    const registered = (await inst.readState())?.pods.meshed.length ?? 0
    const guard = {registered, source: loaded.source, allowEmpty: opts.allowEmpty === true}
    const applied = await applyPods(inst, helpers, loaded.pods, {
      node: opts.node,
      mesh: meshProfile(state.mesh),
      attachInbound: true,
      capacity: connectionCapacity(state),
      guard,
      cniPods: liveCniPods(await inst.readState()),
    })
    const pods = keepSince(podsRecord(loaded.source, applied), (await inst.readState())?.pods)
    await savePodsRecord(inst, pods)
    return {...pods, written: applied.sync.written, deleted: applied.sync.deleted}
  })
}
