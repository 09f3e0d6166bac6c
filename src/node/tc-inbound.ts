/**
 * mb_tc_inbound on the ingress of pod interfaces, through the tc-inbound helper (Node.js cannot
 * enter another network namespace): attached when a pod is registered, detached by disable.
 */
import {sep} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {run} from '../exec.js'

export interface TcResult {
  /** namespace path -> the interfaces done there */
  done: Map<string, string[]>
  /** namespace path -> why it could not be done */
  failed: Map<string, string>
}

/** A pod's namespace, and the interfaces in it that inbound capture stays off (Istio's excludeInterfaces). */
export interface InboundTarget {
  path: string
  skip: readonly string[]
}

function parse(paths: string[], stdout: string): TcResult & {removed: Map<string, string[]>} {
  const lines = stdout.split('\n')
  const out = {done: new Map<string, string[]>(), failed: new Map<string, string>(), removed: new Map<string, string[]>()}
  paths.forEach((p, i) => {
    const line = lines[i]?.trim() ?? 'error: no answer'
    if (!line.startsWith('ok')) {
      out.failed.set(p, line.replace(/^error: /, ''))
      return
    }
    const words = line.split(/\s+/).slice(1)
    out.done.set(
      p,
      words.filter((w) => !w.endsWith('-')).map((w) => w.replace(/\+$/, '')),
    )
    const removed = words.filter((w) => w.endsWith('-')).map((w) => w.slice(0, -1))
    if (removed.length > 0) out.removed.set(p, removed)
  })
  return out
}

/** Remove the clsact qdisc of these interfaces where no filter at all is left (the one attach added; an empty one does nothing). */
async function dropEmptyQdiscs(path: string, ifaces: string[]): Promise<void> {
  for (const dev of ifaces) {
    const filters = await Promise.all(
      ['ingress', 'egress'].map(async (dir) =>
        (await run('nsenter', [`--net=${path}`, 'tc', '-j', 'filter', 'show', 'dev', dev, dir], {allowFailure: true})).stdout.trim(),
      ),
    )
    if (filters.every((f) => f === '' || f === '[]'))
      await run('nsenter', [`--net=${path}`, 'tc', 'qdisc', 'del', 'dev', dev, 'clsact'], {allowFailure: true})
  }
}

/** The helper's namespace arguments: each path, after the interfaces it skips there. */
const targetArgs = (targets: readonly InboundTarget[]) =>
  targets.flatMap((t) => [...(t.skip.length > 0 ? [`--skip=${t.skip.join(',')}`] : []), t.path])

const HELD = /held by program (\d+)$/

/**
 * Attach on every interface of each namespace but its skipped ones, and take ours off those. A
 * program of another installation in our slot stays (one installation captures a pod's inbound
 * traffic; the namespace fails, naming it); one pinned nowhere, or only in `ownDir` (this
 * installation's, or what a killed run of it left), is replaced.
 */
export async function attachInbound(helper: string, progPin: string, targets: readonly InboundTarget[], ownDir: string): Promise<TcResult> {
  const first = await attachOnce(helper, progPin, targets, [])
  const held = new Map<string, number>()
  for (const [path, why] of first.failed) {
    const id = HELD.exec(why)?.[1]
    if (id !== undefined) held.set(path, Number(id))
  }
  if (held.size === 0) return first
  const owners = new Map<number, string[]>()
  for (const id of new Set(held.values())) owners.set(id, await bpftool.progPins(id))
  const ours = (id: number) => (owners.get(id) ?? []).every((pin) => pin.startsWith(ownDir + sep))
  const again = targets.filter((t) => ours(held.get(t.path) ?? -1))
  const second = await attachOnce(helper, progPin, again, [...owners.keys()].filter(ours))
  for (const t of again) {
    first.failed.delete(t.path)
    const done = second.done.get(t.path)
    const why = second.failed.get(t.path)
    if (done !== undefined) first.done.set(t.path, done)
    if (why !== undefined) first.failed.set(t.path, why)
  }
  for (const [path, id] of held) {
    const pins = owners.get(id) ?? []
    if (!ours(id)) first.failed.set(path, `held by another merbridge installation (program ${id}, pinned at ${pins[0] ?? '?'})`)
  }
  return first
}

async function attachOnce(helper: string, progPin: string, targets: readonly InboundTarget[], replace: number[]): Promise<TcResult> {
  if (targets.length === 0) return {done: new Map(), failed: new Map()}
  const args = ['attach', progPin, ...(replace.length > 0 ? [`--replace=${replace.join(',')}`] : []), ...targetArgs(targets)]
  const {done, failed, removed} = parse(
    targets.map((t) => t.path),
    (await run(helper, args)).stdout,
  )
  for (const [path, ifaces] of removed) await dropEmptyQdiscs(path, ifaces)
  return {done, failed}
}

/**
 * Detach the program with this id wherever it is attached in these namespaces, then remove a
 * clsact qdisc left with no filter at all (the one attach added; an empty one does nothing).
 */
export async function detachInbound(helper: string, progId: number, paths: string[]): Promise<TcResult> {
  if (paths.length === 0) return {done: new Map(), failed: new Map()}
  const {done, failed} = parse(paths, (await run(helper, ['detach', String(progId), ...paths])).stdout)
  for (const [path, ifaces] of done) await dropEmptyQdiscs(path, ifaces)
  return {done, failed}
}

/**
 * The interfaces of each namespace (but lo and the skipped ones) whose ingress lacks the program
 * with this id in our slot, in `done`: where inbound capture is off when it should be on.
 */
export async function missingInbound(helper: string, progId: number, targets: readonly InboundTarget[]): Promise<TcResult> {
  if (targets.length === 0) return {done: new Map(), failed: new Map()}
  const {done, failed} = parse(
    targets.map((t) => t.path),
    (await run(helper, ['check', String(progId), ...targetArgs(targets)])).stdout,
  )
  return {done, failed}
}
