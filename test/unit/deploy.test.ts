// deploy/: the manifests use only fields the Kubernetes API has (checked against the API's own
// schema as @kubernetes/client-node carries it), run only flags the CLI has, and grant nothing
// beyond reading pods; the systemd unit and the Containerfile point at what exists.
import assert from 'node:assert/strict'
import {existsSync, readFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {describe, it} from 'node:test'
import * as k8s from '@kubernetes/client-node'
import {loadAll} from 'js-yaml'
import {ROOT} from '../helpers.js'

type Json = Record<string, unknown>
interface Attribute {
  baseName: string
  type: string
}
type Model = {getAttributeTypeMap(): Attribute[]} | undefined

const MODELS: Record<string, string> = {
  'v1/Namespace': 'V1Namespace',
  'v1/ServiceAccount': 'V1ServiceAccount',
  'rbac.authorization.k8s.io/v1/ClusterRole': 'V1ClusterRole',
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': 'V1ClusterRoleBinding',
  'apps/v1/DaemonSet': 'V1DaemonSet',
}

function model(name: string): Model {
  return (k8s as unknown as Record<string, Model>)[name]
}

/** Every field of `value` against the API type `type`; returns the paths that are wrong. */
function check(value: unknown, type: string, path: string): string[] {
  const array = /^Array<(.+)>$/.exec(type)
  if (array) return Array.isArray(value) ? value.flatMap((v, i) => check(v, array[1]!, `${path}[${i}]`)) : [`${path}: a list was expected`]
  if (type === '{ [key: string]: string; }')
    return value && typeof value === 'object' && Object.values(value).every((v) => typeof v === 'string')
      ? []
      : [`${path}: a map of strings was expected`]
  if (type === 'string' || type === 'Date')
    return typeof value === 'string' ? [] : [`${path}: a string was expected, not ${JSON.stringify(value)}`]
  if (type === 'number') return typeof value === 'number' ? [] : [`${path}: a number was expected`]
  if (type === 'boolean') return typeof value === 'boolean' ? [] : [`${path}: true or false was expected`]
  if (type === 'IntOrString')
    return typeof value === 'number' || typeof value === 'string' ? [] : [`${path}: a number or a name was expected`]
  if (type === 'any' || type === 'object') return []
  const m = model(type)
  if (!m) return [`${path}: no schema for ${type}`]
  if (!value || typeof value !== 'object' || Array.isArray(value)) return [`${path}: an object (${type}) was expected`]
  const fields = new Map(m.getAttributeTypeMap().map((a) => [a.baseName, a.type]))
  return Object.entries(value as Json).flatMap(([k, v]) => {
    const t = fields.get(k)
    return t ? check(v, t, `${path}.${k}`) : [`${path}.${k}: ${type} has no field "${k}"`]
  })
}

const manifest = (file: string) => (loadAll(readFileSync(join(ROOT, 'deploy', file), 'utf8')) as Json[]).filter(Boolean)
const commands = (
  JSON.parse(readFileSync(join(ROOT, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {flags: Record<string, unknown>}>}
).commands

/** `merbridge <command> --flag[=value] ...`: the command and every flag must be the CLI's. */
function checkInvocation(argv: string[], where: string): void {
  const [command, ...rest] = argv
  const known = commands[command ?? '']
  assert.ok(known, `${where}: merbridge has no command ${command}`)
  for (const arg of rest) {
    if (!arg.startsWith('--')) continue
    const flag = arg.slice(2).split('=')[0]!
    assert.ok(flag in known.flags, `${where}: merbridge ${command} has no flag --${flag}`)
  }
}

describe('deploy manifests', () => {
  for (const file of ['merbridge.yaml', 'uninstall.yaml']) {
    it(`${file} uses only fields of the Kubernetes API's schema`, () => {
      const docs = manifest(file)
      assert.ok(docs.length > 0)
      for (const doc of docs) {
        const kind = `${String(doc.apiVersion)}/${String(doc.kind)}`
        const name = MODELS[kind]
        assert.ok(name, `${file}: ${kind} is not a kind these tests know`)
        assert.deepEqual(check(doc, name, `${file} ${String(doc.kind)}`), [])
      }
    })
  }

  it('the schema check catches a misspelt field and a wrong type (it can fail)', () => {
    const ds = structuredClone(manifest('merbridge.yaml').find((d) => d.kind === 'DaemonSet')!) as {
      spec: {template: {spec: Json & {containers: Json[]}}}
    }
    ds.spec.template.spec.hostNetwrok = true
    ds.spec.template.spec.containers[0]!.ports = 9473
    const errors = check(ds, 'V1DaemonSet', 'ds')
    assert.deepEqual(errors, [
      'ds.spec.template.spec.containers[0].ports: a list was expected',
      'ds.spec.template.spec.hostNetwrok: V1PodSpec has no field "hostNetwrok"',
    ])
  })

  it("runs merbridge with the CLI's own flags, selects its own pods, and probes what it serves", () => {
    const ds = manifest('merbridge.yaml').find((d) => d.kind === 'DaemonSet') as unknown as k8s.V1DaemonSet
    const pod = ds.spec!.template.spec!
    const c = pod.containers[0]!
    assert.deepEqual(c.command, ['merbridge'])
    checkInvocation(c.args!, 'the DaemonSet')
    assert.ok(c.args!.includes('--watch'))
    assert.deepEqual(ds.spec!.selector.matchLabels, ds.spec!.template.metadata!.labels)
    const port = c
      .args!.find((a) => a.startsWith('--metrics-addr='))!
      .split(':')
      .at(-1)
    assert.equal(String(c.ports![0]!.containerPort), port)
    assert.equal(c.livenessProbe!.httpGet!.path, '/healthz')
    assert.equal(c.readinessProbe!.httpGet!.path, '/readyz')
    // a slow first enable is given its time: /healthz answers while it works, and startup allows minutes
    assert.equal(c.startupProbe!.httpGet!.path, '/healthz')
    assert.ok(c.startupProbe!.periodSeconds! * c.startupProbe!.failureThreshold! >= 300)
    assert.deepEqual(pod.nodeSelector, {'kubernetes.io/os': 'linux'})
    // every mount has its volume, and the host paths the CLI is told about are mounted
    const volumes = new Set(pod.volumes!.map((v) => v.name))
    for (const m of c.volumeMounts!) assert.ok(volumes.has(m.name), m.name)
    const mounted = new Set(c.volumeMounts!.map((m) => m.mountPath))
    for (const flag of ['--cgroup=', '--host-proc='])
      assert.ok(mounted.has(c.args!.find((a) => a.startsWith(flag))!.slice(flag.length)), flag)
    assert.equal(c.securityContext!.privileged, false)
    const un = manifest('uninstall.yaml')[0] as unknown as k8s.V1DaemonSet
    const script = un.spec!.template.spec!.containers[0]!.args![0]!
    checkInvocation(script.split('&&')[0]!.trim().split(/\s+/).slice(1), 'the uninstall DaemonSet')
    // disable detaches from the cgroup enable recorded: the uninstall sees the host's tree at that path
    const unMounts = un.spec!.template.spec!.containers[0]!.volumeMounts!
    const cgroupMount = c.volumeMounts!.find(
      (m) => m.mountPath === c.args!.find((a) => a.startsWith('--cgroup='))!.slice('--cgroup='.length),
    )!
    const unCgroup = unMounts.find((m) => m.mountPath === cgroupMount.mountPath)
    assert.ok(unCgroup, 'the uninstall mounts the cgroup where enable ran')
    const hostPathOf = (d: k8s.V1DaemonSet, name: string) => d.spec!.template.spec!.volumes!.find((v) => v.name === name)!.hostPath!.path
    assert.equal(hostPathOf(un, unCgroup.name), hostPathOf(ds, cgroupMount.name))
    // CNI mode: the folders merbridge-cni goes into, mounted for the uninstall at the same paths
    // from the same host paths; the socket at a path the node's runtime sees as the agent does
    const argOf = (flag: string) => c.args!.find((a) => a.startsWith(`--${flag}=`))?.slice(flag.length + 3)
    for (const flag of ['cni-conf-dir', 'cni-bin-dir']) {
      const m = c.volumeMounts!.find((v) => v.mountPath === argOf(flag))
      assert.ok(m, `--${flag} is mounted`)
      const unM = unMounts.find((v) => v.mountPath === m.mountPath)
      assert.ok(unM, `the uninstall mounts --${flag} where enable ran`)
      assert.equal(hostPathOf(un, unM.name), hostPathOf(ds, m.name))
    }
    const socketDir = dirname(argOf('cni-socket') ?? '')
    const socketMount = c.volumeMounts!.find((v) => v.mountPath === socketDir)
    assert.ok(socketMount, 'the socket folder is mounted')
    assert.equal(hostPathOf(ds, socketMount.name), socketDir, 'at the path the node sees')
    assert.ok(
      c.volumeMounts!.some((v) => v.mountPath === '/var/run/netns' && v.mountPropagation === 'HostToContainer'),
      "the runtime's sandboxes, as they are made",
    )
    assert.deepEqual(un.spec!.template.spec!.nodeSelector, {'kubernetes.io/os': 'linux'})
  })

  it('grants nothing but get, list and watch on pods', () => {
    const docs = manifest('merbridge.yaml')
    const roles = docs.filter((d) => String(d.kind).endsWith('Role'))
    assert.deepEqual(
      roles.map((r) => r.kind),
      ['ClusterRole'],
    )
    assert.deepEqual(roles[0]!.rules, [{apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch']}])
    const bindings = docs.filter((d) => String(d.kind).endsWith('RoleBinding')) as unknown as k8s.V1ClusterRoleBinding[]
    assert.equal(bindings.length, 1)
    assert.deepEqual(bindings[0]!.roleRef, {apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'merbridge'})
    const ds = docs.find((d) => d.kind === 'DaemonSet') as unknown as k8s.V1DaemonSet
    assert.deepEqual(bindings[0]!.subjects, [
      {kind: 'ServiceAccount', name: ds.spec!.template.spec!.serviceAccountName, namespace: ds.metadata!.namespace},
    ])
    assert.equal(
      (manifest('uninstall.yaml')[0] as unknown as k8s.V1DaemonSet).spec!.template.spec!.serviceAccountName,
      undefined,
      'disable needs no API access',
    )
  })

  it('the systemd unit runs a command and flags the CLI has', () => {
    const unit = readFileSync(join(ROOT, 'deploy', 'merbridge.service'), 'utf8')
    const exec = /^ExecStart=(\S+) (.*)$/m.exec(unit)
    assert.ok(exec, 'ExecStart')
    checkInvocation(exec[2]!.split(/\s+/), 'merbridge.service')
    assert.match(unit, /^KillSignal=SIGTERM$/m)
  })

  it('the Containerfile copies what exists and builds with the scripts package.json has', () => {
    const file = readFileSync(join(ROOT, 'Containerfile'), 'utf8')
    const copies = [...file.matchAll(/^COPY (?!--from)(.+)$/gm)].map(([, args]) => args!.trim().split(/\s+/).slice(0, -1))
    assert.ok(copies.length > 0)
    for (const p of copies.flat()) assert.ok(existsSync(join(ROOT, p)), p)
    const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {scripts: Record<string, string>}).scripts
    for (const [, s] of file.matchAll(/npm run (\S+)/g)) assert.ok(Object.hasOwn(scripts, s ?? ''), `npm run ${s}`)
    // what the build runs from the sources (not from what it builds) must be in the image
    const sources = [...(scripts.build ?? '').matchAll(/node (\S+)/g)].map(([, s]) => s!).filter((s) => !s.startsWith('dist/'))
    assert.ok(sources.length > 0)
    for (const s of sources)
      assert.ok(
        copies.flat().some((c) => s === c || s.startsWith(`${c.replace(/\/$/, '')}/`)),
        `${s} is not copied`,
      )
  })
})
