// Kept apart from metrics.ts: commands check --metrics-addr before anything starts, and loading
// prom-client (about 200 ms) belongs only to a watch that serves metrics.
import {isIP} from 'node:net'
import {MerbridgeError} from './errors.js'

/** HOST:PORT, [v6]:PORT or :PORT (all addresses), checked before anything starts. */
export function parseListenAddress(value: string): {host?: string; port: number} {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value)
  const host = m?.[1] ?? m?.[2]
  const port = Number(m?.[3])
  const bad =
    !m ||
    port < 1 ||
    port > 65535 ||
    (m[1] !== undefined && isIP(m[1]) !== 6) ||
    (host !== undefined && host !== '' && m[1] === undefined && !isIP(host) && !/^[A-Za-z0-9.-]+$/.test(host))
  if (bad)
    throw new MerbridgeError(`--metrics-addr ${JSON.stringify(value)} is not HOST:PORT`, {
      code: 'USAGE',
      exitCode: 2,
      suggestion: 'e.g. --metrics-addr 127.0.0.1:9473, [::1]:9473 or :9473 (every address)',
    })
  return {...(host ? {host} : {}), port}
}
