// The node's CNI configuration: merbridge-cni's entry added at the end of the runtime's conflist,
// its other plugins untouched, and the file put back byte for byte at uninstall.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, describe, it} from 'node:test'
import {CNI_PLUGIN_TYPE, installCni, runtimeConfig, uninstallCni} from '../../src/node/cni-config.js'

// as podman writes it: tabs, its own key order
const PODMAN =
  '{\n\t"cniVersion": "0.4.0",\n\t"name": "podman",\n\t"plugins": [\n\t\t{"type": "bridge", "bridge": "cni-podman0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},\n\t\t{"type": "portmap", "capabilities": {"portMappings": true}}\n\t]\n}\n'
const SOCKET = '/run/merbridge/cni.sock'

describe('CNI configuration', () => {
  const root = mkdtempSync(join(tmpdir(), 'mb-cniconf-'))
  after(() => rmSync(root, {recursive: true, force: true}))
  let n = 0
  const node = (files: Record<string, string>) => {
    const dir = join(root, String(n++))
    const paths = {confDir: join(dir, 'net.d'), binDir: join(dir, 'bin')}
    mkdirSync(paths.confDir, {recursive: true})
    mkdirSync(paths.binDir, {recursive: true})
    for (const [name, text] of Object.entries(files)) writeFileSync(join(paths.confDir, name), text)
    const plugin = join(dir, 'plugin')
    writeFileSync(plugin, 'the plugin binary')
    return {paths, plugin, conf: (name: string) => readFileSync(join(paths.confDir, name), 'utf8')}
  }

  it("adds its entry at the end of the runtime's conflist and puts the file back byte for byte", () => {
    const {paths, plugin, conf} = node({'87-podman.conflist': PODMAN, '99-later.conflist': '{"plugins": []}'})
    assert.equal(runtimeConfig(paths.confDir), join(paths.confDir, '87-podman.conflist'))
    assert.deepEqual(installCni(paths, plugin, SOCKET), {file: join(paths.confDir, '87-podman.conflist'), changed: true})
    const installed = JSON.parse(conf('87-podman.conflist')) as {plugins: {type: string}[]}
    const original = JSON.parse(PODMAN) as {plugins: unknown[]}
    assert.deepEqual(installed.plugins.slice(0, -1), original.plugins)
    assert.deepEqual(installed.plugins.at(-1), {type: CNI_PLUGIN_TYPE, socket: SOCKET})
    assert.equal(readFileSync(join(paths.binDir, CNI_PLUGIN_TYPE), 'utf8'), 'the plugin binary')
    assert.equal(conf('99-later.conflist'), '{"plugins": []}')
    assert.equal(installCni(paths, plugin, SOCKET).changed, false)

    assert.deepEqual(uninstallCni(paths), {restored: [join(paths.confDir, '87-podman.conflist')], edited: []})
    assert.equal(conf('87-podman.conflist'), PODMAN)
    assert.ok(!existsSync(join(paths.binDir, CNI_PLUGIN_TYPE)))
    assert.deepEqual(uninstallCni(paths), {restored: [], edited: []})
  })

  it('comes back into a file its CNI rewrote, and puts back the rewritten one', () => {
    const {paths, plugin, conf} = node({'10-net.conflist': PODMAN})
    installCni(paths, plugin, SOCKET)
    const rewritten = PODMAN.replace('10.88.0.0/16', '10.89.0.0/16')
    writeFileSync(join(paths.confDir, '10-net.conflist'), rewritten)
    assert.equal(installCni(paths, plugin, SOCKET).changed, true)
    assert.match(conf('10-net.conflist'), /merbridge-cni/)
    uninstallCni(paths)
    assert.equal(conf('10-net.conflist'), rewritten)
  })

  it('takes out only its own entry from a file changed since', () => {
    const {paths, plugin, conf} = node({'10-net.conflist': PODMAN})
    installCni(paths, plugin, SOCKET)
    const c = JSON.parse(conf('10-net.conflist')) as {plugins: {type: string}[]}
    c.plugins.push({type: 'tuning'})
    writeFileSync(join(paths.confDir, '10-net.conflist'), JSON.stringify(c))
    assert.deepEqual(uninstallCni(paths).edited, [join(paths.confDir, '10-net.conflist')])
    assert.deepEqual(
      (JSON.parse(conf('10-net.conflist')) as {plugins: {type: string}[]}).plugins.map((p) => p.type),
      ['bridge', 'portmap', 'tuning'],
    )
  })

  it('leaves a file it cannot chain into as it is, and says why', () => {
    const broken = node({'10-net.conflist': '{"plugins": [ '})
    assert.throws(() => installCni(broken.paths, broken.plugin, SOCKET), /10-net.conflist is not valid JSON/)
    assert.equal(broken.conf('10-net.conflist'), '{"plugins": [ ')
    const single = node({'10-net.conf': '{"cniVersion": "0.4.0", "type": "bridge"}'})
    assert.throws(() => installCni(single.paths, single.plugin, SOCKET), /has no "plugins" list/)
    assert.throws(() => installCni(node({}).paths, broken.plugin, SOCKET), /no network configuration in/)
  })
})
