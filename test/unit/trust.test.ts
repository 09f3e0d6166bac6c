import assert from 'node:assert/strict'
import {chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, it} from 'node:test'
import {requireTrustedDir} from '../../src/trust.js'

describe('folders whose contents run as root', () => {
  it('takes a folder only root can write, below a sticky /tmp, and one not made yet', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mb-trust-'))
    try {
      requireTrustedDir(dir, 'the object cache')
      requireTrustedDir(join(dir, 'not', 'yet'), 'the object cache')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it(
    'refuses one another user owns or may write, or that sits in such a folder',
    {skip: process.geteuid?.() === 0 ? false : 'needs root to chown'},
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'mb-trust-'))
      try {
        const cache = join(dir, 'cache')
        mkdirSync(cache)
        chmodSync(cache, 0o777)
        assert.throws(
          () => requireTrustedDir(cache, 'the object cache'),
          new RegExp(`^MerbridgeError: the object cache ${cache} is not safe to run from as root: ${cache} is writable by every user$`),
        )
        chmodSync(cache, 0o775)
        assert.throws(() => requireTrustedDir(join(cache, 'x'), 'the object cache'), /is writable by its group$/)
        chmodSync(cache, 0o755)
        chownSync(cache, 1000, 1000)
        assert.throws(
          () => requireTrustedDir(join(cache, 'deep', 'er'), 'the records folder'),
          new RegExp(`${cache} is owned by uid 1000$`),
        )
        // a sticky folder is no shelter when it is the folder itself
        chownSync(cache, 0, 0)
        chmodSync(cache, 0o1777)
        assert.throws(() => requireTrustedDir(cache, 'the object cache'), /writable by every user$/)
        requireTrustedDir(join(cache, 'below'), 'the object cache')
      } finally {
        rmSync(dir, {recursive: true, force: true})
      }
    },
  )
})
