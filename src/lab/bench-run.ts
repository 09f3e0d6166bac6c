/**
 * A whole `merbridge bench`: one lab per sidecar shape, every round running every mode once (in
 * an order that rotates, so that drift on a shared machine favours no mode), then the scale
 * scenario when asked; the report with its summaries. The caller shows the steps and stops the
 * lab under way on a signal (`current`).
 */
import {cpus, hostname, release} from 'node:os'
import {Bench} from './bench.js'
import {type Baseline, type BenchReport, type Mode, type Sample, type Scenario, summarize} from './bench-report.js'
import {type ScaleReport, ScaleRun} from './scale.js'

export interface BenchPlan {
  scenarios: Scenario[]
  /** worker threads of the sidecars: one lab each */
  shapes: number[]
  rounds: number
  durationSec: number
  baseline?: Baseline
  sidecarsMode: boolean
  /** connections the scale scenario holds at once; none: not run */
  scaleConnections?: number
}

export interface BenchStep {
  title: string
  run: () => Promise<void>
}

export interface BenchHooks {
  /** run a lab's steps in order, showing them */
  runSteps: (steps: BenchStep[]) => Promise<void>
  /** the lab under way, for a signal handler to tear down (undefined once it is gone) */
  current: (lab: {teardown(): Promise<void>} | undefined) => void
}

export async function runBench(plan: BenchPlan, hooks: BenchHooks): Promise<BenchReport> {
  const samples: Sample[] = []
  for (const threads of plan.scenarios.length > 0 ? plan.shapes : []) {
    const lab = new Bench(threads, plan.baseline, plan.sidecarsMode)
    hooks.current(lab)
    const steps: BenchStep[] = [
      {title: `Build the lab (client: wrk, server: nginx, haproxy sidecars with ${threads} thread(s))`, run: () => lab.setup()},
    ]
    for (let round = 1; round <= plan.rounds; round++) {
      const modes = lab.modes
      const order: Mode[] = modes.map((_, i) => modes[(i + round - 1) % modes.length] ?? 'direct')
      for (const mode of order)
        steps.push({
          title: `${threads} thread(s), round ${round}/${plan.rounds}: ${mode}`,
          run: async () => {
            await lab.setMode(mode)
            await lab.verifyMode(mode)
            for (const s of plan.scenarios) samples.push(await lab.measure(round, mode, s, plan.durationSec))
          },
        })
    }
    try {
      await hooks.runSteps(steps)
    } finally {
      await lab.teardown()
      hooks.current(undefined)
    }
  }
  let scale: ScaleReport | undefined
  if (plan.scaleConnections !== undefined) {
    const connections = plan.scaleConnections
    const lab = new ScaleRun(connections)
    hooks.current(lab)
    try {
      await hooks.runSteps([
        {
          title: `Hold ${connections.toLocaleString('en-US')} connections through the sidecars (scale)`,
          run: async () => void (scale = await lab.run()),
        },
      ])
    } finally {
      await lab.teardown()
      hooks.current(undefined)
    }
  }
  return {
    ...(plan.baseline ? {baseline: plan.baseline.name} : {}),
    rounds: plan.rounds,
    durationSec: plan.durationSec,
    machine: {kernel: release(), cpus: cpus().length, node: hostname()},
    samples,
    shapes:
      plan.scenarios.length > 0
        ? plan.shapes.map((threads) => ({
            sidecarThreads: threads,
            summary: summarize(
              samples.filter((x) => x.sidecarThreads === threads),
              plan.scenarios,
            ),
          }))
        : [],
    ...(scale ? {scale} : {}),
  }
}
