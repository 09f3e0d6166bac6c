// `npm run build` step: compile the BPF objects into the cache so the first `enable` is quick.
// Skips with one line where clang is missing: building the CLI must not need the BPF toolchain.
// With --ship (an image's build stage), puts them into the package, and fails if it cannot.
import {buildObjects, shipObjects} from './objects.js'
import {describeError} from '../errors.js'

if (process.argv.includes('--ship')) {
  const shipped = await shipObjects()
  console.log(`bpf objects shipped: ${shipped.dir}`)
} else {
  try {
    const built = await buildObjects()
    console.log(`bpf objects ${built.compiled ? 'compiled' : 'up to date'}: ${built.dir}`)
  } catch (error) {
    console.log(`bpf objects not built (${describeError(error).message}); enable will build them`)
  }
}
