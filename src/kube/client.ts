/**
 * The Kubernetes API, for the pods of one node. Credentials are resolved the way kubectl does:
 * --kubeconfig, then KUBECONFIG, then ~/.kube/config, then the in-cluster service account. The
 * client library is imported lazily: it takes about a second to load.
 */
import {existsSync} from 'node:fs'
import {homedir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import type {KubeConfig} from '@kubernetes/client-node'
import {MerbridgeError} from '../errors.js'
import {readInputFile} from '../input.js'
import type {PodJson} from './pods.js'

export interface KubeOptions {
  kubeconfig?: string
  context?: string
}

export interface KubeTarget {
  kc: KubeConfig
  /** where the credentials came from, for messages */
  source: string
  server: string
}

const SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token'
/** A kubeconfig holds a few certificates: a megabyte is far more than any. */
const MAX_KUBECONFIG_BYTES = 2 ** 20

/** How long one request to the API may take before the command fails (MERBRIDGE_API_TIMEOUT_MS changes it). */
export function apiTimeoutMs(env = process.env): number {
  const v = Number(env.MERBRIDGE_API_TIMEOUT_MS)
  return Number.isFinite(v) && v > 0 ? v : 30_000
}

/** The request, or a one-line error once it has taken longer than the API's time. */
export async function withApiTimeout<T>(request: Promise<T>, target: KubeTarget, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const ms = apiTimeoutMs()
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          kubeError(
            `the Kubernetes API at ${target.server} did not answer ${what} within ${ms / 1000} s`,
            'check that the server address in the kubeconfig is the API server and that it is up',
            'KUBE_TIMEOUT',
          ),
        ),
      ms,
    )
  })
  try {
    return await Promise.race([request, late])
  } finally {
    clearTimeout(timer)
  }
}

function kubeError(message: string, suggestion: string, code = 'KUBE_CONFIG'): MerbridgeError {
  return new MerbridgeError(message, {code, suggestion})
}

export async function loadKube(opts: KubeOptions, env = process.env): Promise<KubeTarget> {
  const {KubeConfig} = await import('@kubernetes/client-node')
  let kc = new KubeConfig()
  let source: string
  const fromFile = async (file: string, origin: string) => {
    if (!existsSync(file)) throw kubeError(`kubeconfig ${file} (${origin}) does not exist`, 'give an existing file with --kubeconfig')
    // checked as a bounded regular file first: the client would read a FIFO or /dev/zero for ever
    const text = await readInputFile(file, `kubeconfig ${file}`, MAX_KUBECONFIG_BYTES)
    const one = new KubeConfig()
    try {
      one.loadFromString(text)
      one.makePathsAbsolute(dirname(resolve(file)))
    } catch (error) {
      throw kubeError(
        `kubeconfig ${file} does not parse: ${(error as Error).message.split('\n')[0]}`,
        'check the file with `kubectl config view --kubeconfig FILE`',
      )
    }
    return one
  }
  const home = join(env.HOME ?? homedir(), '.kube', 'config')
  if (opts.kubeconfig) {
    kc = await fromFile(opts.kubeconfig, '--kubeconfig')
    source = `${opts.kubeconfig} (--kubeconfig)`
  } else if (env.KUBECONFIG) {
    // as kubectl reads it: every file that exists, merged, the first to name a thing winning
    const files = [...new Set(env.KUBECONFIG.split(':').filter(Boolean))]
    const present = files.filter((f) => existsSync(f))
    if (present.length === 0)
      throw kubeError(
        `none of the kubeconfig files in KUBECONFIG exists (${files.join(', ')})`,
        'set KUBECONFIG to existing files, or give --kubeconfig',
      )
    kc = mergeKubeconfigs(await Promise.all(present.map((f) => fromFile(f, 'KUBECONFIG'))), KubeConfig)
    source = `${present.join(':')} (KUBECONFIG)`
  } else if (existsSync(home)) {
    kc = await fromFile(home, '~/.kube/config')
    source = `${home} (~/.kube/config)`
  } else if (env.KUBERNETES_SERVICE_HOST && existsSync(SA_TOKEN)) {
    kc.loadFromCluster()
    source = 'the in-cluster service account'
  } else
    throw kubeError(
      'no Kubernetes credentials: no --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster service account',
      'give --kubeconfig FILE, or --pods-file with the output of `kubectl get pods -A -o json`',
    )

  if (opts.context) {
    const names = kc.getContexts().map((c) => c.name)
    if (!names.includes(opts.context))
      throw kubeError(`context ${opts.context} is not in ${source}`, `known contexts: ${names.join(', ') || 'none'}`)
    kc.setCurrentContext(opts.context)
  }
  const cluster = kc.getCurrentCluster()
  if (!cluster) throw kubeError(`${source} has no current cluster`, 'set a current context, or give --context')
  // the client refuses it anyway, in words about TLS that send a user to the certificates
  if (/^http:/i.test(cluster.server) && !cluster.skipTLSVerify)
    throw kubeError(
      `the Kubernetes API at ${cluster.server} (${source}) is plain HTTP: merbridge reads pods over HTTPS only`,
      "give the API server's https:// address in the kubeconfig",
    )
  return {kc, source, server: cluster.server}
}

/**
 * Kubeconfig files merged as kubectl merges KUBECONFIG's: a cluster, user or context takes its
 * value from the first file that names it, the current context from the first file that sets one.
 */
export function mergeKubeconfigs(configs: KubeConfig[], Kc: new () => KubeConfig): KubeConfig {
  const pick = <T extends {name: string}>(lists: T[][]) => {
    const seen = new Map<string, T>()
    for (const item of lists.flat()) if (!seen.has(item.name)) seen.set(item.name, item)
    return [...seen.values()]
  }
  const merged = new Kc()
  merged.loadFromOptions({
    clusters: pick(configs.map((c) => c.clusters)),
    users: pick(configs.map((c) => c.users)),
    contexts: pick(configs.map((c) => c.contexts)),
    currentContext: configs.map((c) => c.currentContext).find(Boolean) ?? '',
  })
  return merged
}

/** One line for any failure to talk to the API: unreachable, TLS, refused credentials, bad answers. */
export function apiError(error: unknown, target: KubeTarget): MerbridgeError {
  if (error instanceof MerbridgeError) return error
  const e = error as {code?: string | number; statusCode?: number; message?: string; cause?: {code?: string}; errno?: string}
  const status = typeof e.code === 'number' ? e.code : e.statusCode
  const code = e.cause?.code ?? (typeof e.code === 'string' ? e.code : '')
  const where = `the Kubernetes API at ${target.server}`
  if (status === 401)
    return kubeError(
      `${where} refused the credentials of ${target.source} (401 Unauthorized)`,
      'refresh the token or certificate in the kubeconfig',
      'KUBE_UNAUTHORIZED',
    )
  if (status === 403)
    return kubeError(
      `${where} does not allow listing pods to ${target.source} (403 Forbidden)`,
      'grant get/list/watch on pods (a ClusterRole) to this identity',
      'KUBE_FORBIDDEN',
    )
  if (status) return kubeError(`${where} answered ${status}: ${(e.message ?? '').split('\n')[0]}`, 'check the API server', 'KUBE_API')
  if (/CERT|SSL|TLS|certificate|self.signed|altname/i.test(`${code} ${e.message}`))
    return kubeError(
      `TLS failure talking to ${where}: ${(e.message ?? code).split('\n')[0]}`,
      'check certificate-authority-data in the kubeconfig',
      'KUBE_TLS',
    )
  if (/ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|ECONNRESET|EAI_AGAIN|socket hang up|network/i.test(`${code} ${e.message}`))
    return kubeError(
      `cannot reach ${where}: ${(e.message ?? code).split('\n')[0]}`,
      'check the server address in the kubeconfig and the network',
      'KUBE_UNREACHABLE',
    )
  return kubeError(`talking to ${where} failed: ${(e.message ?? String(error)).split('\n')[0]}`, 'check the API server', 'KUBE_API')
}

export function nodeSelector(node: string): string {
  return `spec.nodeName=${node}`
}

/** This node's pods and the list's resourceVersion (to watch from). */
export async function listNodePods(target: KubeTarget, node: string): Promise<{pods: PodJson[]; resourceVersion: string}> {
  const {CoreV1Api} = await import('@kubernetes/client-node')
  try {
    const api = target.kc.makeApiClient(CoreV1Api)
    const list = await withApiTimeout(api.listPodForAllNamespaces({fieldSelector: nodeSelector(node)}), target, 'the list of pods')
    return {pods: list.items as unknown as PodJson[], resourceVersion: list.metadata?.resourceVersion ?? ''}
  } catch (error) {
    throw apiError(error, target)
  }
}
