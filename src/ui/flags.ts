import {Flags} from '@oclif/core'
import {DEFAULT_BPFFS_DIR} from '../paths.js'

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
