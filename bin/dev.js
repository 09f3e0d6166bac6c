#!/usr/bin/env -S node --import tsx
// Runs the TypeScript sources directly (no build): for development only.
import {execute} from '@oclif/core'

// A reader that went away (`merbridge dump-maps | head`) is not an error: stop quietly, as a
// filter would, instead of a stack trace or a write waiting for ever for a drain.
process.stdout.on('error', (error) => {
  if (error.code === 'EPIPE') process.exit(0)
  throw error
})

await execute({development: true, dir: import.meta.url})
