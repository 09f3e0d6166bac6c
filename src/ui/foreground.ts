import type {Installation} from '../datapath/installation.js'
import type {Server} from 'node:http'
import type {MetricsEndpoint} from '../datapath/metrics.js'
import {runWatch, type WatchOptions} from '../datapath/watch-loop.js'
import {c} from './theme.js'

/** Stop a long-running command cleanly on Ctrl-C and on the service manager's SIGTERM. */
export function abortOnSignals(): {signal: AbortSignal; dispose: () => void} {
  const controller = new AbortController()
  const stop = () => controller.abort()
  // `on`, not `once`: a listener still present when execa's signal-exit handler runs (a bpftool
  // child may be running) keeps that handler from re-raising the signal and killing the process
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  return {signal: controller.signal, dispose: () => (process.off('SIGINT', stop), process.off('SIGTERM', stop))}
}

/** An endpoint served from before enable's first step: /healthz at once, the rest once watching. */
export interface EarlyEndpoint {
  server: Server
  endpoint: MetricsEndpoint
}

/**
 * Serve /healthz (and /readyz and /metrics saying "enable is under way") while enable runs; with
 * a failed enable, the caller closes it.
 */
export async function serveEarly(addr: string, log: (line: string) => void): Promise<EarlyEndpoint> {
  const {MetricsEndpoint, serveMetrics} = await import('../datapath/metrics.js')
  const endpoint = new MetricsEndpoint()
  const server = await serveMetrics(addr, endpoint, new AbortController().signal)
  log(`serving /healthz on ${addr} (/readyz and /metrics once enabled)`)
  return {server, endpoint}
}

/**
 * Run the watch loop in the foreground: a line per change for people, a JSON object per line with
 * --json; with `metrics`, serve /metrics, /healthz and /readyz on its address while it runs.
 * Stopping (SIGINT, SIGTERM) ends the watch and leaves the datapath attached.
 */
export async function watchInForeground(
  out: {log: (line: string) => void; json: boolean},
  inst: Installation,
  opts: Omit<WatchOptions, 'signal' | 'log' | 'onSynced'>,
  metrics?: {addr: string; version: string; early?: EarlyEndpoint},
): Promise<void> {
  const {signal, dispose} = abortOnSignals()
  const log = (line: string, event?: Record<string, unknown>) =>
    out.json
      ? process.stdout.write(JSON.stringify({time: new Date().toISOString(), ...event}) + '\n')
      : out.log(`${c.dim(new Date().toISOString())} ${line}`)
  let server: Server | undefined
  try {
    let onSynced: WatchOptions['onSynced']
    if (metrics) {
      const state = await inst.requireState()
      // loaded only here: prom-client costs every other command's start-up about 200 ms
      const {MetricsEndpoint, NodeMetrics, serveMetrics} = await import('../datapath/metrics.js')
      const node = new NodeMetrics(inst, {version: metrics.version, objectHash: state.objectHash, mesh: state.mesh})
      if (metrics.early) {
        server = metrics.early.server
        metrics.early.endpoint.metrics = node
      } else {
        const endpoint = new MetricsEndpoint()
        endpoint.metrics = node
        server = await serveMetrics(metrics.addr, endpoint, signal)
        log(`serving /metrics, /healthz and /readyz on ${metrics.addr}`, {event: 'metrics', addr: metrics.addr})
      }
      onSynced = (s) => node.onSynced(s)
    }
    await runWatch(inst, {...opts, signal, log, onSynced})
  } finally {
    server?.close()
    dispose()
  }
}
