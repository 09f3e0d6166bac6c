import {existsSync, statSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {hostname} from 'node:os'
import {join} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {buildObjects, type BuiltObjects, DEFAULT_MAX_CONNECTIONS, sourceHash} from '../bpf/objects.js'
import {MerbridgeError, required} from '../errors.js'
import {MIN_KERNEL} from '../node/kernel.js'
import type {KubeOptions} from '../kube/client.js'
import {type LoadedPods, loadPods} from '../kube/source.js'
import {type MeshProfile, meshProfile} from '../mesh/profiles.js'
import {run} from '../exec.js'
import {isBpffs, readMounts} from '../node/mounts.js'
import {netnsCookies} from '../node/netns.js'
import {runPreflight, type PreflightResult} from './doctor.js'
import {BPFFS_MOUNT} from '../paths.js'
import {disable} from './disable.js'
import {type InstallState, Installation} from './installation.js'
import {PROGRAMS} from '../bpf/programs.js'
import {pinIterators} from './counts.js'
import {turnedOff} from '../bpf/optional.js'
import {withInstallationLock, withNodeLock} from './lock.js'
import {inspect} from './status.js'
import {writeSettings} from './settings.js'
import {attachInbound} from '../node/tc-inbound.js'
import {type AppliedPods, applyPods, keepSince, liveCniPods, podsRecord, refuseEmptying} from './sync.js'
import {checkCapacity} from './sync-maps.js'
import {stageReplacement, swapOnNewMaps, swapPrograms} from './swap.js'
import type {Stopped} from './disable.js'
import {selectMeshedPods} from '../kube/pods.js'

export interface EnableOptions {
  mesh?: string
  cgroup?: string
  bpffs?: string
  podsFile?: string
  node?: string
  rebuild?: boolean
  /** capacity of the connection maps; default: what the installation was enabled with, else 65,535 */
  maxConnections?: number
  kube?: KubeOptions
  /** take a pods list that names none of this node's pods even where pods are registered */
  allowEmpty?: boolean
  /** CNI mode: merbridge-cni registers every meshed pod before it starts; no sidecar guess for others */
  cni?: boolean
}

export interface EnableContext {
  opts: EnableOptions
  inst: Installation
  mesh: MeshProfile
  node: string
  cgroup?: string
  preflight?: PreflightResult
  /** 'fresh' loads everything; 'resync' only reloads the pods of an up-to-date installation */
  mode: 'fresh' | 'resync' | 'replace'
  /** the pin folder was there before this enable made pins in it */
  keepFolder?: boolean
  /** what a replace repaired, when the installation was up to date but not intercepting */
  repaired?: string
  objects?: BuiltObjects
  mountedBpffs: boolean
  hostNetns?: bigint
  podsSource?: string
  loaded?: LoadedPods
  applied?: AppliedPods
  attached: string[]
  /** a replacement staged beside the running datapath, on its maps or on maps of its own, to swap in at attach */
  swap?: 'shared' | 'new maps'
  /** why the maps could not be shared (their layout changed), or why nothing could be staged (then disable and load anew) */
  notShared?: string
  /** what retiring the previous datapath did, when the replacement ran on maps of its own */
  retired?: Stopped
  /** the replacement on maps of its own ran whole beside the old datapath: it is not taken back */
  committed?: boolean
  /** capacity of the connection maps this enable builds */
  maxConnections: number
}

/** One step of enable: what it does and how to take it back. */
export interface EnableStep {
  id: string
  title: string
  skip?: (ctx: EnableContext) => string | false
  run: (ctx: EnableContext) => Promise<void>
  undo?: (ctx: EnableContext) => Promise<void>
}

export function newEnableContext(opts: EnableOptions): EnableContext {
  return {
    opts,
    inst: new Installation(opts.bpffs),
    mesh: meshProfile(opts.mesh ?? 'istio'),
    node: opts.node ?? hostname(),
    mode: 'fresh',
    mountedBpffs: false,
    attached: [],
    maxConnections: opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
  }
}

export const ENABLE_STEPS: EnableStep[] = [
  {
    id: 'preflight',
    title: 'Check the node',
    async run(ctx) {
      ctx.preflight = await runPreflight({cgroup: ctx.opts.cgroup, bpffs: ctx.opts.bpffs})
      const first = ctx.preflight.checks.find((c) => c.required && c.status === 'fail')
      if (first)
        throw new MerbridgeError(`${first.title}: ${first.detail}`, {
          code: 'PREFLIGHT_FAILED',
          suggestion: first.remedy ?? 'run merbridge doctor for details',
        })
      // another tool's pins in that folder would be overwritten, then removed by a rollback
      await ctx.inst.checkOurs()
      ctx.cgroup = ctx.preflight.cgroup
      const state = await ctx.inst.readState()
      if (ctx.preflight.enabled && state) {
        if (state.cgroup !== ctx.cgroup)
          throw new MerbridgeError(`merbridge is already enabled on ${state.cgroup} with ${ctx.inst.dir}`, {
            code: 'ALREADY_ENABLED',
            suggestion: 'run merbridge disable first, or give another --bpffs',
          })
        ctx.maxConnections = ctx.opts.maxConnections ?? state.maxConnections ?? DEFAULT_MAX_CONNECTIONS
        ctx.mode = state.objectHash === (await sourceHash({maxConnections: ctx.maxConnections})) && !ctx.opts.rebuild ? 'resync' : 'replace'
        // an up-to-date installation that is not intercepting (a disable or enable interrupted,
        // something detached or unpinned) is replaced whole, not just resynced
        if (ctx.mode === 'resync') {
          const broken = (await inspect(ctx.inst)).broken
          if (broken) {
            ctx.mode = 'replace'
            ctx.repaired = broken
          }
        }
        // a replacement killed midway may have attached programs pinned only there: disable finds them
        if (existsSync(ctx.inst.stagingDir)) {
          ctx.mode = 'replace'
          ctx.repaired ??= `a replacement was interrupted (its pins are in ${ctx.inst.stagingDir})`
        }
      } else if (ctx.inst.exists()) {
        const pinned = await ctx.inst.pinned()
        // a half installation (enable killed midway): cleaned before loading anew; an empty folder
        // is the user's, made before, and stays theirs
        if (state || pinned.progs.length + pinned.maps.length > 0 || existsSync(join(ctx.inst.dir, 'counts'))) ctx.mode = 'replace'
      }
    },
  },
  {
    // before anything is loaded or replaced: a bad pods file or an API that cannot be used fails
    // here, with the node as it was
    id: 'read-pods',
    title: 'Read the pods of this node',
    async run(ctx) {
      ctx.loaded = await loadPods(ctx.opts.podsFile, ctx.node, ctx.opts.kube)
      ctx.podsSource = ctx.loaded.source
      const selection = selectMeshedPods(ctx.loaded.pods, ctx.node, ctx.mesh)
      const registered = (await ctx.inst.readState())?.pods.meshed.length ?? 0
      refuseEmptying(selection, ctx.node, {registered, source: ctx.loaded.source, allowEmpty: ctx.opts.allowEmpty === true})
      checkCapacity(selection)
    },
  },
  {
    id: 'build',
    title: 'Build the datapath',
    async run(ctx) {
      ctx.objects = await buildObjects({rebuild: ctx.opts.rebuild, maxConnections: ctx.maxConnections})
    },
  },
  {
    id: 'replace',
    title: 'Prepare the replacement',
    skip: (ctx) => (ctx.mode !== 'replace' ? 'nothing to replace' : false),
    async run(ctx) {
      // a working installation is replaced in place; a broken or half one is removed first
      if (!ctx.repaired && (await ctx.inst.readState())) {
        const staged = await stageReplacement(ctx.inst, required(ctx.objects, 'the built objects').datapath)
        if (staged.staged) ctx.swap = staged.staged
        if (staged.staged !== 'shared') ctx.notShared = staged.why
      }
      if (!ctx.swap) await disable(ctx.inst)
    },
    async undo(ctx) {
      // once the new programs ran beside the old ones, both stay pinned for disable to find
      if (ctx.swap && !ctx.committed) await ctx.inst.removeStaging()
    },
  },
  {
    id: 'load',
    title: 'Load and pin programs and maps',
    skip: (ctx) =>
      ctx.mode === 'resync'
        ? 'already loaded, objects unchanged'
        : ctx.swap
          ? `loaded beside the running datapath, on ${ctx.swap === 'shared' ? 'its maps' : 'maps of its own'}`
          : false,
    async run(ctx) {
      if (!isBpffs(readMounts(), BPFFS_MOUNT) && ctx.inst.dir.startsWith(BPFFS_MOUNT + '/')) {
        // root's only: bpffs defaults to 1777, where any user may pin (and squat names)
        await run('mount', ['-t', 'bpf', '-o', 'mode=0700', 'bpf', BPFFS_MOUNT])
        ctx.mountedBpffs = true
      }
      // a folder that was there before is left there by disable (only what merbridge made goes)
      ctx.keepFolder = existsSync(ctx.inst.dir)
      await mkdir(ctx.inst.dir, {recursive: true})
      await bpftool.loadAll(required(ctx.objects, 'the built objects').datapath, ctx.inst.progDir, ctx.inst.mapDir)
    },
    async undo(ctx) {
      await disable(ctx.inst, {drainMs: 0, keepFolder: ctx.keepFolder})
      if (ctx.mountedBpffs) await run('umount', [BPFFS_MOUNT], {allowFailure: true})
    },
  },
  {
    id: 'configure',
    title: 'Configure the mesh profile',
    // also on resync: CNI mode may have been turned on or off
    async run(ctx) {
      const cookies = await netnsCookies(required(ctx.objects, 'the built objects').netnsCookie, ['/proc/self/ns/net'])
      ctx.hostNetns = cookies.get('/proc/self/ns/net')
      if (ctx.hostNetns === undefined)
        throw new MerbridgeError('cannot read the network namespace cookie of this node', {
          code: 'NETNS_COOKIE',
          suggestion: `needs Linux ${MIN_KERNEL.text} or newer: ${MIN_KERNEL.why}`,
        })
      const m = ctx.mesh
      await writeSettings(target(ctx), {
        sidecarUid: m.sidecarUid,
        sidecarGid: m.sidecarGid,
        outboundPort: m.outboundPort,
        inboundPort: m.inboundPort,
        draining: false,
        inboundRewrite: turnedOff('reuseport-assign') !== undefined,
        cni: ctx.opts.cni === true,
        hostNetns: ctx.hostNetns,
        dnsPort: m.dnsPort,
      })
    },
  },
  {
    id: 'pods',
    title: 'Register the pods of this node',
    async run(ctx) {
      ctx.loaded = required(ctx.loaded, 'the pods read')
      // a fresh or replaced datapath gets inbound capture in the attach step, after getsockopt
      // maps of its own are filled before anything is attached, each pod kept in the namespace it is registered to
      ctx.applied = await applyPods(target(ctx), required(ctx.objects, 'the built objects'), ctx.loaded.pods, {
        node: ctx.node,
        mesh: ctx.mesh,
        attachInbound: ctx.mode === 'resync',
        capacity: ctx.maxConnections,
        ...(ctx.swap === 'new maps' ? {registeredIn: ctx.inst} : {}),
        cniPods: liveCniPods(await ctx.inst.readState()),
      })
    },
  },
  {
    id: 'attach',
    title: 'Attach to the cgroup',
    skip: (ctx) => (ctx.mode === 'resync' ? 'already attached' : false),
    async run(ctx) {
      const objects = required(ctx.objects, 'the built objects')
      if (ctx.swap === 'new maps') {
        ctx.retired = await swapOnNewMaps(
          ctx.inst,
          required(ctx.cgroup, 'the cgroup'),
          objects.tcInbound,
          required(ctx.applied, 'the applied pods').sync.registered,
          () => {
            ctx.committed = true
          },
        )
        ctx.attached.push(...PROGRAMS.map((p) => p.name))
        return
      }
      if (ctx.swap) {
        await swapPrograms(
          ctx.inst,
          required(ctx.cgroup, 'the cgroup'),
          objects.tcInbound,
          required(ctx.applied, 'the applied pods').sync.registered,
        )
        ctx.attached.push(...PROGRAMS.map((p) => p.name))
        return
      }
      for (const p of PROGRAMS) {
        if (p.target === 'cgroup') await bpftool.cgroupAttach(required(ctx.cgroup, 'the cgroup'), p.attachType, ctx.inst.prog(p.name))
        else if (p.target === 'sock_pair_map')
          await bpftool.progAttachToMap(ctx.inst.prog(p.name), p.attachType, ctx.inst.map('sock_pair_map'))
        else {
          const applied = required(ctx.applied, 'the applied pods')
          const tc = await attachInbound(objects.tcInbound, ctx.inst.prog(p.name), applied.sync.registered, ctx.inst.dir)
          if (tc.failed.size > 0)
            throw new MerbridgeError(
              `cannot attach inbound capture in ${tc.failed.size} pod namespace(s): ${[...tc.failed.values()][0] ?? ''}`,
              {code: 'TC_ATTACH'},
            )
        }
        ctx.attached.push(p.name)
      }
    },
    async undo(ctx) {
      // a swap that failed put the old programs back itself; one that succeeded is not undone
      // (the old programs are gone), and the installation stays whole and recorded
      if (!ctx.swap) await disable(ctx.inst, {drainMs: 0})
    },
  },
  {
    id: 'record',
    title: 'Record the installation',
    async run(ctx) {
      const previous = await ctx.inst.readState()
      const state: InstallState = {
        version: 1,
        bpffs: ctx.inst.dir,
        cgroup: required(ctx.cgroup, 'the cgroup'),
        mesh: ctx.mesh.name,
        node: ctx.node,
        objectHash: required(ctx.objects, 'the built objects').hash,
        maxConnections: ctx.maxConnections,
        enabledAt: ctx.mode === 'resync' && previous ? previous.enabledAt : new Date().toISOString(),
        mountedBpffs: ctx.mountedBpffs || (ctx.mode === 'resync' && previous?.mountedBpffs === true),
        hostNetns: (ctx.hostNetns ?? BigInt(previous?.hostNetns ?? 0)).toString(),
        pods: keepSince(podsRecord(required(ctx.podsSource, 'the pods source'), required(ctx.applied, 'the applied pods')), previous?.pods),
      }
      await ctx.inst.keepHelpers(required(ctx.objects, 'the built objects'))
      // optional: without them status counts entries by dumping the maps, and disable keeps sockets
      const rewrite = turnedOff('reuseport-assign')
      const unavailable = {
        ...(await pinIterators(ctx.inst, required(ctx.objects, 'the built objects'))),
        ...(rewrite ? {'reuseport-assign': rewrite} : {}),
      }
      const programIds: Record<string, number> = {}
      const infos = await bpftool.progsShowPinned(PROGRAMS.map((p) => ctx.inst.prog(p.name)))
      for (const [i, p] of PROGRAMS.entries()) {
        const info = infos[i]
        if (info) programIds[p.name] = info.id
      }
      const keepFolder = ctx.keepFolder ?? previous?.keepFolder
      // the CNI configuration stays installed across enables: only disable takes it out
      const cni = previous?.cni
      const cniPods = liveCniPods(previous)
      await ctx.inst.writeState({
        ...state,
        cgroupId: statSync(state.cgroup).ino,
        programIds,
        ...(keepFolder ? {keepFolder} : {}),
        ...(Object.keys(unavailable).length > 0 ? {unavailable} : {}),
        ...(cni ? {cni} : {}),
        ...(Object.keys(cniPods).length > 0 ? {cniPods} : {}),
      })
    },
    async undo(ctx) {
      if (ctx.mode !== 'resync' && !ctx.swap) await ctx.inst.removeState()
    },
  },
]

/** Where configure and pods write: the running maps, or the replacement's own when it has them. */
function target(ctx: EnableContext): Installation {
  return ctx.swap === 'new maps' ? ctx.inst.staged() : ctx.inst
}

/** Take back the steps that ran, last first. Returns the problems met on the way (never throws). */
async function rollback(done: EnableStep[], ctx: EnableContext): Promise<string[]> {
  if (ctx.mode === 'resync') return [] // nothing of an up-to-date installation was replaced
  const problems: string[] = []
  for (const step of [...done].reverse()) {
    if (!step.undo) continue
    try {
      await step.undo(ctx)
    } catch (error) {
      problems.push(`${step.title}: ${(error as Error).message}`)
    }
  }
  return problems
}

/**
 * How the steps are run: a progress display (ui/steps.ts) or the plain loop below. It calls
 * `onStart` before each step it runs, skips what `skip` says, and throws at the first failure,
 * or at the first step boundary once `signal` fired.
 */
export type StepRunner = (
  steps: EnableStep[],
  ctx: EnableContext,
  hooks: {onStart: (step: EnableStep) => void; signal?: AbortSignal},
) => Promise<void>

const plainSteps: StepRunner = async (steps, ctx, {onStart, signal}) => {
  for (const step of steps) {
    if (step.skip?.(ctx)) continue
    if (signal?.aborted) throw new Error('interrupted')
    onStart(step)
    await step.run(ctx)
  }
}

/**
 * The one enable: under the installation's lock (held through any rollback, so a second enable
 * never starts while this one undoes), every step in order; on a failure, or when `signal` fires
 * (its reason names the signal), everything done so far is undone and one error says so.
 */
export async function enable(opts: EnableOptions, run: {runSteps?: StepRunner; signal?: AbortSignal} = {}): Promise<EnableContext> {
  const ctx = newEnableContext(opts)
  const started: EnableStep[] = []
  // the installation's lock first: a second enable of it is told who holds it
  await withInstallationLock(ctx.inst, 'enable', () =>
    withNodeLock('enable', async () => {
      try {
        await (run.runSteps ?? plainSteps)(ENABLE_STEPS, ctx, {onStart: (step) => started.push(step), signal: run.signal})
      } catch (error) {
        const step = started.at(-1) ?? required(ENABLE_STEPS[0], 'the first step')
        const problems = await rollback(started, ctx)
        if (run.signal?.aborted) throw interrupted(String(run.signal.reason), step, problems)
        throw enableFailure(step, error, problems)
      }
    }),
  )
  return ctx
}

function interrupted(signal: string, step: EnableStep, problems: string[]): MerbridgeError {
  return new MerbridgeError(
    `enable was interrupted by ${signal} during "${step.title}"; everything it had done was undone${problems.length > 0 ? ' except what follows' : ''}`,
    {
      code: 'INTERRUPTED',
      exitCode: signal === 'SIGINT' ? 130 : 143,
      suggestion: problems.length > 0 ? `rollback was incomplete (${problems.join('; ')}); run merbridge disable` : undefined,
    },
  )
}

function enableFailure(step: EnableStep, error: unknown, problems: string[]): MerbridgeError {
  const inner = error instanceof MerbridgeError ? error : undefined
  const message = `enable failed at "${step.title}": ${(error as Error).message}`
  const suggestion = problems.length > 0 ? `rollback was incomplete (${problems.join('; ')}); run merbridge disable` : inner?.suggestion
  return new MerbridgeError(message, {code: inner?.code ?? 'ENABLE_FAILED', exitCode: 1, suggestion})
}
