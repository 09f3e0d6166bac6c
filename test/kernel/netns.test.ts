// The namespace scan every sync makes, on the real kernel: named namespaces no process is in yet
// (a runtime's sandboxes while it sets pods up) are read by one run of the netns-cookie helper,
// with the same addresses `ip -n` lists, and by `ip -n` where the helper is an older one.
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import {chmodSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {buildObjects} from '../../src/bpf/objects.js'
import {listNetnsCandidates} from '../../src/node/netns.js'
import {kernelSkipReason, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['clang', 'ip'])

describe('the namespace scan', {skip, timeout: suiteTimeout(120_000)}, () => {
  const id = randomBytes(3).toString('hex')
  const names = ['a', 'b', 'c'].map((n) => `mbscan-${id}-${n}`)
  const tmp = mkdtempSync(join(tmpdir(), 'mb-scan-'))
  const ip = (args: string[]) => execa('ip', args)
  const ours = async (opts: Parameters<typeof listNetnsCandidates>[0]) =>
    (await listNetnsCandidates(opts))
      .filter((c) => c.name !== undefined && names.includes(c.name))
      .map((c) => ({name: c.name, addresses: [...c.addresses].sort(), linkLocal: [...c.linkLocal].sort(), pids: c.pids}))
      .sort((x, y) => (x.name ?? '').localeCompare(y.name ?? ''))

  before(async () => {
    for (const n of names) await ip(['netns', 'add', n])
    // a: a pod's interface with both families; b: only loopback up; c: nothing up
    await ip(['-n', names[0]!, 'link', 'set', 'lo', 'up'])
    await ip(['-n', names[0]!, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'side0'])
    for (const dev of ['eth0', 'side0']) await ip(['-n', names[0]!, 'link', 'set', dev, 'up'])
    await ip(['-n', names[0]!, 'addr', 'add', '10.98.0.7/24', 'dev', 'eth0'])
    await ip(['-n', names[0]!, 'addr', 'add', 'fd98::7/64', 'dev', 'eth0', 'nodad'])
    await ip(['-n', names[1]!, 'link', 'set', 'lo', 'up'])
  })

  after(async () => {
    for (const n of names) await execa('ip', ['netns', 'del', n], {reject: false})
    rmSync(tmp, {recursive: true, force: true})
  })

  it('reads the addresses of namespaces no process is in with the helper, as ip lists them', async () => {
    const helper = (await buildObjects()).netnsCookie
    // link-local addresses come once the kernel has made them
    let byIp: Awaited<ReturnType<typeof ours>> = []
    for (let i = 0; i < 100 && (byIp[0]?.linkLocal.length ?? 0) < 2; i++) {
      byIp = await ours({})
      await new Promise((r) => setTimeout(r, 100))
    }
    const [a] = byIp
    assert.ok(a)
    assert.deepEqual(a, {name: names[0], addresses: ['10.98.0.7', '127.0.0.1', 'fd98::7'], linkLocal: a.linkLocal, pids: []})
    assert.equal(a.linkLocal.length, 2, 'eth0 and side0 have link-local addresses')
    assert.match((await execa(helper, ['--addresses', `/run/netns/${names[0]}`])).stdout, /^\d+ addrs .*\b10\.98\.0\.7\b/)
    assert.deepEqual(await ours({helper}), byIp)
    // an older helper prints cookies only: each namespace is read with ip instead
    const old = join(tmp, 'old-netns-cookie')
    writeFileSync(old, '#!/bin/sh\nfor p in "$@"; do echo 4096; done\n')
    chmodSync(old, 0o755)
    assert.deepEqual(await ours({helper: old}), byIp)
    // only the namespaces: no address is read
    assert.deepEqual(
      (await ours({addresses: false})).map((c) => c.addresses),
      names.map(() => []),
    )
  })
})
