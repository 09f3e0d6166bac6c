import {readFile} from 'node:fs/promises'
import {MerbridgeError} from '../errors.js'
import {run} from '../node/exec.js'

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * The pods list as text, and where it came from: a file, standard input ('-'), or, with neither,
 * `kubectl get pods` for this node.
 */
export async function readPodsText(podsFile: string | undefined, node: string): Promise<{text: string; source: string}> {
  if (podsFile === '-') return {text: await readStdin(), source: 'standard input'}
  if (podsFile) {
    try {
      return {text: await readFile(podsFile, 'utf8'), source: podsFile}
    } catch (error) {
      throw new MerbridgeError(`cannot read the pods file ${podsFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, {
        code: 'BAD_PODS',
        suggestion: 'give a file written by `kubectl get pods -A -o json`, or - for standard input',
      })
    }
  }
  const r = await run('kubectl', ['get', 'pods', '--all-namespaces', '--field-selector', `spec.nodeName=${node}`, '-o', 'json'], {allowFailure: true, timeoutMs: 30_000})
  if (r.exitCode !== 0)
    throw new MerbridgeError(`kubectl could not list the pods of node ${node}: ${r.stderr.split('\n').find(Boolean) ?? `exit ${r.exitCode}`}`, {
      code: 'KUBE_UNREACHABLE',
      suggestion: 'check kubectl access to the cluster, or pass --pods-file with the output of `kubectl get pods -A -o json`',
    })
  return {text: r.stdout, source: `kubectl (node ${node})`}
}
