import {isIPv4} from 'node:net'
import type {PodRules} from '../bpf/layout.js'
import {MerbridgeError} from '../errors.js'
import type {MeshProfile} from '../mesh/profiles.js'
import {rulesFromAnnotations} from './annotations.js'

/** The parts of a Kubernetes Pod that merbridge reads. */
export interface PodJson {
  // as found in a pods file: entries may be null and YAML may give numbers where the API has strings
  metadata?: {name?: string; namespace?: string; annotations?: Record<string, unknown>}
  spec?: {
    nodeName?: string
    hostNetwork?: boolean
    containers?: ({name?: string} | null)[]
    initContainers?: ({name?: string; restartPolicy?: string} | null)[]
  }
  status?: {phase?: string; podIP?: string; podIPs?: ({ip?: string} | null)[]}
}

export interface MeshedPod {
  namespace: string
  name: string
  ip: string
  rules: PodRules
  warnings: string[]
}

export interface PodSelection {
  meshed: MeshedPod[]
  skipped: {namespace: string; name: string; reason: string; ip?: string}[]
  /** pods of other nodes are not counted as skipped */
  otherNodes: number
}

const BAD_PODS = {code: 'BAD_PODS', suggestion: 'give the output of `kubectl get pods -A -o json` (or -o yaml)'}

/** Parse `kubectl get pods -o json` (or `-o yaml`) output: a PodList, or a single Pod. */
export async function parsePodList(text: string, source: string): Promise<PodJson[]> {
  let doc: unknown
  const trimmed = text.trimStart()
  if (trimmed.startsWith('{') || trimmed.startsWith('[') || trimmed === '') {
    try {
      doc = JSON.parse(text)
    } catch (error) {
      throw new MerbridgeError(`${source} is not valid JSON: ${(error as Error).message}`, BAD_PODS)
    }
  } else {
    const yaml = await import('js-yaml') // only for YAML input
    try {
      doc = yaml.load(text)
    } catch (error) {
      throw new MerbridgeError(`${source} is not valid JSON or YAML: ${(error as Error).message.split('\n')[0]}`, BAD_PODS)
    }
  }
  const obj = (doc !== null && typeof doc === 'object' ? doc : {}) as {kind?: string; items?: unknown}
  if (obj.kind === 'Pod') return [obj as PodJson]
  if (!Array.isArray(obj.items)) throw new MerbridgeError(`${source} is not a Kubernetes PodList (no "items" array)`, BAD_PODS)
  return obj.items as PodJson[]
}

function hasSidecar(pod: PodJson, mesh: MeshProfile): boolean {
  const inContainers = (pod.spec?.containers ?? []).some((c) => c?.name === mesh.sidecarContainer)
  // Kubernetes native sidecars: init containers that keep running
  const native = (pod.spec?.initContainers ?? []).some((c) => c?.name === mesh.sidecarContainer && c.restartPolicy === 'Always')
  return (inContainers || native) && pod.metadata?.annotations?.[mesh.injectedAnnotation] !== undefined
}

function podIPv4(pod: PodJson): string | undefined {
  const ips = [pod.status?.podIP, ...(pod.status?.podIPs ?? []).map((p) => p?.ip)]
  return ips.find((ip): ip is string => typeof ip === 'string' && isIPv4(ip))
}

/** This node's pods, split into the meshed ones (with their rules) and the rest (with why). */
export function selectMeshedPods(pods: readonly unknown[], node: string, mesh: MeshProfile): PodSelection {
  const out: PodSelection = {meshed: [], skipped: [], otherNodes: 0}
  for (const item of pods) {
    if (!item || typeof item !== 'object') continue
    const pod = item as PodJson
    if (pod.spec?.nodeName !== node) {
      out.otherNodes++
      continue
    }
    const namespace = pod.metadata?.namespace ?? 'default'
    const name = pod.metadata?.name ?? '(unnamed)'
    const skip = (reason: string) => out.skipped.push({namespace, name, reason, ...(podIPv4(pod) ? {ip: podIPv4(pod)} : {})})
    if (!hasSidecar(pod, mesh)) {
      skip(`no injected ${mesh.sidecarContainer} sidecar`)
      continue
    }
    if (pod.spec.hostNetwork) {
      skip('uses the host network')
      continue
    }
    if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') {
      skip(`finished (${pod.status.phase})`)
      continue
    }
    const ip = podIPv4(pod)
    if (!ip) {
      skip('has no IPv4 address yet')
      continue
    }
    // YAML input may carry numbers (a port) where the API always has strings
    const annotations = Object.fromEntries(
      Object.entries(pod.metadata?.annotations ?? {})
        .filter(([, v]) => typeof v === 'string' || typeof v === 'number')
        .map(([k, v]) => [k, String(v)]),
    )
    const {rules, warnings} = rulesFromAnnotations(annotations, mesh)
    out.meshed.push({namespace, name, ip, rules, warnings: warnings.map((w) => `${namespace}/${name}: ${w}`)})
  }
  return out
}
