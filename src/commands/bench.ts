import {Flags} from '@oclif/core'
import {cpus, hostname, release} from 'node:os'
import {Bench, type BenchReport, MODES, type Mode, type Sample, type Scenario, SCENARIOS, summarize} from '../lab/bench.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderBench, renderBenchMarkdown} from '../ui/bench-view.js'
import {runWithProgress} from '../ui/steps.js'

const SCENARIO_NAMES = Object.keys(SCENARIOS) as Scenario[]

export default class BenchCommand extends BaseCommand {
  static override summary = 'Measure merbridge against iptables interception on this machine'
  static override description = `Builds a lab (a client pod with wrk, a server pod with nginx, haproxy sidecars as uid 1337) and measures each scenario in three modes, switched within every round: direct (no interception), iptables (Istio's rules inside the pods) and ebpf (merbridge on the lab's cgroup). Each mode is checked to do what it says before it is measured. Figures are medians over rounds; ratios are medians of each round's ebpf/iptables ratio. Scenarios: ${SCENARIO_NAMES.join(', ')}.`

  static override examples = [
    {command: '<%= config.bin %> bench', description: 'Three rounds of 10 s per mode and scenario'},
    {command: '<%= config.bin %> bench --rounds 1 --duration 2 --scenarios keepalive --markdown', description: 'A quick look, as a Markdown table'},
  ]

  static override flags = {
    rounds: Flags.integer({description: 'rounds; every round runs every mode once', default: 3, min: 1}),
    duration: Flags.integer({description: 'seconds per mode and scenario', default: 10, min: 1}),
    scenarios: Flags.string({description: `comma-separated: ${SCENARIO_NAMES.join(', ')}`, default: SCENARIO_NAMES.join(',')}),
    markdown: Flags.boolean({description: 'print the result as Markdown tables'}),
  }

  async run(): Promise<BenchReport> {
    const {flags} = await this.parse(BenchCommand)
    const scenarios = flags.scenarios.split(',').map((s) => s.trim()).filter(Boolean)
    const unknown = scenarios.filter((s) => !SCENARIO_NAMES.includes(s as Scenario))
    if (unknown.length > 0) this.error(`unknown scenario ${unknown.join(', ')} (known: ${SCENARIO_NAMES.join(', ')})`, {exit: 2})
    requirePrivileges('bench')

    const bench = new Bench()
    const samples: Sample[] = []
    let stopping = false
    const onSignal = () => {
      if (stopping) return // a second Ctrl-C while tearing down
      stopping = true
      void bench.teardown().finally(() => process.exit(130))
    }
    // `on`, not `once`: still registered when execa's signal-exit handler runs, so it does not
    // re-raise the signal and end the process before the clean-up
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    const steps: {title: string; run: () => Promise<void>}[] = [{title: 'Build the lab (client: wrk, server: nginx, haproxy sidecars)', run: () => bench.setup()}]
    for (let round = 1; round <= flags.rounds; round++) {
      // rotate the order of modes so that drift on a shared machine does not favour one
      const order: Mode[] = MODES.map((_, i) => MODES[(i + round - 1) % MODES.length] ?? 'direct')
      for (const mode of order) {
        steps.push({
          title: `Round ${round}/${flags.rounds}: ${mode}`,
          run: async () => {
            await bench.setMode(mode)
            await bench.verifyMode(mode)
            for (const s of scenarios as Scenario[]) samples.push(await bench.measure(round, mode, s, flags.duration))
          },
        })
      }
    }
    try {
      await runWithProgress(steps, undefined, {silent: this.jsonEnabled()})
    } finally {
      await bench.teardown()
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    const report: BenchReport = {
      rounds: flags.rounds,
      durationSec: flags.duration,
      machine: {kernel: release(), cpus: cpus().length, node: hostname()},
      samples,
      summary: summarize(samples, scenarios as Scenario[]),
    }
    this.log('')
    this.log(flags.markdown ? renderBenchMarkdown(report) : renderBench(report))
    return report
  }
}
