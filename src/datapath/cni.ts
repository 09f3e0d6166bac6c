/**
 * CNI mode: the agent's side of merbridge-cni (bpf/tools/merbridge-cni.c). The container runtime
 * runs the plugin while it sets up a pod's network, before any container starts; the plugin hands
 * the call to the agent over a unix socket only root can open, and the agent answers once the pod
 * is registered in the namespace the runtime gave (or says why not: the pod does not start).
 */
import {existsSync, lstatSync, mkdirSync, rmSync} from 'node:fs'
import {createConnection, createServer, type Server, type Socket} from 'node:net'
import {dirname, join} from 'node:path'
import {MerbridgeError} from '../errors.js'
import {hostProc} from '../paths.js'
import {type PodJson, selectMeshedPods} from '../kube/pods.js'
import type {MeshProfile} from '../mesh/profiles.js'
import type {CniPod} from './installation.js'
import {type AppliedPods, podKey, withAddresses} from './sync.js'

export interface CniRequest {
  command: 'ADD' | 'DEL' | 'CHECK'
  containerId: string
  netns: string
  ifname: string
  /** CNI_ARGS: K=V;K=V */
  args: string
  /** the network configuration the runtime gave the plugin, as text */
  config: string
}

export interface CniAnswer {
  /** the plugin's exit status */
  code: number
  stdout: string
}

/** CNI's error codes used here (the specification's well-known ones). */
export const CNI_ERRORS = {invalidConfig: 7, tryAgainLater: 11} as const

const MAX_REQUEST_BYTES = 8 * 2 ** 20

export function parseCniRequest(text: string): CniRequest {
  const r = JSON.parse(text) as Partial<Record<keyof CniRequest, unknown>>
  const field = (k: keyof CniRequest) => {
    const v = r[k]
    return typeof v === 'string' ? v : ''
  }
  const command = field('command')
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') throw new Error(`unknown CNI_COMMAND ${JSON.stringify(command)}`)
  return {
    command,
    containerId: field('containerId'),
    netns: field('netns'),
    ifname: field('ifname'),
    args: field('args'),
    config: field('config'),
  }
}

/** CNI_ARGS as a map (K8S_POD_NAMESPACE, K8S_POD_NAME, ...). */
export function cniArgs(args: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const pair of args.split(';')) {
    const at = pair.indexOf('=')
    if (at > 0) out.set(pair.slice(0, at), pair.slice(at + 1))
  }
  return out
}

export interface CniConfig {
  cniVersion: string
  prevResult?: {ips?: {address?: string}[]} & Record<string, unknown>
}

export function parseCniConfig(text: string): CniConfig {
  const c = JSON.parse(text) as Partial<CniConfig>
  if (typeof c.cniVersion !== 'string') throw new Error('the network configuration has no cniVersion')
  return {cniVersion: c.cniVersion, ...(c.prevResult && typeof c.prevResult === 'object' ? {prevResult: c.prevResult} : {})}
}

/** The pod's addresses, from the result of the plugins before this one. */
export function resultAddresses(config: CniConfig): string[] {
  return (config.prevResult?.ips ?? []).map((i) => (typeof i.address === 'string' ? i.address.replace(/\/\d+$/, '') : '')).filter(Boolean)
}

export function cniError(code: number, msg: string, details = '', cniVersion = '1.0.0'): CniAnswer {
  return {code: 1, stdout: JSON.stringify({cniVersion, code, msg, details}) + '\n'}
}

/** A chained plugin that changes no interface passes the previous result on, in the call's version. */
export function passThrough(config: CniConfig): CniAnswer {
  return {code: 0, stdout: JSON.stringify({...config.prevResult, cniVersion: config.cniVersion}) + '\n'}
}

/**
 * Listen on `path` (its folder made root-only) and answer each call with `handle`. A socket file
 * left by an agent that is gone is replaced; a live one, or anything that is not a socket, is not.
 */
export async function serveCni(path: string, handle: (req: CniRequest) => Promise<CniAnswer>): Promise<Server> {
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket())
      throw new MerbridgeError(`--cni-socket ${path} exists and is not a socket`, {
        code: 'BAD_INPUT',
        exitCode: 2,
        suggestion: 'give a path under /run for the socket',
      })
    if (await answers(path))
      throw new MerbridgeError(`another agent already serves CNI calls at ${path}`, {
        code: 'CNI_SOCKET_BUSY',
        exitCode: 2,
        suggestion: 'stop it, or give another --cni-socket',
      })
    rmSync(path)
  }
  mkdirSync(dirname(path), {recursive: true, mode: 0o700})
  // half open: the plugin ends its call before it reads the answer
  const server = createServer({allowHalfOpen: true}, (sock) => void answer(sock, handle))
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    // only root may connect: the socket itself, and the folder it is made in
    const old = process.umask(0o177)
    server.listen(path, () => {
      process.umask(old)
      resolve()
    })
  })
  server.on('close', () => rmSync(path, {force: true}))
  return server
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path)
    c.once('connect', () => {
      c.destroy()
      resolve(true)
    })
    c.once('error', () => resolve(false))
  })
}

async function answer(sock: Socket, handle: (req: CniRequest) => Promise<CniAnswer>): Promise<void> {
  // events, not an async iterator: one ending its loop would destroy the socket before the answer
  const text = await new Promise<string | undefined>((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    sock.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > MAX_REQUEST_BYTES) {
        sock.destroy()
        resolve(undefined)
      } else chunks.push(chunk)
    })
    sock.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    sock.on('error', () => resolve(undefined))
  })
  if (text === undefined) return
  let reply: CniAnswer
  try {
    reply = await handle(parseCniRequest(text))
  } catch (error) {
    reply = cniError(CNI_ERRORS.invalidConfig, 'merbridge could not read the call', (error as Error).message)
  }
  sock.end(`${reply.code}\n${reply.stdout}`)
}

/** What a CNI call needs of the watch loop that serves it. */
export interface CniAgent {
  node: string
  mesh: MeshProfile
  /** by namespace/name: pods whose namespace the runtime named; every sync keeps them there */
  pinned: Map<string, CniPod>
  /** the pod as the watch knows it, waiting a while for one it does not know yet */
  findPod: (namespace: string | undefined, name: string) => Promise<PodJson | undefined>
  /** a sync of the maps with the pinned pods as they are when it starts */
  sync: () => Promise<void>
  applied: () => AppliedPods | undefined
  log: (line: string, event?: Record<string, unknown>) => void
}

const registeredNow = (agent: CniAgent, key: string) =>
  agent.applied()?.sync.meshed.some((p) => `${p.namespace}/${p.name}` === key) === true

/**
 * One call of merbridge-cni. ADD answers with the previous result once the pod is registered in
 * the runtime's namespace and its inbound capture attached, or fails (the runtime retries, the pod
 * does not start); DEL forgets the pod's namespace; CHECK says whether it is still registered
 * there. Pods that are not meshed pass through.
 */
export async function handleCni(call: CniRequest, agent: CniAgent): Promise<CniAnswer> {
  const started = performance.now()
  // a runtime that names the sandbox by a process (/proc/PID/ns/net) names the node's /proc
  const req = call.netns.startsWith('/proc/') ? {...call, netns: join(hostProc(), call.netns.slice('/proc/'.length))} : call
  let config: CniConfig
  try {
    config = parseCniConfig(req.config)
  } catch (error) {
    return cniError(CNI_ERRORS.invalidConfig, 'merbridge-cni: the network configuration does not parse', (error as Error).message)
  }
  const args = cniArgs(req.args)
  const name = args.get('K8S_POD_NAME')
  const namespace = args.get('K8S_POD_NAMESPACE')
  if (req.command === 'DEL') {
    // the sandbox goes: its namespace is no pod's any more
    const keys = [...agent.pinned]
      .filter(([k, v]) => v.netns === req.netns || (name !== undefined && k === `${namespace ?? 'default'}/${name}`))
      .map(([k]) => k)
    for (const k of keys) agent.pinned.delete(k)
    if (keys.length > 0) await agent.sync()
    return {code: 0, stdout: ''}
  }
  if (!name) return cniError(CNI_ERRORS.invalidConfig, 'merbridge-cni: CNI_ARGS names no pod (K8S_POD_NAME)', req.args, config.cniVersion)
  const pod = await agent.findPod(namespace, name)
  if (!pod)
    return cniError(
      CNI_ERRORS.tryAgainLater,
      `merbridge-cni: pod ${namespace ?? '?'}/${name} of node ${agent.node} is not known to the agent yet`,
      'the watch has not seen it: the runtime retries',
      config.cniVersion,
    )
  const key = podKey(pod)
  const ips = resultAddresses(config)
  // not meshed, or skipped: nothing to capture
  if (selectMeshedPods([withAddresses(pod, ips)], agent.node, agent.mesh).meshed.length === 0) return passThrough(config)
  if (req.command === 'CHECK') {
    if (agent.pinned.get(key)?.netns === req.netns && registeredNow(agent, key)) return {code: 0, stdout: ''}
    return cniError(CNI_ERRORS.tryAgainLater, `merbridge-cni: pod ${key} is not registered in ${req.netns}`, '', config.cniVersion)
  }
  if (!req.netns)
    return cniError(CNI_ERRORS.invalidConfig, 'merbridge-cni: the call names no network namespace (CNI_NETNS)', '', config.cniVersion)
  if (!existsSync(req.netns))
    return cniError(
      CNI_ERRORS.tryAgainLater,
      `merbridge-cni: the agent cannot see ${req.netns}, the namespace of pod ${key}`,
      "in a container it needs the node's /var/run/netns mounted (deploy/merbridge.yaml)",
      config.cniVersion,
    )
  agent.pinned.set(key, {netns: req.netns, ips})
  await agent.sync()
  const tcFailed = agent.applied()?.sync.nodeWarnings.find((w) => w.startsWith(`${key}: inbound capture not attached`))
  if (registeredNow(agent, key) && !tcFailed) {
    // what the pod's start waits for here: the plugin's own start adds about a millisecond
    const ms = Math.round((performance.now() - started) * 10) / 10
    agent.log(`cni: ${key} registered in ${req.netns} before its first container (${ms} ms)`, {
      event: 'cni-add',
      pod: key,
      netns: req.netns,
      ms,
    })
    return passThrough(config)
  }
  agent.pinned.delete(key)
  await agent.sync()
  return cniError(
    CNI_ERRORS.tryAgainLater,
    `merbridge-cni: pod ${key} could not be registered`,
    tcFailed ?? 'the last sync failed: see the agent log',
    config.cniVersion,
  )
}
