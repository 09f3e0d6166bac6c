// The object cache: a build of another capacity compiles only the datapath and takes the rest from
// the default build; --rebuild compiles everything.
import assert from 'node:assert/strict'
import {chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {basename, join} from 'node:path'
import {after, describe, it} from 'node:test'
import {buildObjects, HELPER_FILES} from '../../src/bpf/objects.js'
import {kernelSkipReason, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['clang'])

describe('object cache', {skip, timeout: suiteTimeout(300_000)}, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'mb-objects-'))
  const log = join(tmp, 'clang.log')
  const saved = {clang: process.env.MERBRIDGE_CLANG, cache: process.env.MERBRIDGE_CACHE_DIR}
  // clang, and a line per compile saying which source it was
  const clang = join(tmp, 'clang')
  writeFileSync(clang, `#!/bin/sh\nfor a; do case "$a" in *.c) echo "$a" >> ${log};; esac; done\nexec clang "$@"\n`)
  chmodSync(clang, 0o755)
  process.env.MERBRIDGE_CLANG = clang
  process.env.MERBRIDGE_CACHE_DIR = join(tmp, 'cache')
  const compiled = () => {
    const lines = readFileSync(log, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => basename(l))
    rmSync(log)
    return lines
  }

  after(() => {
    const restore = (key: 'MERBRIDGE_CLANG' | 'MERBRIDGE_CACHE_DIR', value: string | undefined) => {
      if (value === undefined) Reflect.deleteProperty(process.env, key)
      else process.env[key] = value
    }
    restore('MERBRIDGE_CLANG', saved.clang)
    restore('MERBRIDGE_CACHE_DIR', saved.cache)
    rmSync(tmp, {recursive: true, force: true})
  })

  it('compiles only the datapath for another capacity, and everything on --rebuild', async () => {
    const base = await buildObjects()
    assert.equal(compiled().length, 7, 'the default build compiles the datapath, three iterators and three helpers')
    const other = await buildObjects({maxConnections: 70_000})
    assert.notEqual(other.hash, base.hash)
    assert.deepEqual(compiled(), ['merbridge.bpf.c'])
    for (const helper of [HELPER_FILES.netnsCookie, HELPER_FILES.tcInbound, HELPER_FILES.cniPlugin]) {
      assert.deepEqual(readFileSync(join(other.dir, helper)), readFileSync(join(base.dir, helper)), helper)
      assert.equal(statSync(join(other.dir, helper)).mode & 0o111, 0o111, `${helper} stays executable`)
    }
    assert.notDeepEqual(readFileSync(other.datapath), readFileSync(base.datapath), 'the capacity is in the datapath')
    await buildObjects({maxConnections: 70_000, rebuild: true})
    assert.equal(compiled().length, 7)
  })

  it('compiles what the default build lacks: all without one, one file where one is missing', async () => {
    process.env.MERBRIDGE_CACHE_DIR = join(tmp, 'cache-without-default')
    await buildObjects({maxConnections: 70_000})
    assert.equal(compiled().length, 7, 'no default build to take the iterators and helpers from')
    const base = await buildObjects()
    assert.equal(compiled().length, 7)
    rmSync(join(base.dir, HELPER_FILES.tcInbound))
    await buildObjects({maxConnections: 80_000})
    assert.deepEqual(compiled(), ['merbridge.bpf.c', 'tc-inbound.c'])
  })
})
