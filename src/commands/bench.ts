import {Flags} from '@oclif/core'
import {accessSync, constants, statSync} from 'node:fs'
import {type BenchReport, type Scenario, SCENARIOS} from '../lab/bench-report.js'
import {runBench} from '../lab/bench-run.js'
import {ENTRIES_PER_CONNECTION, SCALE_PODS} from '../lab/scale.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderBench, renderBenchMarkdown} from '../ui/bench-view.js'
import {runWithProgress} from '../ui/steps.js'

const SCENARIO_NAMES = Object.keys(SCENARIOS) as Scenario[]
/** Not a wrk scenario: many connections held at once, in ebpf mode only (src/lab/scale.ts). */
const SCALE = 'scale'

export default class BenchCommand extends BaseCommand {
  static override summary = 'Measure merbridge against iptables interception on this machine'
  // one line a paragraph: oclif wraps them to the terminal's width
  static override description = [
    [
      'Builds a lab (a client pod with wrk, a server pod with nginx, haproxy sidecars as uid 1337) and',
      'measures each scenario in three modes, switched within every round: direct (no interception),',
      "iptables (Istio's rules inside the pods) and ebpf (merbridge on the lab's cgroup). Each mode is",
      'checked to do what it says before it is measured.',
    ],
    [
      "Figures are medians over rounds; ratios are medians of each round's ebpf/iptables ratio, with",
      'the lowest and highest round. A ratio leaves out a round where a sample it compares ran while',
      'other processes and the hypervisor (steal) took more than 10% of the machine; such rounds are',
      'named, and fewer than 2 rounds make a scenario unreliable. Every shape of --sidecar-threads gets',
      'its own lab and report.',
    ],
    [
      `Scenarios: ${SCENARIO_NAMES.join(', ')}; and, when named, ${SCALE}: --scale-connections connections`,
      `through both sidecars held open at once by ${SCALE_PODS} client pods, merbridge enabled with`,
      `${ENTRIES_PER_CONNECTION} map entries per connection, reporting whether every one was redirected and what`,
      'the maps cost.',
    ],
    [
      '--baseline-up and --baseline-down add a fourth mode to every round, another datapath brought up',
      'and down by your commands (such as the original Merbridge programs), with ebpf/baseline ratios.',
      "--sidecars-mode adds the sidecars without interception, the client calling its sidecar's fixed",
      "listener (which forwards to the server's): a mode's CPU beyond it is what its interception costs",
      '(below zero where its data path saves more), and its figures against iptables are all that',
      'removing interception alone could give.',
    ],
  ]
    .map((paragraph) => paragraph.join(' '))
    .join('\n\n')

  static override examples = [
    {command: '<%= config.bin %> bench', description: 'Three rounds of 10 s per mode and scenario'},
    {
      command: '<%= config.bin %> bench --rounds 1 --duration 2 --scenarios keepalive --markdown',
      description: 'A quick look, as a Markdown table',
    },
    {command: '<%= config.bin %> bench --scenarios scale', description: '20,000 proxied connections held at once'},
    {
      command: '<%= config.bin %> bench --scenarios new-connection --sidecars-mode',
      description: 'What interception itself costs, beside the sidecars',
    },
  ]

  static override flags = {
    rounds: Flags.integer({description: 'rounds; every round runs every mode once', default: 3, min: 1}),
    duration: Flags.integer({description: 'seconds per mode and scenario', default: 10, min: 1}),
    scenarios: Flags.string({description: `comma-separated: ${[...SCENARIO_NAMES, SCALE].join(', ')}`, default: SCENARIO_NAMES.join(',')}),
    'scale-connections': Flags.integer({
      description: `connections the ${SCALE} scenario holds open at once`,
      default: 20_000,
      min: SCALE_PODS,
      max: 40_000,
    }),
    'sidecar-threads': Flags.string({
      description: "comma-separated worker thread counts of the sidecars, one lab each (a user's Envoy runs 2 by default)",
      default: '1,2',
    }),
    markdown: Flags.boolean({description: 'print the result as Markdown tables'}),
    'baseline-up': Flags.string({
      description: 'a fourth mode, another datapath: the command that loads it, run as CMD CGROUP BPFFS_DIR POD_IP...',
      dependsOn: ['baseline-down'],
    }),
    'baseline-down': Flags.string({description: 'the command that removes it, run as CMD CGROUP BPFFS_DIR', dependsOn: ['baseline-up']}),
    'baseline-name': Flags.string({description: 'what to call the fourth mode in the report', default: 'baseline'}),
    'sidecars-mode': Flags.boolean({
      description:
        "add a mode with the sidecars but no interception (the client calls its sidecar's fixed listener): what each mode's interception costs, and all that removing interception alone could give",
    }),
  }

  async run(): Promise<BenchReport> {
    const {flags} = await this.parse(BenchCommand)
    const named = flags.scenarios
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
    const unknown = named.filter((s) => s !== SCALE && !SCENARIO_NAMES.includes(s as Scenario))
    if (unknown.length > 0)
      this.error(`unknown scenario ${unknown.join(', ')} (known: ${[...SCENARIO_NAMES, SCALE].join(', ')})`, {exit: 2})
    const scenarios = named.filter((s): s is Scenario => s !== SCALE)
    const shapes = flags['sidecar-threads'].split(',').map((t) => t.trim())
    if (shapes.length === 0 || shapes.some((t) => !/^[1-9]\d{0,2}$/.test(t)))
      this.error(`--sidecar-threads ${flags['sidecar-threads']}: give thread counts such as 1,2`, {exit: 2})
    const baseline =
      flags['baseline-up'] && flags['baseline-down']
        ? {name: flags['baseline-name'], up: flags['baseline-up'], down: flags['baseline-down']}
        : undefined
    for (const cmd of baseline ? [baseline.up, baseline.down] : [])
      if (!isExecutable(cmd))
        this.error(`${cmd} is not an executable file: --baseline-up and --baseline-down take the paths of the commands`, {exit: 2})
    requirePrivileges('bench')

    let current: {teardown(): Promise<void>} | undefined
    let stopping = false
    const onSignal = () => {
      if (stopping) return // a second Ctrl-C while tearing down
      stopping = true
      void (current?.teardown() ?? Promise.resolve()).finally(() => process.exit(130))
    }
    // `on`, not `once`: still registered when execa's signal-exit handler runs, so it does not
    // re-raise the signal and end the process before the clean-up
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    let report: BenchReport
    try {
      const plan = {
        scenarios,
        shapes: shapes.map(Number),
        rounds: flags.rounds,
        durationSec: flags.duration,
        baseline,
        sidecarsMode: flags['sidecars-mode'],
        ...(named.includes(SCALE) ? {scaleConnections: flags['scale-connections']} : {}),
      }
      report = await runBench(plan, {
        runSteps: (steps) => runWithProgress(steps, undefined, {silent: this.jsonEnabled()}),
        current: (lab) => (current = lab),
      })
    } finally {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    this.log('')
    this.log(flags.markdown ? renderBenchMarkdown(report) : renderBench(report))
    return report
  }
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return statSync(path).isFile()
  } catch {
    return false
  }
}
