// `npm run build` step: compile the BPF objects into the cache so the first `enable` is quick.
// Skips with one line where clang is missing: building the CLI must not need the BPF toolchain.
import {buildObjects} from './objects.js'
import {describeError} from '../errors.js'

try {
  const built = await buildObjects()
  console.log(`bpf objects ${built.compiled ? 'compiled' : 'up to date'}: ${built.dir}`)
} catch (error) {
  console.log(`bpf objects not built (${describeError(error).message}); enable will build them`)
}
