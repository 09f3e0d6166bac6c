import {Flags} from '@oclif/core'
import type {Installation} from '../datapath/installation.js'
import {runWatch, type WatchOptions} from '../datapath/watch-loop.js'
import {DEFAULT_BPFFS_DIR} from '../paths.js'
import {c} from './theme.js'

/** The installation's pin folder, on every command that works on one. */
export const bpffsFlag = Flags.string({
  description: "bpffs folder of the installation (or MERBRIDGE_BPFFS; an empty one is refused)",
  // read here rather than with oclif's env option, which takes an empty value for no value: an
  // empty MERBRIDGE_BPFFS is an error (Installation says so), never the default
  default: () => Promise.resolve(process.env.MERBRIDGE_BPFFS ?? DEFAULT_BPFFS_DIR),
})

/** Flags of every command that reads this node's pods. */
export const podSourceFlags = {
  'pods-file': Flags.string({description: 'PodList JSON as `kubectl get pods -A -o json` prints it; - for standard input (default: the Kubernetes API)'}),
  kubeconfig: Flags.string({description: 'kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster service account)'}),
  context: Flags.string({description: 'kubeconfig context to use'}),
  node: Flags.string({description: "this node's Kubernetes name (default: the hostname)"}),
}

/** How often a watch reads the maps back and repairs what drifted (anything else may write them). */
export const recheckFlag = Flags.integer({
  description: 'with --watch: seconds between re-reading the maps and repairing entries that no longer match the pods',
  default: 30,
  min: 1,
})

/** Stop a long-running command cleanly on Ctrl-C and on the service manager's SIGTERM. */
export function abortOnSignals(): {signal: AbortSignal; dispose: () => void} {
  const controller = new AbortController()
  const stop = () => controller.abort()
  // `on`, not `once`: a listener still present when execa's signal-exit handler runs (a bpftool
  // child may be running) keeps that handler from re-raising the signal and killing the process
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  return {signal: controller.signal, dispose: () => (process.off('SIGINT', stop), process.off('SIGTERM', stop))}
}

/** Run the watch loop in the foreground: a line per change for people, a JSON object per line with --json. */
export async function watchInForeground(
  out: {log: (line: string) => void; json: boolean},
  inst: Installation,
  opts: Omit<WatchOptions, 'signal' | 'log'>,
): Promise<void> {
  const {signal, dispose} = abortOnSignals()
  const log = (line: string, event?: Record<string, unknown>) =>
    out.json ? process.stdout.write(JSON.stringify({time: new Date().toISOString(), ...event}) + '\n') : out.log(`${c.dim(new Date().toISOString())} ${line}`)
  try {
    await runWatch(inst, {...opts, signal, log})
  } finally {
    dispose()
  }
}
