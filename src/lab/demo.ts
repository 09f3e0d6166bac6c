/**
 * `merbridge demo`: the main job on a machine without Kubernetes. Builds a lab of two meshed pods
 * with sidecars, measures the direct path, enables merbridge on the lab's cgroup, shows requests
 * passing both sidecars with payload moved socket to socket, and cleans everything up.
 */
import {randomBytes} from 'node:crypto'
import {disable} from '../datapath/disable.js'
import {dumpMaps, type MapDump} from '../datapath/dump-maps.js'
import {enable} from '../datapath/enable.js'
import {inspect, type StatusReport} from '../datapath/status.js'
import {Installation} from '../datapath/installation.js'
import {MerbridgeError} from '../errors.js'
import {meshProfile} from '../mesh/profiles.js'
import {requireTools} from '../exec.js'
import {patternSha256} from './http-app.js'
import {APP_PORT, Lab} from './lab.js'
import {Bench} from './bench.js'
import {MODES, type Sample, type ScenarioSummary, summarize} from './bench-report.js'
import type {LabProcess} from './process.js'
import {parseSidecarLog} from './sidecar.js'

export interface DemoFacts {
  direct?: {remoteAddress: string; packets: number}
  accelerated?: {remoteAddress: string; packets: number; outboundSidecarSaw?: string; inboundSidecarSaw?: string; bodyIntact: boolean}
  status?: StatusReport
  maps?: MapDump[]
  /** sockets in sock_pair_map while a stream was held open */
  liveSockets?: number
  cleanedUp: boolean
  /** the step that failed, if one did: the claims after it were not shown */
  failure?: {step: string; message: string}
  bench?: ScenarioSummary
  /** why the short bench did not run (it proves nothing the claims need) */
  benchSkipped?: string
  claims: Claim[]
}

/** One thing the demo set out to show, and whether it did. */
export interface Claim {
  shown: boolean
  text: string
}

export interface DemoContext {
  lab: Lab
  inst: Installation
  facts: DemoFacts
}

const BODY = 10 * 1024 * 1024

export function newDemo(): DemoContext {
  const lab = new Lab(meshProfile('istio'))
  return {
    lab,
    inst: new Installation(`/sys/fs/bpf/merbridge-demo-${randomBytes(3).toString('hex')}`),
    facts: {cleanedUp: false, claims: []},
  }
}

async function whoami(lab: Lab): Promise<string> {
  const r = await lab.clients.get('client', `http://${lab.pod('server').ip}:${APP_PORT}/whoami`)
  if (r.status !== 200 || r.body === undefined) throw new MerbridgeError(`the demo request failed: ${r.error ?? String(r.status)}`)
  return (JSON.parse(r.body) as {remoteAddress: string}).remoteAddress
}

async function bodyPackets(lab: Lab): Promise<{packets: number; intact: boolean}> {
  const before = await lab.packets('server')
  const r = await lab.clients.get('client', `http://${lab.pod('server').ip}:${APP_PORT}/bytes?n=${BODY}`)
  return {packets: (await lab.packets('server')) - before, intact: r.bytes === BODY && r.sha256 === patternSha256(BODY)}
}

export const DEMO_STEPS = [
  {
    title: 'Build a lab: two pods with sidecars (haproxy as uid 1337) and an HTTP app',
    async run(ctx: DemoContext) {
      requireTools(['haproxy', 'ip', 'ss'], 'the demo', 'apt-get install haproxy iproute2')
      await ctx.lab.create([
        {name: 'client', meshed: true},
        {name: 'server', meshed: true},
      ])
      for (const p of ['client', 'server']) await ctx.lab.sidecars.start(p)
      await ctx.lab.clients.startApp('server')
    },
  },
  {
    title: 'Send a request and a 10 MiB body without merbridge',
    async run(ctx: DemoContext) {
      const remoteAddress = await whoami(ctx.lab)
      ctx.facts.direct = {remoteAddress, packets: (await bodyPackets(ctx.lab)).packets}
    },
  },
  {
    title: 'Enable merbridge on the lab',
    async run(ctx: DemoContext) {
      await enable({cgroup: ctx.lab.cgroup, bpffs: ctx.inst.dir, podsFile: ctx.lab.writePodList()})
    },
  },
  {
    title: 'Send the same request and body through both sidecars',
    async run(ctx: DemoContext) {
      const lab = ctx.lab
      const [client, server] = lab.processes.filter((p) => p.label.startsWith('sidecar'))
      if (!client || !server) throw new MerbridgeError('the lab has no sidecars')
      const marks = [client.stdout.length, server.stdout.length] as const
      const remoteAddress = await whoami(lab)
      // haproxy logs a connection once its upstream is connected: the log line may trail the response
      const logged = async (p: LabProcess, mark: number, what: string) => {
        await p.waitFor(() => parseSidecarLog(p.stdout.slice(mark)).length > 0, what).catch(() => undefined)
        return parseSidecarLog(p.stdout.slice(mark)).at(0)?.originalDst
      }
      const outboundSidecarSaw = await logged(client, marks[0], "the client sidecar's log line")
      const inboundSidecarSaw = await logged(server, marks[1], "the server sidecar's log line")
      const {packets, intact} = await bodyPackets(lab)
      ctx.facts.accelerated = {remoteAddress, packets, bodyIntact: intact, outboundSidecarSaw, inboundSidecarSaw}
    },
  },
  {
    title: 'Read the status and the maps during a stream',
    async run(ctx: DemoContext) {
      const stream = ctx.lab.clients.openStream('client', `http://${ctx.lab.pod('server').ip}:${APP_PORT}`)
      try {
        await stream.flowingPast(0, 'before reading the maps')
        ctx.facts.maps = await dumpMaps(ctx.inst, ['sock_pair_map', 'pair_original_dst', 'local_pod_ips'], {}, 8)
        ctx.facts.liveSockets = ctx.facts.maps.find((m) => m.map === 'sock_pair_map')?.total
        ctx.facts.status = await inspect(ctx.inst)
      } finally {
        await stream.release()
      }
    },
  },
]

/** What the demo showed, claim by claim; a claim whose facts are missing was not shown. */
export function demoClaims(f: DemoFacts, server: string): Claim[] {
  const target = `${server}:${APP_PORT}`
  const d = f.direct
  const a = f.accelerated
  const missing = (what: string) => `${what}: not shown${f.failure ? ` (${f.failure.step} failed)` : ''}`
  return [
    d
      ? {
          shown: d.remoteAddress !== '127.0.0.6',
          text: `without merbridge the server app saw the client's own address (${d.remoteAddress}): no sidecar was involved`,
        }
      : {shown: false, text: missing('the direct path')},
    ...(a
      ? [
          {
            shown: a.remoteAddress === '127.0.0.6',
            text: `with merbridge the server app saw ${a.remoteAddress}: the request came through the server's inbound sidecar`,
          },
          {
            shown: a.outboundSidecarSaw === target,
            text: `the client's outbound sidecar was asked for ${a.outboundSidecarSaw ?? 'nothing'} (getsockopt SO_ORIGINAL_DST answered by eBPF)`,
          },
          {shown: a.inboundSidecarSaw === target, text: `the server's inbound sidecar was asked for ${a.inboundSidecarSaw ?? 'nothing'}`},
          {
            shown: a.bodyIntact && d !== undefined && a.packets * 10 < d.packets,
            text: `a 10 MiB body arrived ${a.bodyIntact ? 'intact' : 'damaged'} with ${a.packets} packets on the server's interface, against ${d?.packets ?? '?'} without merbridge: the payload moved socket to socket`,
          },
        ]
      : [{shown: false, text: missing('requests through both sidecars with merbridge')}]),
    f.status && f.liveSockets !== undefined
      ? {
          shown: f.status.verdict === 'healthy' && f.liveSockets >= 4,
          text: `during a stream, status said ${f.status.verdict} and sock_pair_map held ${f.liveSockets} sockets (the stream's four legs at least)`,
        }
      : {shown: false, text: missing('status and maps during a stream')},
    {shown: f.cleanedUp, text: f.cleanedUp ? 'merbridge was disabled and the lab removed' : 'the lab could not be removed completely'},
  ]
}

/** A short bench in a lab of its own: keep-alive, one round of a few seconds per mode. */
export async function shortBench(ctx: DemoContext, seconds = 3): Promise<void> {
  const bench = new Bench()
  try {
    await bench.setup()
    const samples: Sample[] = []
    for (const mode of MODES) {
      await bench.setMode(mode)
      await bench.verifyMode(mode)
      samples.push(await bench.measure(1, mode, 'keepalive', seconds))
    }
    ctx.facts.bench = summarize(samples, ['keepalive'], {quietOtherCpuPct: Number.POSITIVE_INFINITY})[0]
  } finally {
    await bench.teardown()
  }
}

/** Always runs: disable and tear the lab down, whatever happened before. */
export async function cleanupDemo(ctx: DemoContext): Promise<void> {
  try {
    await disable(ctx.inst, {drainMs: 0})
  } finally {
    await ctx.lab.destroy()
  }
  ctx.facts.cleanedUp = true
}

/** The server pod's address, for the claims (known once the lab exists). */
export function demoServerIp(ctx: DemoContext): string {
  return ctx.lab.pods.get('server')?.ip ?? '?'
}
