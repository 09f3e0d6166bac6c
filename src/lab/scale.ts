/**
 * The bench's `scale` scenario: many concurrent proxied connections on one node, every one
 * through both sidecars, held open at once, with merbridge enabled at a capacity chosen for them.
 * It answers whether all of them are redirected (none left on TCP, none without its original
 * destination) and what the connection maps cost in kernel memory.
 */
import {randomBytes} from 'node:crypto'
import {readMaps} from '../bpf/maps.js'
import type {CounterName} from '../bpf/layout.js'
import {bpftool} from '../bpf/bpftool.js'
import {disable} from '../datapath/disable.js'
import {enable} from '../datapath/enable.js'
import {countEntries} from '../datapath/status.js'
import {Installation} from '../datapath/installation.js'
import {MerbridgeError} from '../errors.js'
import {meshProfile} from '../mesh/profiles.js'
import {run} from '../exec.js'
import {APP_PORT, Lab} from './lab.js'
import type {LabProcess} from './process.js'
import {SYSTEM_PYTHON} from './sidecar6.js'
import {labScript} from './scripts.js'

/** Client pods (and as many server pods): a process may hold at most 20,000 descriptors here, and a sidecar holds two per connection. */
export const SCALE_PODS = 4
/** Entries of each connection map per connection: six sockets (two legs in each sidecar's pod, and the hop between pods) need 6, and the datapath keeps a quarter for pods under their share. */
export const ENTRIES_PER_CONNECTION = 8
const DEADLINE_MS = 600_000

export interface ScaleReport {
  connections: number
  pods: number
  /** enable --max-connections: entries of sock_pair_map and of pair_original_dst */
  maxConnections: number
  /** connections that echoed a message through both sidecars and stayed open */
  held: number
  failed: number
  /** wall time to open and echo on all of them, every client pod at once */
  openSeconds: number
  /** sock_pair_map and pair_original_dst entries with every connection open */
  entries: {sockets: number; origins: number}
  /** what the datapath counted while they opened */
  counters: Partial<Record<CounterName, number>>
  /** kernel memory of the two connection maps (bpftool's bytes_memlock) */
  memoryBytes: {sockPairMap: number; pairOriginalDst: number}
  /** every connection held, all redirected: nothing left on TCP, no original destination refused */
  allRedirected: boolean
}

const COUNTED: CounterName[] = [
  'connOutbound',
  'connInbound',
  'msgRedirected',
  'redirectMiss',
  'sockhashFull',
  'originLost',
  'socketOverShare',
  'originOverShare',
]

/** One scale run: its lab and installation, torn down by teardown() (also from a signal handler). */
export class ScaleRun {
  readonly lab = new Lab(meshProfile('istio'))
  readonly inst = new Installation(`/sys/fs/bpf/merbridge-bench-${randomBytes(3).toString('hex')}`)
  private clients: LabProcess[] = []

  constructor(
    readonly connections: number,
    readonly sidecarThreads = 1,
  ) {}

  get maxConnections(): number {
    return Math.max(65_535, ENTRIES_PER_CONNECTION * this.connections)
  }

  async run(): Promise<ScaleReport> {
    const {lab, inst, connections} = this
    const perPod = Math.ceil(connections / SCALE_PODS)
    const names = Array.from({length: SCALE_PODS}, (_, i) => [`client${i}`, `server${i}`]).flat()
    await lab.create(names.map((name) => ({name, meshed: true})))
    for (const name of names) {
      await run('ip', ['netns', 'exec', lab.pod(name).netns, 'sysctl', '-q', '-w', 'net.core.somaxconn=4096'])
      await lab.sidecars.start(name, {threads: this.sidecarThreads, maxconn: perPod + 100})
    }
    for (let i = 0; i < SCALE_PODS; i++)
      await lab
        .spawn(`server${i}`, `echo server ${i}`, SYSTEM_PYTHON, [labScript(lab.tmp, 'scale_echo.py'), String(APP_PORT)])
        .waitFor(/listening/)
    await enable({cgroup: lab.cgroup, bpffs: inst.dir, podsFile: lab.writePodList(), maxConnections: this.maxConnections})
    const before = await readMaps.counters(inst)
    const t0 = performance.now()
    for (let i = 0; i < SCALE_PODS; i++) {
      const n = Math.max(0, Math.min(perPod, connections - i * perPod))
      this.clients.push(
        lab.spawn(`client${i}`, `client ${i}`, SYSTEM_PYTHON, [
          labScript(lab.tmp, 'scale_client.py'),
          lab.pod(`server${i}`).ip,
          String(APP_PORT),
          String(n),
        ]),
      )
    }
    const results = await Promise.all(
      this.clients.map(async (c) => {
        await c.waitFor(/^held \d+ failed \d+/m, 'its connections opened', DEADLINE_MS)
        const m = /^held (\d+) failed (\d+)/m.exec(c.stdout)
        return {held: Number(m?.[1]), failed: Number(m?.[2])}
      }),
    )
    const openSeconds = (performance.now() - t0) / 1000
    const after = await readMaps.counters(inst)
    const origins = await bpftool.mapShowPinned(inst.map('pair_original_dst'))
    const sockets = await bpftool.mapShowPinned(inst.map('sock_pair_map'))
    if (origins === undefined || sockets === undefined) throw new MerbridgeError('scale: the connection maps are not pinned')
    const counts = await countEntries(
      inst,
      new Map([
        ['pair_original_dst', origins],
        ['sock_pair_map', sockets],
      ]),
    )
    const counters = Object.fromEntries(COUNTED.map((k) => [k, after[k] - before[k]])) as Record<CounterName, number>
    const held = results.reduce((a, r) => a + r.held, 0)
    return {
      connections,
      pods: SCALE_PODS,
      maxConnections: this.maxConnections,
      held,
      failed: results.reduce((a, r) => a + r.failed, 0),
      openSeconds,
      entries: {sockets: counts.sock_pair_map ?? Number.NaN, origins: counts.pair_original_dst ?? Number.NaN},
      counters,
      memoryBytes: {sockPairMap: sockets.bytes_memlock ?? Number.NaN, pairOriginalDst: origins.bytes_memlock ?? Number.NaN},
      // redirectMiss is left out: a first message may race its peer's tracking and keep its socket on TCP, through the same sidecars
      allRedirected:
        held === connections && counters.sockhashFull + counters.originLost + counters.socketOverShare + counters.originOverShare === 0,
    }
  }

  async teardown(): Promise<void> {
    for (const c of this.clients) await c.stop()
    try {
      await disable(this.inst, {drainMs: 0})
    } finally {
      await this.lab.destroy()
    }
  }
}
