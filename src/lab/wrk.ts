/** Parsing of wrk's report (`wrk --latency`). */
export interface WrkResult {
  requests: number
  requestsPerSec: number
  /** latency percentiles in microseconds */
  p50: number
  p90: number
  p99: number
  errors: number
}

function toMicros(value: string, unit: string): number {
  const n = Number(value)
  return unit === 'us' ? n : unit === 'ms' ? n * 1000 : unit === 's' ? n * 1e6 : unit === 'm' ? n * 6e7 : Number.NaN
}

export function parseWrk(text: string): WrkResult {
  const pct = (p: number) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(text)
    return m ? toMicros(m[1] ?? '', m[2] ?? '') : Number.NaN
  }
  const requests = Number(/(\d+) requests in/.exec(text)?.[1] ?? Number.NaN)
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? Number.NaN)
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text)
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0)
  const errors = (sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0) + non2xx
  if (!Number.isFinite(requests) || !Number.isFinite(rps)) throw new Error(`wrk printed no report: ${text.trim().slice(0, 300)}`)
  return {requests, requestsPerSec: rps, p50: pct(50), p90: pct(90), p99: pct(99), errors}
}

export function median(values: number[]): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (v.length === 0) return Number.NaN
  const mid = Math.floor(v.length / 2)
  const at = (i: number) => v[i] ?? Number.NaN
  return v.length % 2 ? at(mid) : (at(mid - 1) + at(mid)) / 2
}
