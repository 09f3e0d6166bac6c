/** The lab's sidecars: haproxy (sidecar.ts) for IPv4, py/sidecar6.py beside it for IPv6, and what they counted. */
import {chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {connect} from 'node:net'
import {dirname, join} from 'node:path'
import type {LabPods} from './pods.js'
import type {LabProcess} from './process.js'
import {labScript} from './scripts.js'
import {HAPROXY_MAXCONN, haproxyConfig, parseFrontendSessions, parseSessionTotals} from './sidecar.js'
import {parseSidecar6Log, type Sidecar6Line, sidecar6Args, SYSTEM_PYTHON} from './sidecar6.js'

export class LabSidecars {
  constructor(private readonly lab: LabPods) {}

  /** pod -> the log file of its IPv6 sidecar */
  private readonly sidecar6Logs = new Map<string, string>()

  /**
   * The pod's sidecar; `threads` sets its worker threads (a user's Envoy runs 2 by default). One by
   * default: the tests read its log, and a multi-threaded haproxy drops a log line now and then when
   * two sessions log at once (its DroppedLogs counter), which a test would take for a lost session.
   */
  async start(podName: string, opts: {threads?: number; maxconn?: number; extra?: string} = {}): Promise<LabProcess> {
    const cfg = join(this.lab.tmp, `haproxy-${podName}.cfg`)
    const proxy = this.lab.pod(podName).proxy
    const id = {uid: proxy?.uid ?? this.lab.mesh.sidecarUid, gid: proxy?.gid ?? this.lab.mesh.sidecarGid}
    // its own folder for the stats socket, which it makes as the proxy's user
    mkdirSync(dirname(this.statsSocket(podName)), {recursive: true})
    chownSync(dirname(this.statsSocket(podName)), id.uid, id.gid)
    writeFileSync(
      cfg,
      haproxyConfig(this.lab.mesh, {
        statsSocket: this.statsSocket(podName),
        threads: opts.threads ?? 1,
        maxconn: opts.maxconn,
        extra: opts.extra,
      }),
    )
    // as the proxy's user from the start, as istio-proxy runs: its listeners are that user's sockets.
    // Unprivileged, it cannot raise its descriptor limit past the hard one (4096 on a fresh boot):
    // set for it first, two per connection and some
    const fds = 2 * (opts.maxconn ?? HAPROXY_MAXCONN) + 1024
    const p = this.lab.spawn(podName, `sidecar in ${podName}`, 'prlimit', [
      `--nofile=${fds}:${fds}`,
      'setpriv',
      '--reuid',
      String(id.uid),
      '--regid',
      String(id.gid),
      '--clear-groups',
      'haproxy',
      '-db',
      '-f',
      cfg,
    ])
    await this.lab.waitListening(podName, this.lab.mesh.outboundPort)
    await this.lab.waitListening(podName, this.lab.mesh.inboundPort)
    if (this.lab.dualStack && !this.lab.pod(podName).noDualStack) {
      const script = labScript(this.lab.tmp, 'sidecar6.py')
      const log = join(this.lab.tmp, `sidecar6-${podName}.log`)
      writeFileSync(log, '')
      chmodSync(log, 0o666) // written by the proxy's user
      this.sidecar6Logs.set(podName, log)
      const p6 = this.lab.spawn(podName, `IPv6 sidecar in ${podName}`, 'setpriv', [
        '--reuid',
        String(id.uid),
        '--regid',
        String(id.gid),
        '--clear-groups',
        SYSTEM_PYTHON,
        ...sidecar6Args(this.lab.mesh, script, log),
      ])
      await p6.waitFor(/listening/)
    }
    return p
  }

  /** What a pod's IPv6 sidecar accepted so far (empty outside a dual-stack lab). */
  sidecar6Lines(podName: string): Sidecar6Line[] {
    const log = this.sidecar6Logs.get(podName)
    return log ? parseSidecar6Log(readFileSync(log, 'utf8')) : []
  }

  private statsSocket(podName: string): string {
    return join(this.lab.tmp, `haproxy-${podName}`, 'stats.sock')
  }

  /** Sessions a pod's sidecar has accepted so far on its outbound and inbound listeners. */
  /** One command to the sidecar's stats socket, and its answer. */
  private statsCommand(podName: string, command: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let text = ''
      const sock = connect(this.statsSocket(podName), () => sock.end(`${command}\n`))
      sock.setEncoding('utf8')
      sock.on('data', (d: string) => (text += d))
      sock.on('end', () => resolve(text))
      sock.on('error', reject)
    })
  }

  /** Log lines the sidecar could not write (haproxy's DroppedLogs): a missing line is then not a missing session. */
  async droppedLogs(podName: string): Promise<number> {
    const m = /^DroppedLogs: (\d+)$/m.exec(await this.statsCommand(podName, 'show info'))
    return Number(m?.[1] ?? Number.NaN)
  }

  /** Sessions each of the sidecar's frontends has accepted so far, by name. */
  async frontendSessions(podName: string): Promise<Record<string, number>> {
    return parseFrontendSessions(await this.statsCommand(podName, 'show stat'))
  }

  async sessions(podName: string): Promise<{outbound: number; inbound: number}> {
    const csv = await this.statsCommand(podName, 'show stat')
    const totals = parseSessionTotals(csv)
    if (!Number.isFinite(totals.outbound) || !Number.isFinite(totals.inbound))
      throw new Error(`no session totals from ${podName}'s sidecar: ${csv.slice(0, 200)}`)
    // the IPv6 half logs each connection as it accepts it
    for (const l of this.sidecar6Lines(podName)) totals[l.direction]++
    return totals
  }
}
