// `npm run bench`: wall times of the CLI's start-up paths, medians over repeated runs, next to
// Node.js alone, a bare import of @oclif/core, and a bare oclif CLI built on the fly from the same
// @oclif/core (the floors merbridge is measured against). Figures only: the targets are in
// docs/benchmarks.md.
import {spawnSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

const root = resolve(import.meta.dirname, '..')
const runs = Number(process.env.BENCH_RUNS ?? 15)

function time(args, cwd = root) {
  const samples = []
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint()
    const r = spawnSync(process.execPath, args, {cwd, encoding: 'utf8'})
    samples.push(Number(process.hrtime.bigint() - t) / 1e6)
    if (r.status !== 0 && !args.includes('doctor')) throw new Error(`${args.join(' ')} failed: ${r.stderr}`)
  }
  samples.sort((a, b) => a - b)
  return {median: samples[Math.floor(samples.length / 2)], min: samples[0], max: samples.at(-1)}
}

function bareCli() {
  const dir = mkdtempSync(join(tmpdir(), 'bare-oclif-'))
  mkdirSync(join(dir, 'commands'))
  mkdirSync(join(dir, 'bin'))
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'))
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({name: 'bare', version: '1.0.0', type: 'module', oclif: {bin: 'bare', commands: './commands'}}),
  )
  writeFileSync(
    join(dir, 'commands', 'hello.js'),
    "import {Command} from '@oclif/core'\nexport default class Hello extends Command { async run() { this.log('hi') } }\n",
  )
  writeFileSync(join(dir, 'bin', 'run.js'), "import {execute} from '@oclif/core'\nawait execute({dir: import.meta.url})\n")
  spawnSync(process.execPath, [join(root, 'node_modules', 'oclif', 'bin', 'run.js'), 'manifest'], {cwd: dir})
  return dir
}

const bare = bareCli()
try {
  const rows = [
    ['node -e 0', time(['-e', '0'])],
    ['node: import @oclif/core', time(['--input-type=module', '-e', "await import('@oclif/core')"])],
    ['bare oclif CLI --version', time([join(bare, 'bin', 'run.js'), '--version'], bare)],
    ['merbridge --version', time([join(root, 'bin', 'run.js'), '--version'])],
    ['merbridge --help', time([join(root, 'bin', 'run.js'), '--help'])],
    ['merbridge doctor --json', time([join(root, 'bin', 'run.js'), 'doctor', '--json'])],
  ]
  console.log(`start-up wall times, ${runs} runs each (ms)`)
  console.log('command'.padEnd(28) + 'median'.padStart(9) + 'min'.padStart(9) + 'max'.padStart(9))
  for (const [name, t] of rows)
    console.log(name.padEnd(28) + t.median.toFixed(1).padStart(9) + t.min.toFixed(1).padStart(9) + t.max.toFixed(1).padStart(9))
  const median = (name) => rows.find((r) => r[0] === name)[1].median
  const version = median('merbridge --version')
  console.log(
    `merbridge --version: ${(version - median('bare oclif CLI --version')).toFixed(1)} ms over a bare oclif CLI, x${(version / median('node -e 0')).toFixed(2)} \`node -e 0\``,
  )
} finally {
  rmSync(bare, {recursive: true, force: true})
}
