/** Pods -> maps and record, shared by enable, sync and the watch loop. */
import {type PodJson, type PodSelection, selectMeshedPods} from '../kube/pods.js'
import type {MeshProfile} from '../mesh/profiles.js'
import type {Installation} from './installation.js'
import {type PodMapsView, type SyncResult, syncPods} from './sync.js'

export interface AppliedPods {
  selection: PodSelection
  sync: SyncResult
}

export async function applyPods(inst: Installation, netnsHelper: string, pods: PodJson[], opts: {node: string; mesh: MeshProfile; source: string; known?: PodMapsView}): Promise<AppliedPods> {
  const selection = selectMeshedPods(pods, opts.node, opts.mesh)
  const sync = await syncPods(inst, netnsHelper, selection, opts.known)
  const state = await inst.readState()
  if (state) {
    state.pods = {
      source: opts.source,
      syncedAt: new Date().toISOString(),
      meshed: sync.meshed,
      unregistered: sync.unregistered,
      skipped: selection.skipped,
      warnings: selection.meshed.flatMap((p) => p.warnings),
    }
    await inst.writeState(state)
  }
  return {selection, sync}
}

/** One line saying what a pod's change did, for the watch log. */
export function describePod(namespace: string, name: string, applied: AppliedPods, deleted: boolean): string {
  const id = `${namespace}/${name}`
  if (deleted) return `${id}: released`
  const meshed = applied.sync.meshed.find((p) => p.namespace === namespace && p.name === name)
  if (meshed) return `${id}: meshed ${meshed.ip}, registered (netns ${meshed.netns})`
  const unregistered = applied.sync.unregistered.find((p) => p.namespace === namespace && p.name === name)
  if (unregistered) return `${id}: meshed ${unregistered.ip}, network namespace not found yet (retrying)`
  const skipped = applied.selection.skipped.find((p) => p.namespace === namespace && p.name === name)
  if (skipped) return `${id}: not meshed (${skipped.reason})`
  return `${id}: not on this node`
}
