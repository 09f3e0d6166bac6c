/** The lab's apps and clients: the HTTP app (http-app.ts) in a pod, GETs, held streams, and raw connections (py/raw_get.py). */
import {randomBytes} from 'node:crypto'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {PACKAGE_ROOT} from '../paths.js'
import {APP_PORT, type LabPods} from './pods.js'
import type {LabProcess} from './process.js'
import {labScript} from './scripts.js'
import {SYSTEM_PYTHON} from './sidecar6.js'

/** How rawGet opens its connection. */
export type RawGetMode = 'plain' | 'dstopts' | 'mptcp' | 'fastopen'

export class LabClients {
  constructor(private readonly lab: LabPods) {}

  appScript(): string {
    return join(PACKAGE_ROOT, 'dist', 'lab', 'http-app.js')
  }

  async startApp(podName: string, port = APP_PORT): Promise<LabProcess> {
    const p = this.lab.spawn(podName, `app ${port} in ${podName}`, process.execPath, [
      this.appScript(),
      'serve',
      String(port),
      this.lab.tmp,
    ])
    await p.waitFor(/listening on/)
    return p
  }

  /**
   * A GET of the app's held stream from one pod's app to another pod: it flows until release(),
   * so what a test inspects stays open for as long as the test takes.
   */
  openStream(from: string, url: string): HeldStream {
    const gate = `gate-${randomBytes(4).toString('hex')}`
    const p = this.lab.spawn(from, `stream ${from} -> ${url}`, process.execPath, [this.appScript(), 'get', `${url}/stream?gate=${gate}`])
    return new HeldStream(p, join(this.lab.tmp, gate))
  }

  /** GET a URL from a pod's app container (its cgroup, unless told otherwise). */
  async get(
    podName: string,
    url: string,
    cgroupName?: string,
    as?: {uid: number; gid: number},
    waitMs?: number,
  ): Promise<{status?: number; bytes?: number; sha256?: string; body?: string; error?: string}> {
    // `as`: the client runs with that user and group (a sidecar's identity, say); `waitMs`: how
    // long its connection may be held before it is accepted (SYNs dropped meanwhile)
    const get = [this.appScript(), 'get', url, ...(waitMs === undefined ? [] : [String(waitMs)])]
    const [command, args] = as
      ? ['setpriv', ['--reuid', String(as.uid), '--regid', String(as.gid), '--clear-groups', process.execPath, ...get]]
      : [process.execPath, get]
    const r = await this.lab.exec(podName, command, args, {cgroupName, ...(waitMs === undefined ? {} : {timeoutMs: waitMs + 30_000})})
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as {status?: number; bytes?: number; sha256?: string; body?: string; error?: string}
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }

  /**
   * A GET from a pod (or the remote node) over a connection opened as `mode` says (py/raw_get.py):
   * what netfilter's `-p tcp` still matches.
   */
  async rawGet(
    podName: string,
    mode: RawGetMode,
    host: string,
    port: number,
    path: string,
    opts: {bind?: string; as?: {uid: number; gid: number}} = {},
  ): Promise<{status?: number; body?: string; error?: string}> {
    const script = labScript(this.lab.tmp, 'raw_get.py')
    // `bind`: the socket is bound to that address (port 0) before it connects
    const get = [SYSTEM_PYTHON, script, mode, host, String(port), path, ...(opts.bind ? [opts.bind] : [])]
    const [command, ...args] = opts.as
      ? ['setpriv', '--reuid', String(opts.as.uid), '--regid', String(opts.as.gid), '--clear-groups', ...get]
      : get
    const r = await this.lab.exec(podName, command ?? SYSTEM_PYTHON, args)
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return JSON.parse(line) as {status?: number; body?: string; error?: string}
    } catch {
      return {error: `no answer: ${r.stderr.trim() || line}`}
    }
  }
}

/** A stream from the lab app that flows until released; see openStream. */
export class HeldStream {
  constructor(
    readonly process: LabProcess,
    private readonly gateFile: string,
  ) {}

  /** Bytes received so far, from the client's progress lines. */
  get bytes(): number {
    let last = 0
    for (const line of this.process.stdout.split('\n')) {
      const m = /^\{"progress":(\d+)\}$/.exec(line)
      if (m) last = Number(m[1])
    }
    return last
  }

  /** Wait until more than `n` bytes have arrived (the stream is flowing), or fail saying so. */
  async flowingPast(n: number, what: string): Promise<number> {
    await this.process.waitFor(() => this.bytes > n, `more than ${n} bytes of the held stream (${what})`)
    return this.bytes
  }

  /** Let the server finish the response, then the client's result: bytes and digest. */
  async release(): Promise<{code: number | null; bytes?: number; sha256?: string; error?: string}> {
    writeFileSync(this.gateFile, '')
    const code = await this.process.exited
    const last = this.process.stdout.trim().split('\n').at(-1) ?? ''
    try {
      return {code, ...(JSON.parse(last) as {bytes?: number; sha256?: string; error?: string})}
    } catch {
      return {code, error: `no result: ${this.process.stderr.trim() || last}`}
    }
  }
}
