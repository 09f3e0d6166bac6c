import {isIPv4} from 'node:net'
import type {PodRules} from '../bpf/layout.js'
import {MerbridgeError} from '../errors.js'
import type {MeshProfile} from '../mesh/profiles.js'
import {rulesFromAnnotations} from './annotations.js'

/** The parts of a Kubernetes Pod that merbridge reads. */
export interface PodJson {
  metadata?: {name?: string; namespace?: string; annotations?: Record<string, string>}
  spec?: {
    nodeName?: string
    hostNetwork?: boolean
    containers?: {name?: string}[]
    initContainers?: {name?: string; restartPolicy?: string}[]
  }
  status?: {phase?: string; podIP?: string; podIPs?: {ip?: string}[]}
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

/** Parse `kubectl get pods -o json` output (a PodList, or a single Pod). */
export function parsePodList(text: string, source: string): PodJson[] {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (error) {
    throw new MerbridgeError(`${source} is not valid JSON: ${(error as Error).message}`, {
      code: 'BAD_PODS',
      suggestion: 'give the output of `kubectl get pods -A -o json`',
    })
  }
  const obj = doc as {kind?: string; items?: unknown}
  if (obj && obj.kind === 'Pod') return [obj as PodJson]
  if (!obj || typeof obj !== 'object' || !Array.isArray(obj.items))
    throw new MerbridgeError(`${source} is not a Kubernetes PodList (no "items" array)`, {
      code: 'BAD_PODS',
      suggestion: 'give the output of `kubectl get pods -A -o json`',
    })
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
export function selectMeshedPods(pods: PodJson[], node: string, mesh: MeshProfile): PodSelection {
  const out: PodSelection = {meshed: [], skipped: [], otherNodes: 0}
  for (const pod of pods) {
    if (!pod || typeof pod !== 'object') continue
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
    if (pod.spec?.hostNetwork) {
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
    const annotations = Object.fromEntries(
      Object.entries(pod.metadata?.annotations ?? {}).filter((e): e is [string, string] => typeof e[1] === 'string'),
    )
    const {rules, warnings} = rulesFromAnnotations(annotations, mesh)
    out.meshed.push({namespace, name, ip, rules, warnings: warnings.map((w) => `${namespace}/${name}: ${w}`)})
  }
  return out
}
