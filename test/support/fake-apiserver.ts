/**
 * A Kubernetes API server for tests, over real HTTPS with a CA and certificate made by openssl:
 * lists pods with a nodeName field selector, streams watch events from a resourceVersion, answers
 * 410 Gone for a compacted resourceVersion, checks bearer tokens (401/403), and can drop watches.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {createServer, type Server} from 'node:https'
import type {ServerResponse} from 'node:http'
import type {AddressInfo, Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

export interface FakePod {
  metadata: {name: string; namespace: string; annotations?: Record<string, string>; resourceVersion?: string; uid?: string}
  spec: {nodeName: string; containers: {name: string}[]; hostNetwork?: boolean}
  status: {phase: string; podIP?: string; podIPs?: {ip: string}[]}
}

export function makePod(name: string, ip: string, node: string, meshed = true, annotations: Record<string, string> = {}): FakePod {
  return {
    metadata: {name, namespace: 'lab', annotations: {...(meshed ? {'sidecar.istio.io/status': '{}'} : {}), ...annotations}},
    spec: {nodeName: node, containers: [{name: 'app'}, ...(meshed ? [{name: 'istio-proxy'}] : [])]},
    status: {phase: 'Running', podIP: ip, podIPs: [{ip}]},
  }
}

function certificates(dir: string, cn = 'kube-apiserver'): {ca: Buffer; key: Buffer; cert: Buffer} {
  const run = (...args: string[]) => execFileSync('openssl', args, {cwd: dir, stdio: 'pipe'})
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', `/CN=${cn}-ca`)
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${cn}`)
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  run(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.crt',
    '-days',
    '1',
    '-extfile',
    'ext.cnf',
  )
  return {ca: readFileSync(join(dir, 'ca.crt')), key: readFileSync(join(dir, 'server.key')), cert: readFileSync(join(dir, 'server.crt'))}
}

interface Event {
  rv: number
  type: 'ADDED' | 'MODIFIED' | 'DELETED'
  pod: FakePod
}

export class FakeApiServer {
  readonly dir = mkdtempSync(join(tmpdir(), 'fake-api-'))
  readonly ca: Buffer
  private readonly server: Server
  private readonly pods = new Map<string, FakePod>()
  private readonly events: Event[] = []
  private rv = 100
  private heldLists?: (() => void)[]
  /** watches from before this resourceVersion get 410 Gone */
  private oldestRv = 0
  private readonly watchers = new Set<{res: ServerResponse; node?: string; socket: Socket}>()
  readonly requests: {path: string; query: Record<string, string>}[] = []
  token = 'good-token'

  constructor() {
    const {ca, key, cert} = certificates(this.dir)
    this.ca = ca
    this.server = createServer({key, cert}, (req, res) => this.handle(req.url ?? '/', req.headers.authorization ?? '', res, req.socket))
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    return this.url
  }

  get url(): string {
    return `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`
  }

  async stop(): Promise<void> {
    this.dropWatches()
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
    rmSync(this.dir, {recursive: true, force: true})
  }

  private key(p: FakePod): string {
    return `${p.metadata.namespace}/${p.metadata.name}`
  }

  private emit(type: Event['type'], pod: FakePod): void {
    this.rv++
    const copy = structuredClone(pod)
    copy.metadata.resourceVersion = String(this.rv)
    copy.metadata.uid ??= `uid-${copy.metadata.name}`
    if (type === 'DELETED') this.pods.delete(this.key(copy))
    else this.pods.set(this.key(copy), copy)
    const e = {rv: this.rv, type, pod: copy}
    this.events.push(e)
    for (const w of this.watchers) if (!w.node || w.node === copy.spec.nodeName) w.res.write(JSON.stringify({type, object: copy}) + '\n')
  }

  add(pod: FakePod): void {
    this.emit('ADDED', pod)
  }

  modify(pod: FakePod): void {
    this.emit('MODIFIED', pod)
  }

  delete(namespace: string, name: string): void {
    const p = this.pods.get(`${namespace}/${name}`)
    if (p) this.emit('DELETED', p)
  }

  /** Forget history: watches from an older resourceVersion get 410 Gone, open ones are told so. */
  compact(): void {
    this.oldestRv = this.rv + 1
    for (const w of this.watchers) {
      w.res.end(
        JSON.stringify({
          type: 'ERROR',
          object: {kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: 'too old resource version'},
        }) + '\n',
      )
    }
    this.watchers.clear()
  }

  /** Cut every open watch connection, as a network failure would. */
  dropWatches(): void {
    for (const w of this.watchers) w.socket.destroy()
    this.watchers.clear()
  }

  get openWatches(): number {
    return this.watchers.size
  }

  private handle(rawUrl: string, auth: string, res: ServerResponse, socket: Socket): void {
    const url = new URL(rawUrl, 'https://x')
    const query = Object.fromEntries(url.searchParams)
    this.requests.push({path: url.pathname, query})
    const status = (code: number, reason: string) => {
      res.writeHead(code, {'content-type': 'application/json'})
      res.end(JSON.stringify({kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, code, message: reason}))
    }
    if (auth === 'Bearer forbidden-token') {
      status(403, 'Forbidden')
      return
    }
    if (auth !== `Bearer ${this.token}`) {
      status(401, 'Unauthorized')
      return
    }
    if (url.pathname !== '/api/v1/pods') {
      status(404, 'NotFound')
      return
    }
    const node = /^spec\.nodeName=(.*)$/.exec(query.fieldSelector ?? '')?.[1]
    const mine = (p: FakePod) => !node || p.spec.nodeName === node
    if (query.watch === 'true') {
      const from = Number(query.resourceVersion ?? 0)
      res.writeHead(200, {'content-type': 'application/json', 'transfer-encoding': 'chunked'})
      res.flushHeaders() // as the real API server does: the client sees the stream open at once
      if (from < this.oldestRv) {
        res.end(
          JSON.stringify({type: 'ERROR', object: {kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version'}}) +
            '\n',
        )
        return
      }
      for (const e of this.events) if (e.rv > from && mine(e.pod)) res.write(JSON.stringify({type: e.type, object: e.pod}) + '\n')
      const w = {res, node, socket}
      this.watchers.add(w)
      res.on('close', () => this.watchers.delete(w))
      return
    }
    const list = () => {
      res.writeHead(200, {'content-type': 'application/json'})
      res.end(
        JSON.stringify({
          kind: 'PodList',
          apiVersion: 'v1',
          metadata: {resourceVersion: String(this.rv)},
          items: [...this.pods.values()].filter(mine),
        }),
      )
    }
    if (this.heldLists) this.heldLists.push(list)
    else list()
  }

  /** Hold every list request until releaseLists(): a client caught before its first answer. */
  holdLists(): void {
    this.heldLists ??= []
  }

  /** Answer the held list requests, and the next ones at once. */
  releaseLists(): void {
    const held = this.heldLists ?? []
    this.heldLists = undefined
    for (const answer of held) answer()
  }

  get listsHeld(): number {
    return this.heldLists?.length ?? 0
  }

  /** A kubeconfig for this server; `ca` false leaves the CA out (the client must then fail TLS). */
  writeKubeconfig(file: string, opts: {token?: string; ca?: Buffer | false; server?: string; context?: string} = {}): string {
    const ca = opts.ca === false ? undefined : (opts.ca ?? this.ca)
    const ctx = opts.context ?? 'test'
    writeFileSync(
      file,
      `apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: ${opts.server ?? this.url}
${ca ? `    certificate-authority-data: ${ca.toString('base64')}\n` : ''}users:
- name: tester
  user:
    token: ${opts.token ?? this.token}
contexts:
- name: ${ctx}
  context: {cluster: fake, user: tester}
current-context: ${ctx}
`,
    )
    return file
  }
}
