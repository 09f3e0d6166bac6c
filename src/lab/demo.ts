/**
 * `merbridge demo`: the main job on a machine without Kubernetes. Builds a lab of two meshed pods
 * with sidecars, measures the direct path, enables merbridge on the lab's cgroup, shows requests
 * passing both sidecars with payload moved socket to socket, and cleans everything up.
 */
import {randomBytes} from 'node:crypto'
import {setTimeout as sleep} from 'node:timers/promises'
import {disable} from '../datapath/disable.js'
import {dumpMaps, type MapDump} from '../datapath/dump.js'
import {enable} from '../datapath/enable.js'
import {inspect, type StatusReport} from '../datapath/inspect.js'
import {Installation} from '../datapath/installation.js'
import {MerbridgeError} from '../errors.js'
import {meshProfile} from '../mesh/profiles.js'
import {requireTools} from '../node/exec.js'
import {patternSha256} from './http-app.js'
import {APP_PORT, Lab} from './lab.js'
import {Bench, MODES, type Sample, type ScenarioSummary, summarize} from './bench.js'
import {parseSidecarLog} from './sidecar.js'

export interface DemoFacts {
  bench?: ScenarioSummary
  direct: {remoteAddress: string; packets: number}
  accelerated: {remoteAddress: string; packets: number; outboundSidecarSaw?: string; inboundSidecarSaw?: string; bodyIntact: boolean}
  status?: StatusReport
  maps?: MapDump[]
  cleanedUp: boolean
}

export interface DemoContext {
  lab: Lab
  inst: Installation
  facts: Partial<DemoFacts>
}

const BODY = 10 * 1024 * 1024

export function newDemo(): DemoContext {
  const lab = new Lab(meshProfile('istio'))
  return {lab, inst: new Installation(`/sys/fs/bpf/merbridge-demo-${randomBytes(3).toString('hex')}`), facts: {}}
}

async function whoami(lab: Lab): Promise<string> {
  const r = await lab.get('client', `http://${lab.pod('server').ip}:${APP_PORT}/whoami`)
  if (r.status !== 200) throw new MerbridgeError(`the demo request failed: ${r.error ?? r.status}`)
  return (JSON.parse(r.body!) as {remoteAddress: string}).remoteAddress
}

async function bodyPackets(lab: Lab): Promise<{packets: number; intact: boolean}> {
  const before = await lab.packets('server')
  const r = await lab.get('client', `http://${lab.pod('server').ip}:${APP_PORT}/bytes?n=${BODY}`)
  return {packets: (await lab.packets('server')) - before, intact: r.bytes === BODY && r.sha256 === patternSha256(BODY)}
}

export const DEMO_STEPS = [
  {
    title: 'Build a lab: two pods with sidecars (haproxy as uid 1337) and an HTTP app',
    async run(ctx: DemoContext) {
      requireTools(['haproxy', 'ip', 'ss'], 'the demo', 'apt-get install haproxy iproute2')
      await ctx.lab.create([{name: 'client', meshed: true}, {name: 'server', meshed: true}])
      for (const p of ['client', 'server']) await ctx.lab.startSidecar(p)
      await ctx.lab.startApp('server')
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
      const marks = [client!.stdout.length, server!.stdout.length]
      const remoteAddress = await whoami(lab)
      await sleep(100) // haproxy logs a connection when it closes
      const {packets, intact} = await bodyPackets(lab)
      ctx.facts.accelerated = {
        remoteAddress,
        packets,
        bodyIntact: intact,
        outboundSidecarSaw: parseSidecarLog(client!.stdout.slice(marks[0])).at(0)?.originalDst,
        inboundSidecarSaw: parseSidecarLog(server!.stdout.slice(marks[1])).at(0)?.originalDst,
      }
    },
  },
  {
    title: 'Read the status and the maps during a stream',
    async run(ctx: DemoContext) {
      const stream = ctx.lab.spawn('client', 'stream', process.execPath, [ctx.lab.appScript(), 'get', `http://${ctx.lab.pod('server').ip}:${APP_PORT}/stream?n=2000000&ms=1000`])
      await sleep(400)
      ctx.facts.maps = await dumpMaps(ctx.inst, ['sock_pair_map', 'pair_original_dst', 'local_pod_ips'], {}, 8)
      ctx.facts.status = await inspect(ctx.inst)
      await stream.exited
    },
  },
]

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
    ctx.facts.bench = summarize(samples, ['keepalive'])[0]
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
