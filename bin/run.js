#!/usr/bin/env node
import {execute} from '@oclif/core'

// A reader that went away (`merbridge dump-maps | head`) is not an error: stop quietly, as a
// filter would, instead of a stack trace or a write waiting for ever for a drain.
process.stdout.on('error', (error) => {
  if (error.code === 'EPIPE') process.exit(0)
  // a full disk or another failed write: one line, not a stack trace
  process.stderr.write(`Error: cannot write the output: ${error.code ?? error.message}\n`)
  process.exit(1)
})

// stdout to a file: its writes are synchronous, and a full disk throws from inside the command
const writeFailed = (error) => {
  if (error?.syscall !== 'write') return false
  process.stderr.write(`Error: cannot write the output: ${error.code ?? error.message}\n`)
  process.exit(1)
}
process.on('uncaughtException', (error) => {
  if (!writeFailed(error)) throw error
})

try {
  await execute({dir: import.meta.url})
} catch (error) {
  if (!writeFailed(error)) throw error
}
