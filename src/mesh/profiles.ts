/** What merbridge needs to know about a mesh's sidecar: who it runs as, where it listens, how pods show it. */
export interface MeshProfile {
  name: string
  sidecarUid: number
  sidecarGid: number
  outboundPort: number
  inboundPort: number
  /** the proxy's DNS listener for pods that capture DNS (Istio's agent), 0 when the mesh has none */
  dnsPort: number
  /** the injected proxy container */
  sidecarContainer: string
  /** the init container that installs the mesh's rules without its CNI; its arguments are what it applied */
  initContainer: string
  /** present on pods whose sidecar was injected */
  injectedAnnotation: string
  /** how the pod asks for its traffic to be intercepted (REDIRECT, TPROXY, NONE) */
  interceptionModeAnnotation: string
  /** the mesh's own inbound ports, never captured (Istio: HBONE, telemetry, health, agent) */
  reservedInboundPorts: number[]
  /** of those, the one never captured even where a pod lists the ports it captures (Istio's HBONE port: the datapath's MB_HBONE_PORT) */
  tunnelPort: number
}

export const PROFILES: Record<string, MeshProfile> = {
  istio: {
    name: 'istio',
    sidecarUid: 1337,
    sidecarGid: 1337,
    outboundPort: 15001,
    inboundPort: 15006,
    dnsPort: 15053,
    sidecarContainer: 'istio-proxy',
    initContainer: 'istio-init',
    injectedAnnotation: 'sidecar.istio.io/status',
    interceptionModeAnnotation: 'sidecar.istio.io/interceptionMode',
    reservedInboundPorts: [15008, 15090, 15021, 15020],
    tunnelPort: 15008,
  },
}

export const MESH_NAMES = Object.keys(PROFILES)

export function meshProfile(name: string): MeshProfile {
  const p = PROFILES[name]
  if (!p) throw new Error(`unknown mesh '${name}' (known: ${MESH_NAMES.join(', ')})`)
  return p
}
