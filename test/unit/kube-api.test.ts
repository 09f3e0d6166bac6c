// The Kubernetes API client against a real HTTPS server: credentials resolution, listing with a
// field selector, watching (events, 410 Gone, dropped connections) and one-line errors.
import assert from 'node:assert/strict'
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {listNodePods, loadKube} from '../../src/kube/client.js'
import type {PodJson} from '../../src/kube/pods.js'
import {type PodEvent, watchNodePods} from '../../src/kube/watch.js'
import {onPath} from '../../src/exec.js'
import {eventually, skipOrFail} from '../helpers.js'
import {FakeApiServer, makePod} from '../support/fake-apiserver.js'

const skip = skipOrFail(onPath('openssl') ? undefined : 'the API tests need openssl (bash scripts/setup.sh installs it)')

describe('kubeconfig resolution', {skip}, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kubecfg-'))
  let api: FakeApiServer
  before(async () => {
    api = new FakeApiServer()
    await api.start()
  })
  after(async () => {
    await api.stop()
    rmSync(dir, {recursive: true, force: true})
  })

  it('prefers --kubeconfig, then KUBECONFIG, then ~/.kube/config', async () => {
    const flag = api.writeKubeconfig(join(dir, 'flag.yaml'), {server: 'https://flag.example:1'})
    const envFile = api.writeKubeconfig(join(dir, 'env.yaml'), {server: 'https://env.example:2'})
    mkdirSync(join(dir, 'home', '.kube'), {recursive: true})
    api.writeKubeconfig(join(dir, 'home', '.kube', 'config'), {server: 'https://home.example:3'})
    const env = {HOME: join(dir, 'home'), KUBECONFIG: envFile}
    assert.equal((await loadKube({kubeconfig: flag}, env)).server, 'https://flag.example:1')
    assert.equal((await loadKube({}, env)).server, 'https://env.example:2')
    assert.equal((await loadKube({}, {HOME: join(dir, 'home')})).server, 'https://home.example:3')
    await assert.rejects(
      loadKube({}, {HOME: join(dir, 'nowhere')}),
      /no Kubernetes credentials: no --kubeconfig, KUBECONFIG, ~\/.kube\/config or in-cluster service account/,
    )
  })

  it('merges every file KUBECONFIG names, as kubectl does', async () => {
    mkdirSync(join(dir, 'team'), {recursive: true})
    const first = join(dir, 'first.yaml')
    const second = join(dir, 'team', 'second.yaml')
    // the first file sets no current context; the second names a cluster and a context the first has too
    writeFileSync(
      first,
      'apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster: {server: "https://prod.example:1"}\nusers:\n- name: alice\n  user: {token: a}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: alice}\n',
    )
    writeFileSync(
      second,
      'apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster: {server: "https://shadowed.example:9"}\n- name: dev\n  cluster: {server: "https://dev.example:2", certificate-authority: ca.crt}\nusers:\n- name: bob\n  user: {token: b}\ncontexts:\n- name: dev\n  context: {cluster: dev, user: bob}\n- name: prod\n  context: {cluster: dev, user: bob}\ncurrent-context: dev\n',
    )
    const env = {HOME: join(dir, 'nowhere'), KUBECONFIG: [join(dir, 'missing.yaml'), first, second].join(':')}
    const dev = await loadKube({}, env)
    assert.equal(dev.server, 'https://dev.example:2') // the current context, from the only file that sets one
    assert.equal(dev.kc.getCurrentCluster()?.caFile, join(dir, 'team', 'ca.crt')) // relative to its own file
    assert.equal(dev.source, `${first}:${second} (KUBECONFIG)`)
    const prod = await loadKube({context: 'prod'}, env)
    assert.equal(prod.server, 'https://prod.example:1') // context and cluster from the first file that names them
    assert.equal(prod.kc.getCurrentUser()?.token, 'a')
    await assert.rejects(loadKube({}, {KUBECONFIG: join(dir, 'missing.yaml')}), /none of the kubeconfig files in KUBECONFIG exists/)
  })

  it('says which file does not parse, and which context is missing', async () => {
    writeFileSync(join(dir, 'bad.yaml'), 'clusters: [unclosed\n')
    await assert.rejects(loadKube({kubeconfig: join(dir, 'bad.yaml')}, {}), /kubeconfig .*bad.yaml does not parse/)
    await assert.rejects(loadKube({kubeconfig: join(dir, 'missing.yaml')}, {}), /missing.yaml \(--kubeconfig\) does not exist/)
    const file = api.writeKubeconfig(join(dir, 'ctx.yaml'), {context: 'prod'})
    await assert.rejects(
      loadKube({kubeconfig: file, context: 'staging'}, {}),
      (e: Error & {suggestion?: string}) =>
        e.message.includes('context staging is not in') && (e.suggestion ?? '').includes('known contexts: prod'),
    )
    assert.equal((await loadKube({kubeconfig: file, context: 'prod'}, {})).server, api.url)
  })
})

describe('listing and watching pods', {skip, timeout: 60_000}, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kubeapi-'))
  let api: FakeApiServer
  before(async () => {
    api = new FakeApiServer()
    await api.start()
    api.add(makePod('a', '10.1.0.2', 'node1'))
    api.add(makePod('other', '10.2.0.2', 'node2'))
  })
  after(async () => {
    await api.stop()
    rmSync(dir, {recursive: true, force: true})
  })

  it("lists only this node's pods, with a field selector", async () => {
    const target = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'ok.yaml'))}, {})
    const list = await listNodePods(target, 'node1')
    assert.deepEqual(
      list.pods.map((p) => p.metadata?.name),
      ['a'],
    )
    assert.equal(api.requests.at(-1)?.query.fieldSelector, 'spec.nodeName=node1')
    assert.match(list.resourceVersion, /^\d+$/)
  })

  it('turns refused credentials, TLS failures and unreachable servers into one line each', async () => {
    const t401 = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'bad-token.yaml'), {token: 'wrong'})}, {})
    await assert.rejects(listNodePods(t401, 'node1'), /refused the credentials of .*bad-token.yaml \(--kubeconfig\) \(401 Unauthorized\)/)
    const t403 = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'forbidden.yaml'), {token: 'forbidden-token'})}, {})
    await assert.rejects(listNodePods(t403, 'node1'), /does not allow listing pods .*\(403 Forbidden\)/)
    const other = new FakeApiServer() // a CA that did not sign this server's certificate
    const tTls = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'wrong-ca.yaml'), {ca: other.ca})}, {})
    await other.stop()
    await assert.rejects(
      listNodePods(tTls, 'node1'),
      /^MerbridgeError: TLS failure talking to the Kubernetes API at https:\/\/127\.0\.0\.1:\d+/,
    )
    const tDown = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'down.yaml'), {server: 'https://127.0.0.1:1'})}, {})
    await assert.rejects(listNodePods(tDown, 'node1'), /cannot reach the Kubernetes API at https:\/\/127\.0\.0\.1:1/)
  })

  it('follows added, modified and deleted pods, relists on 410 Gone and survives dropped connections', async () => {
    const target = await loadKube({kubeconfig: api.writeKubeconfig(join(dir, 'watch.yaml'))}, {})
    const seen: {event: PodEvent; names: string[]}[] = []
    const errors: string[] = []
    const controller = new AbortController()
    const waitFor = async (pred: () => boolean, what: string) => eventually(what, pred, () => JSON.stringify({seen, errors}))
    const names = (pods: PodJson[]) => pods.map((p) => p.metadata!.name!).sort()
    const done = watchNodePods(
      target,
      'node1',
      {onPods: (pods, event) => Promise.resolve(void seen.push({event, names: names(pods)})), onError: (m) => errors.push(m)},
      controller.signal,
      undefined,
      {initialMs: 20, maxMs: 100},
    )

    await waitFor(() => seen.length === 1 && api.openWatches === 1, 'listed and watching')
    assert.deepEqual(seen[0], {event: {type: 'RELISTED', count: 1}, names: ['a']})
    api.add(makePod('b', '10.1.0.3', 'node1'))
    api.add(makePod('elsewhere', '10.2.0.3', 'node2'))
    await waitFor(() => seen.length === 2, 'added')
    assert.deepEqual(seen[1]!.names, ['a', 'b'])
    api.modify(makePod('b', '10.1.0.3', 'node1', true, {'traffic.sidecar.istio.io/excludeOutboundPorts': '9090'}))
    await waitFor(() => seen.length === 3, 'modified')
    assert.equal(seen[2]!.event.type, 'MODIFIED')

    api.dropWatches()
    api.delete('lab', 'a') // happens while the client is disconnected
    await waitFor(() => seen.length === 4, 'the deletion is seen after reconnecting')
    assert.deepEqual(seen[3], {event: seen[3]!.event, names: ['b']})
    assert.equal(seen[3].event.type, 'DELETED')

    api.compact()
    api.add(makePod('c', '10.1.0.4', 'node1'))
    await waitFor(() => seen.some((s) => s.event.type === 'RELISTED' && s.names.includes('c')), 'relisted after 410')
    assert.ok(
      errors.some((e) => e.includes('410 Gone')),
      errors.join('; '),
    )

    controller.abort()
    await done
  })
})
