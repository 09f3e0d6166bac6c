import {describeError} from '../errors.js'
import {cleanupDemo, DEMO_STEPS, demoClaims, demoServerIp, type DemoFacts, newDemo, shortBench} from '../lab/demo.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderBenchSummary} from '../ui/bench-view.js'
import {renderMapDump} from '../ui/dump-view.js'
import {renderStatus} from '../ui/status-view.js'
import {runWithProgress} from '../ui/steps.js'
import {c, mark} from '../ui/theme.js'

export default class Demo extends BaseCommand {
  static override summary = 'Show merbridge working on this machine, no cluster needed, and clean up'
  static override description =
    "Builds a lab of two pods (network namespaces on a bridge in a namespace of its own, each in its own cgroup, with a haproxy sidecar as uid 1337 and an HTTP app), sends a request and a 10 MiB body directly, enables merbridge on the lab's cgroup, sends them again, shows status and the maps during a stream, prints what that proved, and removes everything (also on failure or Ctrl-C); then a short bench, which is left out, with its reason, where it cannot run. The host's own network and cgroups are not touched. Exit code 1 when a claim was not shown."

  static override examples = [{command: '<%= config.bin %> demo', description: 'Run the demo'}]

  async run(): Promise<DemoFacts> {
    await this.parse(Demo)
    requirePrivileges('demo')
    const ctx = newDemo()
    let stopping = false
    const onSignal = () => {
      if (stopping) return // a second Ctrl-C while cleaning up
      stopping = true
      void cleanupDemo(ctx).finally(() => process.exit(130))
    }
    // `on`, not `once`: still registered when execa's signal-exit handler runs, so it does not
    // re-raise the signal and end the process before the clean-up
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    const silent = this.jsonEnabled()
    const facts = ctx.facts
    let current = ''
    try {
      await runWithProgress([...DEMO_STEPS, {title: 'Disable merbridge and remove the lab', run: cleanupDemo}], ctx, {
        silent,
        onStart: (step) => (current = step.title),
      })
    } catch (error) {
      facts.failure = {step: current, message: describeError(error).message}
    } finally {
      if (!facts.cleanedUp)
        await cleanupDemo(ctx).catch((error: unknown) => (facts.failure ??= {step: 'clean-up', message: describeError(error).message}))
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    // the bench measures; it proves none of the claims, so without it the demo still stands
    if (facts.failure) facts.benchSkipped = 'the demo did not complete'
    else {
      try {
        await runWithProgress(
          [{title: 'Run a short bench: keep-alive, 3 s per mode (direct, iptables, ebpf) in a lab of its own', run: shortBench}],
          ctx,
          {silent},
        )
      } catch (error) {
        const {message, suggestion} = describeError(error)
        facts.benchSkipped = suggestion ? `${message} (${suggestion})` : message
      }
    }
    facts.claims = demoClaims(facts, demoServerIp(ctx))
    if (facts.claims.some((claim) => !claim.shown)) process.exitCode = 1

    this.log('')
    if (facts.status) this.log(renderStatus(facts.status) + '\n')
    for (const m of facts.maps ?? []) this.log(renderMapDump(m) + '\n')
    if (facts.bench) this.log(renderBenchSummary(facts.bench) + '\n')
    this.log(renderClaims(facts))
    return facts
  }
}

function renderClaims(f: DemoFacts): string {
  const lines = [c.bold('What this showed'), ...f.claims.map((claim) => `${claim.shown ? mark.pass : mark.fail} ${claim.text}`)]
  if (f.failure) lines.push(`${mark.fail} ${f.failure.step}: ${f.failure.message}`)
  if (f.bench) {
    const r = f.bench.ratios
    lines.push(
      `${mark.info} with keep-alive connections merbridge served x${r.requestsPerSec.median.toFixed(2)} the requests per second of Istio's iptables rules, at x${r.p99.median.toFixed(2)} their p99 latency (one short round on this machine: merbridge bench gives figures with their spread)`,
    )
  } else if (f.benchSkipped) lines.push(`${mark.skip} the short bench did not run: ${f.benchSkipped}`)
  return lines.join('\n')
}
