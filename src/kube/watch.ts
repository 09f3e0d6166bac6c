/**
 * Keep a node's pods current: list, then watch from the list's resourceVersion; re-list when the
 * server says 410 Gone; reconnect with backoff when the stream drops. Calls `onPods` with the
 * whole set after the list and after every change.
 */
import {setTimeout as sleep} from 'node:timers/promises'
import {apiError, type KubeTarget, listNodePods, nodeSelector} from './client.js'
import type {PodJson} from './pods.js'

export type PodEvent = {type: 'ADDED' | 'MODIFIED' | 'DELETED'; pod: PodJson} | {type: 'RELISTED'; count: number}

export interface WatchHooks {
  onPods: (pods: PodJson[], event: PodEvent) => Promise<void>
  onError: (message: string, retryInMs: number) => void
}

const key = (p: PodJson) => `${p.metadata?.namespace ?? 'default'}/${p.metadata?.name ?? ''}`

class Gone extends Error {}

export async function watchNodePods(
  target: KubeTarget,
  node: string,
  hooks: WatchHooks,
  signal: AbortSignal,
  initial?: {pods: PodJson[]; resourceVersion: string},
  backoff = {initialMs: 500, maxMs: 10_000},
): Promise<void> {
  const {Watch} = await import('@kubernetes/client-node')
  const pods = new Map<string, PodJson>()
  let resourceVersion = ''
  let delay = backoff.initialMs
  const relist = async () => {
    const list = await listNodePods(target, node)
    pods.clear()
    for (const p of list.pods) pods.set(key(p), p)
    resourceVersion = list.resourceVersion
    await hooks.onPods([...pods.values()], {type: 'RELISTED', count: pods.size})
  }

  let needList = !initial
  if (initial) {
    for (const p of initial.pods) pods.set(key(p), p)
    resourceVersion = initial.resourceVersion
  }
  let started: number
  while (!signal.aborted) {
    try {
      if (needList) {
        await relist()
        needList = false
      }
      started = Date.now()
      // one watch stream; resolves when it ends, with Gone when the resourceVersion is too old
      await new Promise<void>((resolve, reject) => {
        let chain = Promise.resolve()
        let controller: AbortController | undefined
        let failure: Error | undefined
        let finished = false
        // stopping also ends a watch whose response has not started yet (no controller to abort)
        const stop = () => {
          controller?.abort()
          finish()
        }
        signal.addEventListener('abort', stop, {once: true})
        function finish(err?: unknown) {
          if (finished) return
          finished = true
          signal.removeEventListener('abort', stop)
          // the stream's close can overtake its last line (an ERROR event): let pending lines run first
          setImmediate(() => {
            chain.then(() => {
              const why = failure ?? err
              if (why === undefined || why === null) resolve()
              else reject(why instanceof Error ? why : new Error(JSON.stringify(why)))
            }, reject)
          })
        }
        new Watch(target.kc)
          .watch(
            '/api/v1/pods',
            {fieldSelector: nodeSelector(node), resourceVersion, allowWatchBookmarks: true},
            (type: string, obj: PodJson & {code?: number; metadata?: {resourceVersion?: string}}) => {
              if (type === 'ERROR') {
                failure = obj.code === 410 ? new Gone() : new Error(`watch error: ${JSON.stringify(obj)}`)
                controller?.abort()
                finish()
                return
              }
              if (finished) return
              if (obj.metadata?.resourceVersion) resourceVersion = obj.metadata.resourceVersion
              if (type === 'BOOKMARK') return
              if (type === 'DELETED') pods.delete(key(obj))
              else if (type === 'ADDED' || type === 'MODIFIED') pods.set(key(obj), obj)
              else return
              // apply events one after another, in order
              chain = chain.then(() => hooks.onPods([...pods.values()], {type, pod: obj}))
            },
            (err: unknown) => finish(err ?? undefined),
          )
          .then((c) => {
            controller = c
            if (signal.aborted) c.abort()
          }, finish)
      })
    } catch (error) {
      // the signal may have fired while the stream was open
      if (isAborted(signal)) break
      if (error instanceof Gone || (error as {statusCode?: number}).statusCode === 410) {
        needList = true
        hooks.onError('the watch fell behind (410 Gone); listing again', 0)
        continue
      }
      hooks.onError(apiError(error, target).message, delay)
      await sleep(delay, undefined, {signal}).catch(() => undefined)
      delay = Math.min(delay * 2, backoff.maxMs)
      continue
    }
    // the server closed the stream (its timeout, or a dropped connection): watch again from where
    // we are, backing off only when streams keep ending at once
    if (Date.now() - started < 1000) {
      await sleep(delay, undefined, {signal}).catch(() => undefined)
      delay = Math.min(delay * 2, backoff.maxMs)
    } else delay = backoff.initialMs
  }
}

/** Read afresh: TypeScript narrows `signal.aborted` as if it could not change across an await. */
function isAborted(signal: AbortSignal): boolean {
  return signal.aborted
}
