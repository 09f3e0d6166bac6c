/**
 * mb_tc_inbound on the ingress of pod interfaces, through the tc-inbound helper (Node.js cannot
 * enter another network namespace): attached when a pod is registered, detached by disable.
 */
import {run} from '../exec.js'

export interface TcResult {
  /** namespace path -> the interfaces done there */
  done: Map<string, string[]>
  /** namespace path -> why it could not be done */
  failed: Map<string, string>
}

function parse(paths: string[], stdout: string): TcResult {
  const lines = stdout.split('\n')
  const out: TcResult = {done: new Map(), failed: new Map()}
  paths.forEach((p, i) => {
    const line = lines[i]?.trim() ?? 'error: no answer'
    if (line.startsWith('ok')) out.done.set(p, line.split(/\s+/).slice(1).map((f) => f.replace(/\+$/, '')))
    else out.failed.set(p, line.replace(/^error: /, ''))
  })
  return out
}

export async function attachInbound(helper: string, progPin: string, paths: string[]): Promise<TcResult> {
  if (paths.length === 0) return {done: new Map(), failed: new Map()}
  return parse(paths, (await run(helper, ['attach', progPin, ...paths])).stdout)
}

/**
 * Detach the program with this id wherever it is attached in these namespaces, then remove a
 * clsact qdisc left with no filter at all (the one attach added; an empty one does nothing).
 */
export async function detachInbound(helper: string, progId: number, paths: string[]): Promise<TcResult> {
  if (paths.length === 0) return {done: new Map(), failed: new Map()}
  const result = parse(paths, (await run(helper, ['detach', String(progId), ...paths])).stdout)
  for (const [path, ifaces] of result.done) {
    for (const dev of ifaces) {
      const filters = await Promise.all(
        ['ingress', 'egress'].map(async (dir) => (await run('nsenter', [`--net=${path}`, 'tc', '-j', 'filter', 'show', 'dev', dev, dir], {allowFailure: true})).stdout.trim()),
      )
      if (filters.every((f) => f === '' || f === '[]')) await run('nsenter', [`--net=${path}`, 'tc', 'qdisc', 'del', 'dev', dev, 'clsact'], {allowFailure: true})
    }
  }
  return result
}
