// runStreaming: what its chunk handler throws, and a tool's own error, reach the caller as one
// rejected promise (a throw in a stream handler used to crash the CLI with a stack trace).
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {runStreaming} from '../../src/exec.js'

describe('runStreaming', () => {
  it('rejects with what the chunk handler threw', async () => {
    await assert.rejects(
      runStreaming('echo', ['not a list'], () => {
        throw new Error('the handler refused this output')
      }),
      /the handler refused this output/,
    )
  })

  it("names the tool's own error when it fails, even when the handler refused its output", async () => {
    // bpftool -j prints its errors on stdout as {"error": "..."}
    const seen: string[] = []
    await assert.rejects(
      runStreaming('sh', ['-c', 'echo \'{"error":"bpf obj get (/x): No such file or directory"}\'; exit 255'], (chunk) => {
        seen.push(chunk)
        throw new Error('not a JSON list')
      }),
      /sh -c .* failed: bpf obj get \(\/x\): No such file or directory/,
    )
    assert.equal(seen.length, 1)
  })

  it('hands over every chunk of a tool that succeeds', async () => {
    let out = ''
    await runStreaming('echo', ['hello'], (chunk) => (out += chunk))
    assert.equal(out, 'hello\n')
  })
})
