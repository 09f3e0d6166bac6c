/**
 * `sync --watch` and `enable --watch`: keep the maps matching this node's pods until stopped.
 * Changes are applied one at a time; pods whose network namespace is not found yet are retried
 * every second, and every `recheckMs` the maps are read back and whatever drifted is rewritten,
 * sooner when the cgroup's guard drops SYNs that came in where tc is not.
 */
import {describeError, required} from '../errors.js'
import type {KubeOptions} from '../kube/client.js'
import type {PodJson} from '../kube/pods.js'
import {loadPods} from '../kube/source.js'
import {type PodEvent, watchNodePods} from '../kube/watch.js'
import type {MeshProfile} from '../mesh/profiles.js'
import {readMaps} from '../bpf/maps.js'
import {connectionCapacity, type Installation} from './installation.js'
import {withInstallationLock} from './lock.js'
import {type AppliedPods, applyPods, describePod, liveCniPods, podsRecord, savePodsRecord} from './sync.js'
import {type CniAgent, handleCni, serveCni} from './cni.js'
import {type CniPaths, installCni} from '../node/cni-config.js'
import {watch, type FSWatcher} from 'node:fs'

export interface WatchOptions {
  kube: KubeOptions
  node: string
  mesh: MeshProfile
  signal: AbortSignal
  log: (line: string, event?: Record<string, unknown>) => void
  retryMs?: number
  /** read the maps back and repair what differs from the pods this often (default 30 s) */
  recheckMs?: number
  /** look at the guard's drops this often (default 2 s): a rise starts a re-check at once */
  uncoveredMs?: number
  /** after every sync (metrics): what caused it, how long it took, how long since the change arrived */
  onSynced?: (sync: SyncReport) => void
  /** serve merbridge-cni's calls on this unix socket (CNI mode) */
  cniSocket?: string
  /** with cniSocket: put merbridge-cni into the node's CNI configuration, and back whenever it goes */
  cniInstall?: CniPaths
}

/** How long a CNI ADD waits for the watch to bring a pod it does not know yet. */
const CNI_POD_WAIT_MS = 10_000

export interface SyncReport {
  cause: 'RELISTED' | 'ADDED' | 'MODIFIED' | 'DELETED' | 'RETRY' | 'RECHECK' | 'UNCOVERED' | 'CNI'
  ms: number
  /** from the change arriving to the maps matching it (waiting behind earlier changes included) */
  lagMs: number
  applied?: AppliedPods
  error?: string
}

export async function runWatch(inst: Installation, opts: WatchOptions): Promise<void> {
  const capacity = connectionCapacity(await inst.requireState())
  const objects = inst.requireHelpers()
  // the first list fails the command (nothing changed); later failures are retried with backoff
  const first = await loadPods(undefined, opts.node, opts.kube)
  const source = first.source
  let latest: PodJson[] = first.pods
  let applied: AppliedPods | undefined
  let queue = Promise.resolve()
  /** by namespace/name: pods whose namespace the runtime named (CNI mode); no scan or address decides it */
  const pinned = new Map(Object.entries(liveCniPods(await inst.readState())))

  const apply = (
    given: PodJson[] | 'latest',
    event: PodEvent | {type: 'RETRY'} | {type: 'RECHECK'} | {type: 'UNCOVERED'; drops: number} | {type: 'CNI'; started: () => void},
  ) => {
    const arrived = performance.now()
    return (queue = queue.then(async () => {
      if (event.type === 'CNI') event.started()
      // a CNI call applies the pods as the watch knows them when its turn comes
      const pods = given === 'latest' ? latest : given
      latest = pods
      const started = performance.now()
      try {
        const before = applied
        // a re-check forgets what the last sync left, so the maps are read back and compared
        const rechecking = event.type === 'RECHECK' || event.type === 'UNCOVERED'
        const known = rechecking ? undefined : applied?.sync.view
        // one command changes an installation at a time: an enable or sync under way finishes first
        applied = await withInstallationLock(inst, 'sync --watch', async () => {
          const cniPods = Object.fromEntries(pinned)
          const done = await applyPods(inst, objects, pods, {
            node: opts.node,
            mesh: opts.mesh,
            known,
            attachInbound: true,
            capacity,
            cniPods,
          })
          await savePodsRecord(inst, podsRecord(source, done), cniPods)
          return done
        })
        const ms = Math.round(performance.now() - started)
        opts.onSynced?.({cause: event.type, ms, lagMs: performance.now() - arrived, applied})
        if (event.type === 'RELISTED')
          opts.log(
            `listed ${event.count} pod(s): ${applied.sync.meshed.length} meshed and registered, ${applied.sync.unregistered.length} not found yet, ${applied.selection.skipped.length} skipped (${ms} ms)`,
            {event: 'listed', pods: event.count, ms},
          )
        else if (event.type === 'UNCOVERED')
          opts.log(
            `${event.drops} SYN(s) to meshed pods came in where inbound capture is not attached (held, fail closed): re-checked the pods' interfaces (${ms} ms)`,
            {event: 'uncovered', drops: event.drops, ms},
          )
        else if (event.type === 'RECHECK') {
          const {written, deleted} = applied.sync
          if (written + deleted > 0)
            opts.log(
              `re-check: the maps had drifted from the pods; rewrote ${written} entr${written === 1 ? 'y' : 'ies'} and removed ${deleted} (${ms} ms)`,
              {event: 'repaired', written, deleted, ms},
            )
        }
        // the pod an ADDED, MODIFIED or DELETED event is about
        let own: string | undefined
        if ('pod' in event) {
          const ns = event.pod.metadata?.namespace ?? 'default'
          const name = event.pod.metadata?.name ?? ''
          own = `${ns}/${name}`
          const pod = describePod(ns, name, applied, event.type === 'DELETED')
          opts.log(`${event.type.toLowerCase()} ${pod.text} (${ms} ms)`, {event: event.type.toLowerCase(), pod: own, state: pod.state, ms})
        }
        // a pod waiting for its namespace is reported once registered, whichever pass found it
        // (the retry, a re-check, a later event), but for the event about that very pod
        const now = new Set(applied.sync.meshed.map((p) => `${p.namespace}/${p.name}`))
        for (const p of before?.sync.unregistered ?? []) {
          const id = `${p.namespace}/${p.name}`
          if (now.has(id) && id !== own) opts.log(describePod(p.namespace, p.name, applied, false).text, {event: 'registered', pod: id, ms})
        }
      } catch (error) {
        applied = undefined // the maps may be half written: read them back next time
        opts.log(`could not apply the pods: ${describeError(error).message}`, {event: 'error', message: describeError(error).message})
        opts.onSynced?.({
          cause: event.type,
          ms: performance.now() - started,
          lagMs: performance.now() - arrived,
          error: describeError(error).message,
        })
      }
    }))
  }

  await apply(first.pods, {type: 'RELISTED', count: first.pods.length})

  /** The pod a CNI call is about, as the watch knows it, waiting a while for one it does not know yet. */
  const findPod = async (namespace: string | undefined, name: string): Promise<PodJson | undefined> => {
    const deadline = performance.now() + CNI_POD_WAIT_MS
    for (;;) {
      // podman names no namespace: a name unique on this node is enough
      const found = latest.filter(
        (p) =>
          p.spec?.nodeName === opts.node &&
          p.metadata?.name === name &&
          (namespace === undefined || (p.metadata.namespace ?? 'default') === namespace),
      )
      if (found.length === 1 || performance.now() > deadline || opts.signal.aborted) return found.length === 1 ? found[0] : undefined
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  // calls that arrive together (a node starting many pods) share one sync: a call joins the sync
  // queued and not started yet, which reads the pinned pods when it starts
  let pendingCni: Promise<void> | undefined
  const cniSync = (): Promise<void> =>
    (pendingCni ??= apply('latest', {
      type: 'CNI',
      started: () => {
        pendingCni = undefined
      },
    }))
  const agent: CniAgent = {node: opts.node, mesh: opts.mesh, pinned, findPod, sync: cniSync, applied: () => applied, log: opts.log}
  const cniServer = opts.cniSocket ? await serveCni(opts.cniSocket, (req) => handleCni(req, agent)) : undefined
  if (cniServer) opts.log(`serving CNI calls on ${opts.cniSocket}`, {event: 'cni-serving', socket: opts.cniSocket})
  let confWatcher: FSWatcher | undefined
  let confTimer: NodeJS.Timeout | undefined
  if (opts.cniInstall && opts.cniSocket) {
    const paths = opts.cniInstall
    const socket = opts.cniSocket
    // only once the socket answers: a pod set up before would fail its ADD (and be retried)
    const put = (why: string) => {
      try {
        const r = installCni(paths, objects.cniPlugin, socket)
        if (r.changed) opts.log(`${why}: merbridge-cni is the last plugin of ${r.file}`, {event: 'cni-installed', file: r.file})
      } catch (error) {
        opts.log(`could not put merbridge-cni into ${paths.confDir}: ${describeError(error).message}`, {
          event: 'cni-error',
          message: describeError(error).message,
        })
      }
    }
    // recorded first: disable takes out what the record names, also after a crash right after the install
    await (queue = queue.then(() =>
      withInstallationLock(inst, 'cni install', async () => {
        const state = await inst.readState()
        if (state) await inst.writeState({...state, cni: paths})
      }).catch((error: unknown) =>
        opts.log(`could not record the CNI install: ${describeError(error).message}`, {
          event: 'cni-error',
          message: describeError(error).message,
        }),
      ),
    ))
    put('installed')
    // a node CNI that rewrites its configuration (an upgrade, a restart) drops our entry: put it back
    confWatcher = watch(paths.confDir, () => {
      clearTimeout(confTimer)
      confTimer = setTimeout(() => put('the CNI configuration changed'), 200)
    })
  }
  const retry = setInterval(() => {
    if (applied && applied.sync.unregistered.length > 0) void apply(latest, {type: 'RETRY'})
  }, opts.retryMs ?? 1000)
  const recheck = setInterval(() => void apply(latest, {type: 'RECHECK'}), opts.recheckMs ?? 30_000)
  const uncovered = watchUncovered(
    inst,
    opts.uncoveredMs ?? 2000,
    opts.recheckMs ?? 30_000,
    (drops) => void apply(latest, {type: 'UNCOVERED', drops}),
  )
  try {
    await watchNodePods(
      required(first.target, 'the Kubernetes API target'),
      opts.node,
      {
        onPods: (pods, event) => apply(pods, event),
        onError: (message, retryInMs) =>
          opts.log(`watch: ${message}${retryInMs ? `; retrying in ${retryInMs} ms` : ''}`, {event: 'watch-error', message}),
      },
      opts.signal,
      {pods: first.pods, resourceVersion: first.resourceVersion ?? ''},
    )
  } finally {
    confWatcher?.close()
    clearTimeout(confTimer)
    cniServer?.close()
    clearInterval(retry)
    clearInterval(recheck)
    clearInterval(uncovered)
    await queue
  }
}

/**
 * When the guard's drop counter rose since the last look, how many drops to act on: an interface
 * lacks tc (one gained since the last sync) and a client is retransmitting its SYN. Rises in a row
 * (tc cannot be attached there, or SYNs keep coming in fragments) are answered at doubling
 * intervals up to the re-check period, which start over only after a whole period without drops:
 * no stream of SYNs can keep the loop re-checking.
 */
export class DropWatch {
  private last: number | undefined
  /** the next interval, and the one the next answer waits for since the last */
  private gapMs: number
  private waitMs = 0
  private lastRise = -Infinity

  constructor(
    private readonly everyMs: number,
    private readonly maxGapMs: number,
  ) {
    this.gapMs = everyMs
  }

  /** The counter's value at `nowMs`: the drops to act on now, or undefined. */
  observe(count: number, nowMs: number): number | undefined {
    if (this.last === undefined || count <= this.last) {
      this.last = count
      if (nowMs - this.lastRise >= this.maxGapMs) this.gapMs = this.everyMs
      return undefined
    }
    if (nowMs - this.lastRise < this.waitMs) return undefined // drops add up for the next answer
    const drops = count - this.last
    this.last = count
    this.lastRise = nowMs
    this.waitMs = this.gapMs
    this.gapMs = Math.min(this.gapMs * 2, this.maxGapMs)
    return drops
  }
}

/** Look at the guard's drop counter every `everyMs`, and call onRise as DropWatch says. */
function watchUncovered(inst: Installation, everyMs: number, maxGapMs: number, onRise: (drops: number) => void): NodeJS.Timeout {
  const watch = new DropWatch(everyMs, maxGapMs)
  let reading = false
  return setInterval(() => {
    if (reading) return // bpftool slower than the period: one look at a time
    reading = true
    readMaps
      .counters(inst)
      .then(
        (c) => {
          const drops = watch.observe(c.inboundUncovered, performance.now())
          if (drops !== undefined) onRise(drops)
        },
        () => undefined, // the maps are gone (disable): the loop is ending
      )
      .finally(() => (reading = false))
  }, everyMs)
}
