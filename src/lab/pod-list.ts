/**
 * The lab's pods as the API server lists them, with what the injector would write for each: its
 * annotations, the proxy container and, without Istio's CNI, istio-init with its arguments.
 */
import {hostname} from 'node:os'
import type {MeshProfile} from '../mesh/profiles.js'
import {defaultCaptureOptions, type IstioCaptureOptions} from './istio-iptables.js'
import type {LabPodSpec, LabPods} from './pods.js'

/** The lab's pods as `kubectl get pods -A -o json` would list them for this node. */
export function podList(lab: LabPods, node = hostname()): string {
  const items = [...lab.pods.values()].map((p) => {
    // the proxy's metadata, which the injector gives istio-init too
    const env = [
      ...(p.dnsCapture ? [{name: 'ISTIO_META_DNS_CAPTURE', value: 'true'}] : []),
      ...(lab.dualStack && !p.noDualStack ? [{name: 'ISTIO_DUAL_STACK', value: 'true'}] : []),
    ]
    const proxy = {
      name: lab.mesh.sidecarContainer,
      ...(p.gateway ? {args: ['proxy', 'router']} : {}),
      ...(p.proxy ? {securityContext: {runAsUser: p.proxy.uid, runAsGroup: p.proxy.gid}} : {}),
      ...(env.length > 0 ? {env} : {}),
    }
    const initEnv = [...env, ...Object.entries(p.istioInit?.env ?? {}).map(([name, value]) => ({name, value}))]
    const init =
      p.meshed && p.istioInit
        ? [
            {
              name: lab.mesh.initContainer,
              args: istioInitArgs(lab.mesh, captureOptions(lab.mesh, p)),
              ...(initEnv.length > 0 ? {env: initEnv} : {}),
            },
          ]
        : []
    return {
      kind: 'Pod',
      metadata: {
        name: p.name,
        namespace: 'lab',
        annotations: {...(p.meshed ? {[lab.mesh.injectedAnnotation]: '{"containers":["istio-proxy"]}'} : {}), ...p.annotations},
      },
      spec: {
        nodeName: node,
        ...(init.length > 0 ? {initContainers: init} : {}),
        containers: [{name: 'app'}, ...(p.meshed ? [proxy] : [])],
      },
      status: {phase: 'Running', podIP: p.ip, podIPs: [{ip: p.ip}, ...(p.ip6 && p.ip6 !== p.ip ? [{ip: p.ip6}] : [])]},
    }
  })
  return JSON.stringify({apiVersion: 'v1', kind: 'List', items})
}

/** What istio-init would be told for this pod: the injector's reading of its annotations and spec. */
export function captureOptions(mesh: MeshProfile, pod: LabPodSpec, resolvers: string[] = []): IstioCaptureOptions {
  const a = {...pod.istioInit?.meshDefaults, ...pod.annotations}
  const initEnv = pod.istioInit?.env ?? {}
  const list = (key: string) =>
    (a[key] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  const ports = (key: string) => list(key).map(Number)
  const base = defaultCaptureOptions(mesh)
  const included = a['traffic.sidecar.istio.io/includeOutboundIPRanges']
  const inbound = a['traffic.sidecar.istio.io/includeInboundPorts']
  return {
    // as Istio's CNI reads the proxy container: an id of 0 (a proxy run as root) means the default
    proxyUids: pod.proxy?.uid ? [pod.proxy.uid] : base.proxyUids,
    proxyGids: pod.proxy?.gid ? [pod.proxy.gid] : base.proxyGids,
    inboundPorts: inbound === undefined || inbound.includes('*') ? '*' : ports('traffic.sidecar.istio.io/includeInboundPorts'),
    excludeInboundPorts: [...base.excludeInboundPorts, ...ports('traffic.sidecar.istio.io/excludeInboundPorts')],
    outboundCidrs: included === undefined || included.includes('*') ? '*' : list('traffic.sidecar.istio.io/includeOutboundIPRanges'),
    excludeOutboundCidrs: list('traffic.sidecar.istio.io/excludeOutboundIPRanges'),
    // Istio's CNI excludes the status port outbound when the pod names no port
    excludeOutboundPorts:
      a['traffic.sidecar.istio.io/excludeOutboundPorts'] === undefined && !pod.istioInit
        ? [15020]
        : ports('traffic.sidecar.istio.io/excludeOutboundPorts'),
    includeOutboundPorts: ports('traffic.sidecar.istio.io/includeOutboundPorts'),
    // Istio's CNI captures DNS to any address; istio-init to resolv.conf's servers
    ...(pod.dnsCapture ? {dnsServers: resolvers, captureAllDns: !pod.istioInit} : {}),
    ...(a['traffic.sidecar.istio.io/excludeInterfaces'] === undefined
      ? {}
      : {excludeInterfaces: list('traffic.sidecar.istio.io/excludeInterfaces')}),
    ...(a['istio.io/reroute-virtual-interfaces'] === undefined ? {} : {virtualInterfaces: list('istio.io/reroute-virtual-interfaces')}),
    // istio-iptables' environment-only settings, from istio-init's environment
    ...(initEnv.ISTIO_OUTBOUND_OWNER_GROUPS === undefined && initEnv.ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE === undefined
      ? {}
      : {ownerGroups: {include: initEnv.ISTIO_OUTBOUND_OWNER_GROUPS ?? '*', exclude: initEnv.ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE ?? ''}}),
    ...(initEnv.ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR === undefined ? {} : {loopbackCidr: initEnv.ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR}),
  }
}

/** The istio-init container's arguments for these options, as the injector writes them (its uid and gid for the proxy's). */
export function istioInitArgs(mesh: MeshProfile, o: IstioCaptureOptions): string[] {
  const list = (v: '*' | readonly (string | number)[]) => (v === '*' ? '*' : v.join(','))
  return [
    'istio-iptables',
    ...['-p', String(mesh.outboundPort), '-z', String(mesh.inboundPort)],
    ...['-u', list(o.proxyUids), '-g', list(o.proxyGids), '-m', 'REDIRECT'],
    ...['-i', list(o.outboundCidrs), '-x', list(o.excludeOutboundCidrs), '-b', list(o.inboundPorts), '-d', list(o.excludeInboundPorts)],
    ...(o.includeOutboundPorts.length > 0 ? ['-q', list(o.includeOutboundPorts)] : []),
    ...(o.excludeOutboundPorts.length > 0 ? ['-o', list(o.excludeOutboundPorts)] : []),
    ...(o.virtualInterfaces ? ['-k', list(o.virtualInterfaces)] : []),
    ...(o.excludeInterfaces ? ['-c', list(o.excludeInterfaces)] : []),
    '--log_output_level=default:info',
  ]
}
