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

/** Where the watch loop stands between two streams: what it does next follows from this alone. */
export interface WatchState {
  /** list before watching again (the start without an initial list, or after 410 Gone) */
  needList: boolean
  /** how long to wait before the next try when streams keep failing or ending at once */
  delayMs: number
}

/** How one round (a list if needed, then one watch stream) ended. */
export type RoundOutcome = {kind: 'ended'; lastedMs: number} | {kind: 'gone'} | {kind: 'failed'; message: string}

export interface Backoff {
  initialMs: number
  maxMs: number
}

/**
 * The watch loop's one decision, without I/O: after a round, the next state, how long to wait
 * first, and what to report. 410 Gone lists again at once; a failure waits and doubles the wait
 * (up to maxMs); a stream the server closed is watched again at once if it lasted a second or
 * more (its timeout), else after a wait, as a failure would be.
 */
export function afterRound(
  state: WatchState,
  outcome: RoundOutcome,
  backoff: Backoff,
): {state: WatchState; waitMs: number; report?: {message: string; retryInMs: number}} {
  const doubled = Math.min(state.delayMs * 2, backoff.maxMs)
  switch (outcome.kind) {
    case 'gone':
      return {
        state: {needList: true, delayMs: state.delayMs},
        waitMs: 0,
        report: {message: 'the watch fell behind (410 Gone); listing again', retryInMs: 0},
      }
    case 'failed':
      return {
        state: {needList: state.needList, delayMs: doubled},
        waitMs: state.delayMs,
        report: {message: outcome.message, retryInMs: state.delayMs},
      }
    case 'ended':
      return outcome.lastedMs < 1000
        ? {state: {needList: false, delayMs: doubled}, waitMs: state.delayMs}
        : {state: {needList: false, delayMs: backoff.initialMs}, waitMs: 0}
  }
}

export async function watchNodePods(
  target: KubeTarget,
  node: string,
  hooks: WatchHooks,
  signal: AbortSignal,
  initial?: {pods: PodJson[]; resourceVersion: string},
  backoff: Backoff = {initialMs: 500, maxMs: 10_000},
): Promise<void> {
  const {Watch} = await import('@kubernetes/client-node')
  const pods = new Map<string, PodJson>()
  // where the next watch starts: moved on by every event, so a reconnect after a dropped stream
  // does not replay what was applied
  const cursor = {resourceVersion: initial?.resourceVersion ?? ''}
  for (const p of initial?.pods ?? []) pods.set(key(p), p)
  let state: WatchState = {needList: !initial, delayMs: backoff.initialMs}

  while (!signal.aborted) {
    let outcome: RoundOutcome
    try {
      if (state.needList) {
        const list = await listNodePods(target, node)
        pods.clear()
        for (const p of list.pods) pods.set(key(p), p)
        cursor.resourceVersion = list.resourceVersion
        state = {...state, needList: false}
        await hooks.onPods([...pods.values()], {type: 'RELISTED', count: pods.size})
      }
      const started = Date.now()
      await new PodStream(new Watch(target.kc), pods, cursor, hooks, signal).run(nodeSelector(node))
      outcome = {kind: 'ended', lastedMs: Date.now() - started}
    } catch (error) {
      // the signal may have fired while the stream was open
      if (isAborted(signal)) break
      outcome =
        error instanceof Gone || (error as {statusCode?: number}).statusCode === 410
          ? {kind: 'gone'}
          : {kind: 'failed', message: apiError(error, target).message}
    }
    const next = afterRound(state, outcome, backoff)
    if (next.report) hooks.onError(next.report.message, next.report.retryInMs)
    state = next.state
    if (next.waitMs > 0) await sleep(next.waitMs, undefined, {signal}).catch(() => undefined)
  }
}

type WatchClient = InstanceType<typeof import('@kubernetes/client-node').Watch>

/**
 * One watch stream: applies its events to `pods` in order, one at a time, and ends when the
 * server closes it (resolving with the last resourceVersion), on an ERROR event (410 Gone as
 * Gone), or when `signal` fires, moving `cursor` on with every event. Events still being applied
 * are waited for before it ends.
 */
class PodStream {
  private applying = Promise.resolve()
  private controller?: AbortController
  private failure?: Error
  private done = false
  private finished!: (error?: unknown) => void

  constructor(
    private readonly watch: WatchClient,
    private readonly pods: Map<string, PodJson>,
    private readonly cursor: {resourceVersion: string},
    private readonly hooks: WatchHooks,
    private readonly signal: AbortSignal,
  ) {}

  async run(fieldSelector: string): Promise<void> {
    // stopping also ends a watch whose response has not started yet (no controller to abort)
    const stop = () => {
      this.controller?.abort()
      this.finish()
    }
    const ended = new Promise<void>((resolve, reject) => {
      this.finished = (error) => {
        // the stream's close can overtake its last line (an ERROR event): pending lines run first
        setImmediate(() => {
          this.applying.then(() => {
            const why = this.failure ?? error
            if (why === undefined || why === null) resolve()
            else reject(why instanceof Error ? why : new Error(JSON.stringify(why)))
          }, reject)
        })
      }
    })
    this.signal.addEventListener('abort', stop, {once: true})
    try {
      this.watch
        .watch(
          '/api/v1/pods',
          {fieldSelector, resourceVersion: this.cursor.resourceVersion, allowWatchBookmarks: true},
          (type: string, obj: PodJson & {code?: number}) => this.onEvent(type, obj),
          (err: unknown) => this.finish(err ?? undefined),
        )
        .then(
          (c) => {
            this.controller = c
            if (this.signal.aborted) c.abort()
          },
          (err: unknown) => this.finish(err),
        )
      await ended
    } finally {
      this.signal.removeEventListener('abort', stop)
    }
  }

  private onEvent(type: string, obj: PodJson & {code?: number; metadata?: {resourceVersion?: string}}): void {
    if (type === 'ERROR') {
      this.failure = obj.code === 410 ? new Gone() : new Error(`watch error: ${JSON.stringify(obj)}`)
      this.controller?.abort()
      this.finish()
      return
    }
    if (this.done) return
    if (obj.metadata?.resourceVersion) this.cursor.resourceVersion = obj.metadata.resourceVersion
    if (type === 'BOOKMARK') return
    if (type === 'DELETED') this.pods.delete(key(obj))
    else if (type === 'ADDED' || type === 'MODIFIED') this.pods.set(key(obj), obj)
    else return
    // apply events one after another, in order (each with the pods as they are when it runs)
    this.applying = this.applying.then(() => this.hooks.onPods([...this.pods.values()], {type, pod: obj}))
  }

  private finish(error?: unknown): void {
    if (this.done) return
    this.done = true
    this.finished(error)
  }
}

/** Read afresh: TypeScript narrows `signal.aborted` as if it could not change across an await. */
function isAborted(signal: AbortSignal): boolean {
  return signal.aborted
}
