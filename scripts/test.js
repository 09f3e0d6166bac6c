// `npm test`: unit tests always; kernel tests too (they skip themselves with one line when this
// machine cannot run them). One file at a time: the kernel tests share the machine's kernel.
import {spawnSync} from 'node:child_process'
import {readdirSync} from 'node:fs'

// the datapath's decisions packet by packet (BPF_PROG_RUN, under a second) run first
const FIRST = ['test/kernel/tc-decisions.test.ts']
const listed = ['test/unit', 'test/kernel'].flatMap((dir) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts'))
    .sort()
    .map((f) => `${dir}/${f}`),
)
const files = [...FIRST, ...listed.filter((f) => !FIRST.includes(f))]
const only = process.argv.slice(2)
const selected = only.length > 0 ? files.filter((f) => only.some((o) => f.includes(o))) : files
// with no file named, node --test would run every script it can find, helpers included
if (selected.length === 0) {
  console.error(`no test file matches ${only.join(', ')}: give part of a path under test/unit or test/kernel`)
  process.exit(2)
}
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-concurrency=1', ...selected], {
  stdio: 'inherit',
})
process.exit(r.status ?? 1)
