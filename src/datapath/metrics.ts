/**
 * What a node service exposes while it watches: Prometheus metrics (the datapath's counters, map
 * fill, pods, syncs, watch lag, build), /healthz (the process answers) and /readyz (the datapath is
 * attached and configured, and the first sync is done). Kernel figures are read once per scrape,
 * through status's own reading, shared by the requests that arrive while it runs.
 */
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http'
import {Counter, Gauge, Histogram, Registry} from 'prom-client'
import {COUNTERS} from '../bpf/layout.js'
import {describeError, MerbridgeError} from '../errors.js'
import {inspect, type StatusReport} from './status.js'
import type {Installation} from './installation.js'
import {parseListenAddress} from '../listen-address.js'
import type {SyncReport} from './watch-loop.js'
import {duration, secondsSince} from '../text.js'

/** How long a meshed pod may stay unregistered before /readyz says so (its sandbox has just started). */
const UNREGISTERED_GRACE_MS = 60_000

/** connOutbound -> conn_outbound */
const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)

export class NodeMetrics {
  readonly registry = new Registry()
  private report?: StatusReport
  private synced = false
  private readonly syncDuration: Histogram
  private readonly syncErrors: Counter
  private readonly watchLag: Histogram
  private readonly pods: Gauge
  private readonly skipped: Gauge

  constructor(
    private readonly inst: Installation,
    build: {version: string; objectHash: string; mesh: string},
  ) {
    const registers = [this.registry]
    new Gauge({
      name: 'merbridge_build_info',
      help: 'The running merbridge: version, the hash of the programs it enabled, and the mesh',
      labelNames: ['version', 'object_hash', 'mesh'],
      registers,
    }).set({version: build.version, object_hash: build.objectHash, mesh: build.mesh}, 1)
    // collect() runs with the metric as `this`: the last reading is reached through this closure
    const report = () => this.report
    for (const name of COUNTERS) {
      new Counter({
        name: `merbridge_datapath_${snake(name)}_total`,
        help: `The datapath's ${name} counter, summed over CPUs (since the programs were loaded)`,
        registers,
        collect() {
          const value = report()?.counters?.[name]
          this.reset()
          if (value !== undefined) this.inc(value)
        },
      })
    }
    new Gauge({
      name: 'merbridge_map_entries',
      help: 'Entries in each map of the datapath, as the kernel counts them',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset()
        for (const m of report()?.maps ?? []) if (m.entries !== undefined) this.set({map: m.name}, m.entries)
      },
    })
    new Gauge({
      name: 'merbridge_map_max_entries',
      help: 'Capacity of each map of the datapath',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset()
        for (const m of report()?.maps ?? []) if (m.capacity !== undefined) this.set({map: m.name}, m.capacity)
      },
    })
    new Gauge({
      name: 'merbridge_map_memory_bytes',
      help: 'Kernel memory each map of the datapath holds, as bpftool reports it',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset()
        for (const m of report()?.maps ?? []) if (m.memoryBytes !== undefined) this.set({map: m.name}, m.memoryBytes)
      },
    })
    new Gauge({
      name: 'merbridge_datapath_healthy',
      help: '1 when every program is loaded and attached, every map pinned and the settings active (status says healthy)',
      registers,
      collect() {
        this.set(report()?.verdict === 'healthy' ? 1 : 0)
      },
    })
    new Gauge({
      name: 'merbridge_pod_unregistered_seconds',
      help: 'How long each meshed pod of this node has not been registered (its namespace not found): its inbound is not captured, its outbound only once its sidecar listens',
      labelNames: ['namespace', 'pod'],
      registers,
      collect() {
        this.reset()
        for (const p of report()?.pods?.unregistered ?? [])
          if (p.since) this.set({namespace: p.namespace, pod: p.name}, secondsSince(p.since))
      },
    })
    this.pods = new Gauge({
      name: 'merbridge_pods',
      help: "This node's meshed pods at the last sync: registered in the maps, or meshed but not found on the node yet",
      labelNames: ['state'],
      registers,
    })
    this.skipped = new Gauge({
      name: 'merbridge_pods_skipped',
      help: "This node's pods left alone at the last sync, by reason",
      labelNames: ['reason'],
      registers,
    })
    this.syncDuration = new Histogram({
      name: 'merbridge_sync_duration_seconds',
      help: 'Time to make the maps match the pods, per sync',
      labelNames: ['cause'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    })
    this.syncErrors = new Counter({
      name: 'merbridge_sync_errors_total',
      help: 'Syncs that failed (retried with the next change, re-check or retry)',
      registers,
    })
    this.watchLag = new Histogram({
      name: 'merbridge_watch_lag_seconds',
      help: 'From a pod change arriving from the API to the maps matching it',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    })
  }

  /** The watch loop's report of each sync. */
  onSynced(sync: SyncReport): void {
    this.syncDuration.observe({cause: sync.cause.toLowerCase()}, sync.ms / 1000)
    if (['ADDED', 'MODIFIED', 'DELETED'].includes(sync.cause)) this.watchLag.observe(sync.lagMs / 1000)
    if (sync.error !== undefined || !sync.applied) {
      this.syncErrors.inc()
      this.lastSyncError = sync.error ?? 'the sync did not finish'
      return
    }
    this.lastSyncError = undefined
    this.synced = true
    this.pods.reset()
    this.pods.set({state: 'registered'}, sync.applied.sync.meshed.length)
    this.pods.set({state: 'unregistered'}, sync.applied.sync.unregistered.length)
    this.skipped.reset()
    const byCode = new Map<string, number>()
    for (const p of sync.applied.selection.skipped) byCode.set(p.code, (byCode.get(p.code) ?? 0) + 1)
    for (const [code, n] of byCode) this.skipped.set({reason: code}, n)
  }

  private reading?: Promise<StatusReport>
  private lastSyncError?: string

  /**
   * Read the kernel's side afresh (a scrape or a readiness probe). One reading at a time: a
   * request arriving while one is under way shares it, so a burst of scrapes (any pod can reach
   * the port) costs about one reading, never a bpftool process per request.
   */
  async refresh(): Promise<StatusReport> {
    this.reading ??= inspect(this.inst)
      .then((report) => (this.report = report))
      .finally(() => (this.reading = undefined))
    return this.reading
  }

  /**
   * Ready: the first sync is done, the last one did not fail, the datapath is attached with its
   * settings active, and no meshed pod has gone unregistered past a short grace (a pod's namespace
   * is found at the sync after its sandbox starts).
   */
  async readiness(): Promise<{ready: boolean; why: string}> {
    if (!this.synced) return {ready: false, why: 'the first sync of the pods has not finished'}
    if (this.lastSyncError !== undefined) return {ready: false, why: `the last sync failed: ${this.lastSyncError}`}
    const r = await this.refresh()
    if (r.verdict !== 'healthy') return {ready: false, why: r.broken ?? r.problems[0] ?? `the datapath is ${r.verdict}`}
    const late = (r.pods?.unregistered ?? []).filter((p) => p.since !== undefined && secondsSince(p.since) * 1000 > UNREGISTERED_GRACE_MS)
    if (late.length > 0)
      return {
        ready: false,
        why: `${late.length} meshed pod(s) not registered: ${late
          .slice(0, 5)
          .map((p) => `${p.namespace}/${p.name} (${p.ip}) for ${duration(secondsSince(p.since ?? ''))}`)
          .join(', ')}: their traffic is not captured`,
      }
    return {ready: true, why: 'the datapath is attached and the pods are synced'}
  }
}

/**
 * What the endpoint serves: before `metrics` is set (an enable under way, which can take minutes
 * on a big node), /healthz answers and the others say what is happening, so a liveness probe never
 * kills a first enable that is still working.
 */
export class MetricsEndpoint {
  metrics?: NodeMetrics
  pending = 'enable is under way'
}

/** Serve /metrics, /healthz and /readyz until `signal` fires; fails at once if the address is taken. */
export async function serveMetrics(addr: string, endpoint: MetricsEndpoint, signal: AbortSignal): Promise<Server> {
  const {host, port} = parseListenAddress(addr)
  const server = createServer((req, res) => void answer(req, res, endpoint))
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(
        new MerbridgeError(`cannot serve metrics on ${addr}: ${describeError(error).message}`, {
          code: 'METRICS_ADDR',
          exitCode: 2,
          suggestion: 'choose a free address with --metrics-addr',
        }),
      ),
    )
    server.listen({host, port}, resolve)
  })
  signal.addEventListener('abort', () => server.close(), {once: true})
  return server
}

async function answer(req: IncomingMessage, res: ServerResponse, endpoint: MetricsEndpoint): Promise<void> {
  const metrics = endpoint.metrics
  const path = (req.url ?? '/').split('?')[0]
  const send = (status: number, type: string, body: string) => {
    res.writeHead(status, {'content-type': type})
    res.end(body)
  }
  try {
    if (req.method !== 'GET' && req.method !== 'HEAD') send(405, 'text/plain', 'GET only\n')
    else if (path === '/healthz') send(200, 'text/plain', 'ok\n')
    else if (!metrics && (path === '/readyz' || path === '/metrics')) send(503, 'text/plain', `${endpoint.pending}\n`)
    else if (!metrics) send(404, 'text/plain', 'merbridge serves /metrics, /healthz and /readyz\n')
    else if (path === '/readyz') {
      const r = await metrics.readiness()
      send(r.ready ? 200 : 503, 'text/plain', `${r.why}\n`)
    } else if (path === '/metrics') {
      await metrics.refresh()
      send(200, metrics.registry.contentType, await metrics.registry.metrics())
    } else send(404, 'text/plain', 'merbridge serves /metrics, /healthz and /readyz\n')
  } catch (error) {
    send(500, 'text/plain', `${describeError(error).message}\n`)
  }
}
