// merbridge-cni's calls as the agent answers them, with the watch loop's side replaced: which
// namespace a pod is pinned to, what ADD passes on, and the errors a runtime retries on.
import assert from 'node:assert/strict'
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, afterEach, describe, it} from 'node:test'
import {type CniAgent, type CniRequest, handleCni} from '../../src/datapath/cni.js'
import type {AppliedPods} from '../../src/datapath/sync.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {makePod} from '../support/fake-apiserver.js'

const NODE = 'node-1'
// sandboxes as a runtime names them: a bind mount under a netns folder, or a process's namespace
const root = mkdtempSync(join(tmpdir(), 'mb-cni-calls-'))
const SANDBOX = join(root, 'netns', 'cni-1')
const HOST_PROC = join(root, 'host-proc')
mkdirSync(join(root, 'netns'))
writeFileSync(SANDBOX, '')
mkdirSync(join(HOST_PROC, '4242', 'ns'), {recursive: true})
writeFileSync(join(HOST_PROC, '4242', 'ns', 'net'), '')
const prevResult = {cniVersion: '1.0.0', interfaces: [{name: 'eth0'}], ips: [{address: '10.1.0.7/24', interface: 0}]}
const call = (command: CniRequest['command'], netns: string, name = 'web'): CniRequest => ({
  command,
  containerId: 'sandbox',
  netns,
  ifname: 'eth0',
  args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=${name}`,
  config: JSON.stringify({cniVersion: '1.0.0', name: 'k8s', type: 'merbridge-cni', prevResult}),
})

/** An agent whose syncs register every pinned pod. */
function fakeAgent(): CniAgent & {syncs: number} {
  const pods = [{...makePod('web', '', NODE), status: {phase: 'Pending'}}]
  let applied: AppliedPods | undefined
  const agent = {
    node: NODE,
    mesh: PROFILES.istio!,
    pinned: new Map(),
    syncs: 0,
    findPod: (namespace: string | undefined, name: string) =>
      Promise.resolve(pods.find((p) => p.metadata.name === name && namespace === 'lab')),
    sync: () => {
      agent.syncs++
      applied = {
        sync: {
          meshed: [...agent.pinned.keys()].map((k: string) => ({namespace: k.split('/')[0], name: k.split('/')[1]})),
          nodeWarnings: [],
        },
      } as unknown as AppliedPods
      return Promise.resolve()
    },
    applied: () => applied,
    log: () => undefined,
  }
  return agent
}

describe('merbridge-cni calls', () => {
  afterEach(() => {
    delete process.env.MERBRIDGE_HOST_PROC
  })
  after(() => rmSync(root, {recursive: true, force: true}))

  it('pins the pod to the namespace the runtime named, passes the previous result on, and DEL releases it', async () => {
    const agent = fakeAgent()
    const add = await handleCni(call('ADD', SANDBOX), agent)
    assert.equal(add.code, 0, add.stdout)
    assert.deepEqual(JSON.parse(add.stdout), prevResult)
    assert.deepEqual(agent.pinned.get('lab/web'), {netns: SANDBOX, ips: ['10.1.0.7']})
    assert.equal((await handleCni(call('CHECK', SANDBOX), agent)).code, 0)
    assert.equal((await handleCni(call('DEL', SANDBOX), agent)).code, 0)
    assert.equal(agent.pinned.size, 0)
    assert.equal((JSON.parse((await handleCni(call('CHECK', SANDBOX), agent)).stdout) as {code: number}).code, 11)
  })

  it("reads a sandbox named by its process through the node's /proc, from a container", async () => {
    process.env.MERBRIDGE_HOST_PROC = HOST_PROC
    const agent = fakeAgent()
    assert.equal((await handleCni(call('ADD', '/proc/4242/ns/net'), agent)).code, 0)
    assert.equal(agent.pinned.get('lab/web')?.netns, join(HOST_PROC, '4242', 'ns', 'net'))
    assert.equal((await handleCni(call('DEL', '/proc/4242/ns/net'), agent)).code, 0)
    assert.equal(agent.pinned.size, 0)
  })

  it('refuses a sandbox the agent cannot see: its container lacks the mount', async () => {
    const agent = fakeAgent()
    const r = JSON.parse((await handleCni(call('ADD', join(root, 'netns', 'cni-9')), agent)).stdout) as {
      code: number
      msg: string
      details: string
    }
    assert.equal(r.code, 11)
    assert.match(r.msg, /cannot see .*cni-9/)
    assert.match(r.details, /\/var\/run\/netns mounted/)
    assert.equal(agent.pinned.size, 0)
  })

  it('refuses a pod the watch does not know, and a call without a pod name, with errors a runtime retries or reports', async () => {
    const agent = fakeAgent()
    const unknown = JSON.parse((await handleCni(call('ADD', SANDBOX, 'other'), agent)).stdout) as {code: number; msg: string}
    assert.equal(unknown.code, 11)
    assert.match(unknown.msg, /lab\/other of node node-1 is not known to the agent yet/)
    const nameless = JSON.parse((await handleCni({...call('ADD', SANDBOX), args: 'IgnoreUnknown=1'}, agent)).stdout) as {code: number}
    assert.equal(nameless.code, 7)
    assert.equal(agent.syncs, 0, 'nothing was synced for either')
  })
})
