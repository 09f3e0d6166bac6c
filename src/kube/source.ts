import {readFile} from 'node:fs/promises'
import {MerbridgeError} from '../errors.js'
import {type KubeOptions, type KubeTarget, listNodePods, loadKube} from './client.js'
import {parsePodList, type PodJson} from './pods.js'

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

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
    let text: string
    const source = podsFile === '-' ? 'standard input' : podsFile
    try {
      text = podsFile === '-' ? await readStdin() : await readFile(podsFile, 'utf8')
    } catch (error) {
      throw new MerbridgeError(`cannot read the pods file ${podsFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, {
        code: 'BAD_PODS',
        suggestion: 'give a file written by `kubectl get pods -A -o json`, or - for standard input',
      })
    }
    return {pods: await parsePodList(text, source), source}
  }
  const target = await loadKube(kube)
  const list = await listNodePods(target, node)
  return {pods: list.pods, source: `the Kubernetes API at ${target.server} (node ${node})`, target, resourceVersion: list.resourceVersion}
}
