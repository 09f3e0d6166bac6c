import {isIPv4, isIPv6} from 'node:net'
import {load as loadYaml} from 'js-yaml'
import {canonicalIp, notAPodAddress} from '../bpf/ip.js'
import type {PodRules} from '../bpf/layout.js'
import {MerbridgeError} from '../errors.js'
import type {MeshProfile} from '../mesh/profiles.js'
import {printable} from '../text.js'
import {ANNOTATIONS, interfacesFromAnnotations, rulesFromAnnotations} from './annotations.js'
import {goBool, istioInitSettings} from './istio-init.js'

/** The parts of a Kubernetes Pod that merbridge reads. */
export interface PodJson {
  // as found in a pods file: entries may be null and YAML may give numbers where the API has strings
  metadata?: {
    name?: string
    namespace?: string
    annotations?: Record<string, unknown>
    labels?: Record<string, unknown>
    deletionTimestamp?: unknown
  }
  spec?: {
    nodeName?: string
    hostNetwork?: boolean
    containers?: (ContainerJson | null)[]
    initContainers?: (ContainerJson | null)[]
    securityContext?: {runAsUser?: unknown; runAsGroup?: unknown}
    hostUsers?: unknown
  }
  status?: {phase?: string; podIP?: string; podIPs?: ({ip?: string} | null)[]}
}

interface ContainerJson {
  name?: string
  restartPolicy?: string
  command?: unknown
  args?: unknown
  env?: unknown
  securityContext?: {runAsUser?: unknown; runAsGroup?: unknown}
}

export interface MeshedPod {
  namespace: string
  name: string
  ip: string
  /** the IPv6 address of a dual-stack pod */
  ip6?: string
  /** its proxy captures DNS: the resolvers come from the pod's resolv.conf, read on the node */
  dnsCapture: boolean
  /** ... to any address on port 53 (Istio's CNI, or istio-init told --capture-all-dns): no resolv.conf to read */
  dnsToAny: boolean
  rules: Omit<PodRules, 'dns'>
  /** interfaces Istio excludes from capture (excludeInterfaces): tc stays off them */
  noInboundCapture: string[]
  warnings: string[]
}

/** Why a pod is skipped, as a short code (a metric label: few values, whatever the pods hold). */
export type SkipCode =
  | 'no-sidecar'
  | 'ambient'
  | 'gateway'
  | 'intercepts-nothing'
  | 'tproxy'
  | 'unknown-mode'
  | 'other-ports'
  | 'user-namespace'
  | 'host-network'
  | 'finished'
  | 'no-ip'
  | 'shared-ip'
  | 'reused-ip'

export interface PodSelection {
  meshed: MeshedPod[]
  skipped: {namespace: string; name: string; reason: string; code: SkipCode; ip?: string}[]
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
  // an item that is no pod is a damaged file, never "no pods": a sync would unregister them all
  const junk = (obj.items as unknown[]).findIndex(
    (item) => item === null || typeof item !== 'object' || Array.isArray(item) || typeof (item as PodJson).metadata?.name !== 'string',
  )
  if (junk >= 0)
    throw new MerbridgeError(
      `${source}: item ${junk} of "items" is not a pod (${printable(JSON.stringify((obj.items as unknown[])[junk]), 60)})`,
      BAD_PODS,
    )
  return obj.items as PodJson[]
}

/** The injected proxy containers, if the pod has any (Kubernetes native sidecars are init containers that keep running). */
function proxyContainers(pod: PodJson, mesh: MeshProfile): ContainerJson[] {
  if (pod.metadata?.annotations?.[mesh.injectedAnnotation] === undefined) return []
  const list = (v: unknown) => (Array.isArray(v) ? (v as (ContainerJson | null)[]) : [])
  return [
    ...list(pod.spec?.containers).filter((c): c is ContainerJson => c?.name === mesh.sidecarContainer),
    ...list(pod.spec?.initContainers).filter((c): c is ContainerJson => c?.name === mesh.sidecarContainer && c.restartPolicy === 'Always'),
  ]
}

/** The init container that installed the mesh's rules (none with Istio's CNI: its istio-validation only checks them). */
function initContainer(pod: PodJson, mesh: MeshProfile): ContainerJson | undefined {
  const list = Array.isArray(pod.spec?.initContainers) ? pod.spec.initContainers : []
  return list.find((c): c is ContainerJson => c?.name === mesh.initContainer) ?? undefined
}

/** Why a pod with a proxy is still not a sidecar pod for the datapath, if it is not. */
/**
 * Why a pod is Istio's ambient mode's, not a sidecar's: its traffic goes to ztunnel, whose in-pod
 * listener is on 15001 too, so capturing it would loop or break it. Istio's CNI marks the pods it
 * enrolled (ambient.istio.io/redirection: enabled); a pod labelled for ambient with no sidecar is
 * one too. A pod with a sidecar and only the label keeps its sidecar, as ztunnel leaves it alone.
 */
function ambientMode(pod: PodJson, hasSidecar: boolean): string | undefined {
  if (pod.metadata?.annotations?.['ambient.istio.io/redirection'] === 'enabled')
    return 'enrolled in ambient mode (ambient.istio.io/redirection: enabled): ztunnel captures it, not a sidecar'
  if (!hasSidecar && pod.metadata?.labels?.['istio.io/dataplane-mode'] === 'ambient')
    return 'an ambient pod (istio.io/dataplane-mode=ambient): ztunnel captures it, not a sidecar'
  return undefined
}

function notASidecar(mode: unknown, proxy: ContainerJson): {reason: string; code: SkipCode} | undefined {
  // a gateway runs the proxy as a router: no interception, whatever its annotations
  if (Array.isArray(proxy.args) && proxy.args.includes('router'))
    return {reason: 'a gateway (the proxy runs as a router): no interception', code: 'gateway'}
  if (mode === undefined || mode === 'REDIRECT') return undefined
  if (mode === 'NONE') return {reason: 'interceptionMode NONE: the proxy intercepts nothing', code: 'intercepts-nothing'}
  if (mode === 'TPROXY') return {reason: 'interceptionMode TPROXY is not supported by merbridge: left to istio-init', code: 'tproxy'}
  return {reason: `interceptionMode ${JSON.stringify(mode).slice(0, 40)} is unknown: left alone`, code: 'unknown-mode'}
}

const DNS_CAPTURE_KEY = 'ISTIO_META_DNS_CAPTURE'
const DUAL_STACK_KEY = 'ISTIO_DUAL_STACK'
/** the proxy's status port, which Istio's CNI excludes outbound by default */
const CNI_EXCLUDED_OUTBOUND_PORT = 15020
const PROXY_CONFIG_ANNOTATION = 'proxy.istio.io/config'

/**
 * A switch of the proxy's metadata (ISTIO_META_DNS_CAPTURE, ISTIO_DUAL_STACK): the proxy
 * container's env, or the same key in the pod's proxy.istio.io/config proxyMetadata (which the
 * injector copies into that env; a pods file may carry only the annotation).
 */
function proxySwitch(pod: PodJson, proxy: ContainerJson, key: string, what: string): {on: boolean; warning?: string} {
  const env = Array.isArray(proxy.env) ? (proxy.env as unknown[]) : []
  const fromEnv = env.find(
    (e): e is {name: string; value?: unknown} => !!e && typeof e === 'object' && (e as {name?: unknown}).name === key,
  )
  const raw = pod.metadata?.annotations?.[PROXY_CONFIG_ANNOTATION]
  if (typeof raw === 'string' && raw.includes(key)) {
    try {
      const doc = loadYaml(raw.slice(0, 64 * 1024)) as {proxyMetadata?: Record<string, unknown>} | null
      const v = goBool(doc?.proxyMetadata?.[key])
      if (v !== undefined) return {on: v}
    } catch {
      return {
        on: goBool(fromEnv?.value) ?? false,
        warning: `${PROXY_CONFIG_ANNOTATION} is not valid YAML; ${what} taken from the proxy's ${key} alone`,
      }
    }
  }
  return {on: goBool(fromEnv?.value) ?? false}
}

/**
 * The proxy's user or group id as Istio's CNI reads it: the proxy container's own runAsUser or
 * runAsGroup, where none or 0 means the mesh's default. istio-init is told the injector's ids,
 * which that container carries, and a proxy the injector runs as root (TPROXY, capNetBindService)
 * stays in group 1337 and is known by it. Root is never the proxy's user, nor is the pod-level
 * securityContext read: processes of the app running as either must not pass for the proxy.
 */
function proxyId(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 2 ** 32 ? v : fallback
}

/**
 * Every address the pod's status gives, in one spelling each (an IPv4-mapped IPv6 address is its
 * IPv4 address: the maps hold both in the same slot), else as given (a pods file may hold anything).
 */
function statusIPs(pod: PodJson): unknown[] {
  const podIPs = Array.isArray(pod.status?.podIPs) ? pod.status.podIPs : []
  const given = [pod.status?.podIP, ...podIPs.map((p) => (p && typeof p === 'object' ? p.ip : p))].filter(
    (ip) => ip !== undefined && ip !== '',
  )
  return [...new Set(given.map((ip) => (typeof ip === 'string' ? (canonicalIp(ip) ?? ip) : ip)))]
}

/** An address a pod can have as its own. */
const podAddress = (ip: unknown): ip is string => typeof ip === 'string' && (isIPv4(ip) || isIPv6(ip)) && notAPodAddress(ip) === undefined

function podIPv4(pod: PodJson): string | undefined {
  return statusIPs(pod).find((ip): ip is string => podAddress(ip) && isIPv4(ip))
}

function podIPv6(pod: PodJson): string | undefined {
  return statusIPs(pod).find((ip): ip is string => podAddress(ip) && isIPv6(ip))
}

/** Addresses in the status that are not IP addresses, or none a pod can have, printed safely with why. */
function badIPs(pod: PodJson): string[] {
  return statusIPs(pod)
    .filter((ip) => !podAddress(ip))
    .map((ip) => {
      const why = typeof ip === 'string' && (isIPv4(ip) || isIPv6(ip)) ? notAPodAddress(ip) : undefined
      return `${printable(JSON.stringify(ip), 60)}${why ? `: ${why}` : ''}`
    })
}

/** This node's pods, split into the meshed ones (with their rules) and the rest (with why). */
export function selectMeshedPods(pods: readonly unknown[], node: string, mesh: MeshProfile): PodSelection {
  const out: PodSelection = {meshed: [], skipped: [], otherNodes: 0}
  const byIp = new Map<string, MeshedPod>()
  // a terminating pod's address may already be a new pod's: the new one, meshed or not, owns it
  const live = new Map<string, string>()
  for (const item of pods) {
    const pod = item as PodJson | null
    if (!pod || typeof pod !== 'object' || pod.spec?.nodeName !== node || pod.metadata?.deletionTimestamp || pod.spec.hostNetwork) continue
    if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue
    const id = `${typeof pod.metadata?.namespace === 'string' ? printable(pod.metadata.namespace, 253) : 'default'}/${typeof pod.metadata?.name === 'string' ? printable(pod.metadata.name, 253) : '(unnamed)'}`
    for (const ip of [podIPv4(pod), podIPv6(pod)]) if (ip !== undefined) live.set(ip, id)
  }
  for (const item of pods) {
    if (!item || typeof item !== 'object') continue
    const pod = item as PodJson
    if (pod.spec?.nodeName !== node) {
      out.otherNodes++
      continue
    }
    // names are printed and recorded: a pods file may hold anything where the API has DNS names
    const namespace = typeof pod.metadata?.namespace === 'string' ? printable(pod.metadata.namespace, 253) : 'default'
    const name = typeof pod.metadata?.name === 'string' ? printable(pod.metadata.name, 253) : '(unnamed)'
    const anyIp = podIPv4(pod) ?? podIPv6(pod)
    const skip = (reason: string, code: SkipCode) => out.skipped.push({namespace, name, reason, code, ...(anyIp ? {ip: anyIp} : {})})
    const proxies = proxyContainers(pod, mesh)
    const proxy = proxies[0]
    const ambient = ambientMode(pod, proxy !== undefined)
    if (ambient) {
      skip(ambient, 'ambient')
      continue
    }
    if (!proxy) {
      skip(`no injected ${mesh.sidecarContainer} sidecar`, 'no-sidecar')
      continue
    }
    // YAML input may carry numbers (a port) where the API always has strings
    const podAnnotations = Object.fromEntries(
      Object.entries(pod.metadata?.annotations ?? {})
        .filter(([, v]) => typeof v === 'string' || typeof v === 'number')
        .map(([k, v]) => [k, String(v)]),
    )
    // without Istio's CNI, what istio-init was told is the pod's specification
    const init = istioInitSettings(initContainer(pod, mesh), {uid: mesh.sidecarUid})
    const initError = init && 'error' in init ? init.error : undefined
    const told = init && !('error' in init) ? init : undefined
    const why = notASidecar(told?.interceptionMode ?? pod.metadata?.annotations?.[mesh.interceptionModeAnnotation], proxy)
    if (why) {
      skip(why.reason, why.code)
      continue
    }
    // the datapath sends to the mesh profile's listeners; a mesh configured with others would see
    // every connection of the pod refused, where istio-init's own rules still capture it
    if (told && (told.ports.outbound !== String(mesh.outboundPort) || told.ports.inbound !== String(mesh.inboundPort))) {
      skip(
        `istio-init sends to ports ${printable(told.ports.outbound, 8)}/${printable(told.ports.inbound, 8)} (the mesh config's), merbridge to ${mesh.outboundPort}/${mesh.inboundPort}: left to istio-init`,
        'other-ports',
      )
      continue
    }
    // the datapath compares the caller's uid as the node sees it: in a user namespace the proxy's
    // 1337 is another id, so its own connects would be sent back to itself
    if (pod.spec.hostUsers === false) {
      skip(
        'runs in a user namespace (hostUsers: false): merbridge cannot recognise its proxy by uid yet; left to istio-init',
        'user-namespace',
      )
      continue
    }
    if (pod.spec.hostNetwork) {
      skip('uses the host network', 'host-network')
      continue
    }
    if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') {
      skip(`finished (${pod.status.phase})`, 'finished')
      continue
    }
    // an IPv6-only pod is known by its IPv6 address, as a dual-stack one by its IPv4 address
    const ip = podIPv4(pod) ?? podIPv6(pod)
    const bad = [...new Set(badIPs(pod))]
    if (!ip) {
      skip(bad.length > 0 ? `has no valid IP address (status gives ${bad.slice(0, 2).join(', ')})` : 'has no IP address yet', 'no-ip')
      continue
    }
    const successor = pod.metadata?.deletionTimestamp ? live.get(ip) : undefined
    if (successor !== undefined) {
      skip(`terminating, and its IP ${ip} is now ${successor}'s`, 'reused-ip')
      continue
    }
    const owner = byIp.get(ip)
    if (owner) {
      // one address names one pod on a node: the maps hold one entry for it
      skip(`has the IP ${ip} of ${owner.namespace}/${owner.name}, registered first`, 'shared-ip')
      owner.warnings.push(`${owner.namespace}/${owner.name}: ${namespace}/${name} claims the same IP ${ip} (left unregistered)`)
      continue
    }
    // Istio's CNI excludes outbound 15020 when the pod names no excluded outbound port
    const cniDefaults: Record<string, string> =
      init === undefined && podAnnotations[ANNOTATIONS.excludeOutboundPorts] === undefined
        ? {[ANNOTATIONS.excludeOutboundPorts]: String(CNI_EXCLUDED_OUTBOUND_PORT)}
        : {}
    const annotations: Record<string, string> = {...podAnnotations, ...cniDefaults, ...told?.annotations}
    const {rules, warnings} = rulesFromAnnotations(annotations, mesh)
    const interfaces = interfacesFromAnnotations(annotations)
    warnings.push(...interfaces.warnings, ...(told?.warnings ?? []))
    // its annotations never capture less than any arguments the injector could have written
    if (initError !== undefined)
      warnings.push(`${mesh.initContainer}'s arguments cannot be read (${initError}); its annotations are used instead`)
    const proxyUid = told?.proxyUid ?? proxyId(proxy.securityContext?.runAsUser, mesh.sidecarUid)
    const proxyGid = told?.proxyGid ?? proxyId(proxy.securityContext?.runAsGroup, mesh.sidecarGid)
    const dns = proxySwitch(pod, proxy, DNS_CAPTURE_KEY, 'DNS capture')
    if (dns.warning) warnings.push(dns.warning)
    // istio-iptables writes ip6tables rules only for a pod whose first address is IPv6, or with
    // ISTIO_DUAL_STACK and an IPv6 address: without them its native IPv6 is not captured at all
    const dualStack = told?.dualStack ?? proxySwitch(pod, proxy, DUAL_STACK_KEY, 'dual stack').on
    const noIpv6 = !(podIPv6(pod) !== undefined && (podIPv4(pod) === undefined || dualStack))
    // its IPv6 address is then nobody's to capture: not registered
    const ip6 = ip === podIPv4(pod) && !noIpv6 ? podIPv6(pod) : undefined
    const dnsOn = told?.redirectDns ?? dns.on
    // Istio's CNI captures DNS to any address (its CaptureAllDNS follows DNS capture); istio-init
    // only to resolv.conf's servers unless told otherwise. Unread arguments: any address (fail closed)
    const dnsToAny = dnsOn && (told ? told.captureAllDns : true)
    if (bad.length > 0) warnings.push(`status lists addresses that are not IPs (${bad.slice(0, 2).join(', ')}); registered as ${ip}`)
    if (proxies.length > 1)
      warnings.push(`has ${proxies.length} ${mesh.sidecarContainer} containers; the first one's user, group and DNS setting are used`)
    const meshedPod: MeshedPod = {
      namespace,
      name,
      ip,
      ...(ip6 ? {ip6} : {}),
      dnsCapture: dnsOn,
      dnsToAny,
      rules: {
        ...rules,
        proxyUid,
        proxyGid,
        ...(noIpv6 ? {noIpv6} : {}),
        ...(told?.ownerGroups ? {ownerGroups: told.ownerGroups} : {}),
        ...(told?.loopback ? {loopback: told.loopback} : {}),
      },
      noInboundCapture: interfaces.noInboundCapture,
      warnings: warnings.map((w) => `${namespace}/${name}: ${w}`),
    }
    out.meshed.push(meshedPod)
    byIp.set(ip, meshedPod)
  }
  return out
}
