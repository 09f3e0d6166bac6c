import {cleanupDemo, DEMO_STEPS, type DemoFacts, newDemo, shortBench} from '../lab/demo.js'
import {APP_PORT} from '../lab/lab.js'
import {requirePrivileges} from '../node/caps.js'
import {BaseCommand} from '../ui/base-command.js'
import {renderBenchSummary} from '../ui/bench-view.js'
import {renderMapDump} from '../ui/dump-view.js'
import {renderStatus} from '../ui/status-view.js'
import {runWithProgress} from '../ui/steps.js'
import {c, mark} from '../ui/theme.js'

export default class Demo extends BaseCommand {
  static override summary = 'Show merbridge working on this machine, no cluster needed, and clean up'
  static override description = "Builds a lab of two pods (network namespaces on a bridge in a namespace of its own, each in its own cgroup, with a haproxy sidecar as uid 1337 and an HTTP app), sends a request and a 10 MiB body directly, enables merbridge on the lab's cgroup, sends them again, shows status and the maps during a stream, prints what that proved, and removes everything (also on failure or Ctrl-C). The host's own network and cgroups are not touched."

  static override examples = [{command: '<%= config.bin %> demo', description: 'Run the demo'}]

  async run(): Promise<DemoFacts> {
    await this.parse(Demo)
    requirePrivileges('demo')
    const ctx = newDemo()
    const onSignal = () => {
      void cleanupDemo(ctx).finally(() => process.exit(130))
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    try {
      await runWithProgress(
        [
          ...DEMO_STEPS,
          {title: 'Disable merbridge and remove the lab', run: cleanupDemo},
          {title: 'Run a short bench: keep-alive, 3 s per mode (direct, iptables, ebpf) in a lab of its own', run: shortBench},
        ],
        ctx,
        {silent: this.jsonEnabled(), onStart: () => {}},
      )
    } finally {
      if (!ctx.facts.cleanedUp) await cleanupDemo(ctx)
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    const facts = ctx.facts as DemoFacts
    this.log('')
    if (facts.status) this.log(renderStatus(facts.status))
    this.log('')
    for (const m of facts.maps ?? []) this.log(renderMapDump(m) + '\n')
    if (facts.bench) this.log(renderBenchSummary(facts.bench) + '\n')
    this.log(proved(facts, ctx.lab.pod('server').ip))
    return facts
  }
}

function proved(f: DemoFacts, server: string): string {
  const ok = (cond: boolean, text: string) => `${cond ? mark.pass : mark.fail} ${text}`
  const a = f.accelerated
  return [
    c.bold('What this showed'),
    ok(f.direct.remoteAddress !== '127.0.0.6', `without merbridge the server app saw the client's own address (${f.direct.remoteAddress}): no sidecar was involved`),
    ok(a.remoteAddress === '127.0.0.6', `with merbridge the server app saw ${a.remoteAddress}: the request came through the server's inbound sidecar`),
    ok(a.outboundSidecarSaw === `${server}:${APP_PORT}`, `the client's outbound sidecar was asked for ${a.outboundSidecarSaw ?? 'nothing'} (getsockopt SO_ORIGINAL_DST answered by eBPF)`),
    ok(a.inboundSidecarSaw === `${server}:${APP_PORT}`, `the server's inbound sidecar was asked for ${a.inboundSidecarSaw ?? 'nothing'}`),
    ok(a.bodyIntact && a.packets * 10 < f.direct.packets, `a 10 MiB body arrived intact with ${a.packets} packets on the server's interface, against ${f.direct.packets} without merbridge: the payload moved socket to socket`),
    ok(f.cleanedUp, 'merbridge was disabled and the lab removed'),
    ...(f.bench
      ? [ok(f.bench.ratios.requestsPerSec > 1, `with keep-alive connections merbridge served x${f.bench.ratios.requestsPerSec.toFixed(2)} the requests per second of Istio's iptables rules, at x${f.bench.ratios.p99.toFixed(2)} their p99 latency (one short round: run merbridge bench for figures)`)]
      : []),
  ].join('\n')
}
