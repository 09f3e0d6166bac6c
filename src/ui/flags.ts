import {Flags} from '@oclif/core'
import {statfsSync} from 'node:fs'
import {resolve} from 'node:path'
import {MerbridgeError} from '../errors.js'
import {DEFAULT_BPFFS_DIR} from '../paths.js'

/** The installation's pin folder, on every command that works on one. */
export const bpffsFlag = Flags.string({
  description: 'bpffs folder of the installation (or MERBRIDGE_BPFFS; an empty one is refused)',
  // read here rather than with oclif's env option, which takes an empty value for no value: an
  // empty MERBRIDGE_BPFFS is an error (Installation says so), never the default
  default: () => Promise.resolve(process.env.MERBRIDGE_BPFFS ?? DEFAULT_BPFFS_DIR),
})

/** Flags of every command that reads this node's pods. */
export const podSourceFlags = {
  'pods-file': Flags.string({
    description: 'PodList JSON as `kubectl get pods -A -o json` prints it; - for standard input (default: the Kubernetes API)',
  }),
  kubeconfig: Flags.string({description: 'kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster service account)'}),
  context: Flags.string({description: 'kubeconfig context to use'}),
  node: Flags.string({description: "this node's Kubernetes name (default: the hostname)"}),
}

/** The one way to sync a list that names none of this node's pods while pods are registered. */
export const allowEmptyFlag = Flags.boolean({
  description:
    "sync even when the pods list names none of this node's pods and pods are registered (it unregisters them all: their traffic then skips their sidecars)",
})

/** How often a watch reads the maps back and repairs what drifted (anything else may write them). */
export const recheckFlag = Flags.integer({
  description: 'with --watch: seconds between re-reading the maps and repairing entries that no longer match the pods',
  default: 30,
  min: 1,
})

/** Where a watching node service serves Prometheus metrics and its health. */
export const metricsAddrFlag = Flags.string({
  description:
    'with --watch: serve Prometheus metrics on /metrics, and /healthz and /readyz, at HOST:PORT (e.g. 127.0.0.1:9473, or :9473 for every address)',
  env: 'MERBRIDGE_METRICS_ADDR',
})

/** The host's /proc when merbridge runs in a container that mounts it elsewhere (see paths.ts). */
export const hostProcFlag = Flags.string({
  description: "the host's /proc, where pod network namespaces are found (in a container: where the host's is mounted, e.g. /host/proc)",
  env: 'MERBRIDGE_HOST_PROC',
})

const PROC_SUPER_MAGIC = 0x9fa0

/** Make --host-proc the one every reader of pods' /proc entries uses, after checking it is a proc. */
export function useHostProc(dir: string | undefined): void {
  if (dir === undefined) return
  let isProc = false
  try {
    isProc = statfsSync(dir).type === PROC_SUPER_MAGIC
  } catch {
    // missing: said below
  }
  if (!isProc)
    throw new MerbridgeError(`--host-proc ${dir} is not a proc filesystem`, {
      code: 'USAGE',
      exitCode: 2,
      suggestion: "give the folder where the host's /proc is mounted, e.g. /host/proc",
    })
  process.env.MERBRIDGE_HOST_PROC = resolve(dir)
}
