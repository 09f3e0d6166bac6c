import {readInputFile, readInputStream} from '../input.js'
import {type KubeOptions, type KubeTarget, listNodePods, loadKube} from './client.js'
import {parsePodList, type PodJson} from './pods.js'

/** A PodList of 50,000 pods is about 300 MiB of JSON: far more than a node holds. */
export const MAX_PODS_FILE_BYTES = 512 * 2 ** 20

export interface LoadedPods {
  pods: PodJson[]
  source: string
  /** with the API: the target and the list's resourceVersion, to watch from */
  target?: KubeTarget
  resourceVersion?: string
}

/** The pods of this node from a file, standard input ('-'), or the Kubernetes API. */
export async function loadPods(podsFile: string | undefined, node: string, kube: KubeOptions = {}): Promise<LoadedPods> {
  if (podsFile) {
    const source = podsFile === '-' ? 'standard input' : podsFile
    const text =
      podsFile === '-'
        ? await readInputStream(process.stdin, 'the pods list on standard input', MAX_PODS_FILE_BYTES)
        : await readInputFile(podsFile, `the pods file ${podsFile}`, MAX_PODS_FILE_BYTES)
    return {pods: await parsePodList(text, source), source}
  }
  const target = await loadKube(kube)
  const list = await listNodePods(target, node)
  return {pods: list.pods, source: `the Kubernetes API at ${target.server} (node ${node})`, target, resourceVersion: list.resourceVersion}
}
