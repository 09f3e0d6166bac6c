// `npm run test:kernels`: the kernel matrix. Runs a selection of the kernel tests on this machine's
// kernel and on Debian 12's own kernel (the generic flavour of `linux-image-amd64`, 6.1 today) booted
// in QEMU without acceleration, the host's files shared into it over 9p under a writable overlay.
// Prints one line per kernel: release, passed, failed, skipped. Exit 1 if any failed.
//
//   tsx scripts/kernels.ts [--only host|vm] [--tests file,file] [--console] [--exec script.sh]
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync, readdirSync, mkdtempSync} from 'node:fs'
import {homedir, release, tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
/**
 * What each kernel runs: enable, the datapath (first request through both sidecars, payload socket
 * to socket, getsockopt), status, dump-maps, sync and disable; the optional features forced off;
 * the layouts against the kernel's own dump; and the quick part of the equivalence matrix (IPv4
 * and IPv6, inbound from outside the cgroup; under Istio's rules and under merbridge).
 * MERBRIDGE_MATRIX=quick also leaves out what `npm test` proves here and emulation makes slowest.
 */
const SELECTION = [
  'test/kernel/datapath.test.ts',
  'test/kernel/fallbacks.test.ts',
  'test/kernel/layout.test.ts',
  'test/kernel/ordering.test.ts',
  'test/kernel/equivalence.test.ts',
]
/**
 * A whole run inside the VM, boot included: it runs several times slower than the host. One VM at
 * a time: with two side by side on a 2-CPU machine (one keeps about 1.5 CPUs busy), each with half
 * the selection, the datapath suite ran two to three times slower and past its own deadline.
 */
const VM_DEADLINE_MS = 60 * 60_000
const MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay']

interface Row {
  kernel: string
  where: string
  passed: number
  failed: number
  skipped: number
  ok: boolean
  note?: string
}

function sh(cmd: string, args: string[], opts: {cwd?: string; input?: string} = {}): string {
  const r = spawnSync(cmd, args, {cwd: opts.cwd, input: opts.input, encoding: 'utf8', maxBuffer: 64 * 2 ** 20})
  if (r.status !== 0)
    throw new Error(
      `${cmd} ${args.slice(0, 3).join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || '').trim().split('\n').slice(-3).join(' | ')}`,
    )
  return r.stdout
}

/** The counts node's test runner prints at its end (ℹ pass N ...). */
export function parseCounts(log: string): {passed: number; failed: number; skipped: number} | undefined {
  const n = (label: string) => {
    const m = new RegExp(`^ℹ ${label} (\\d+)$`, 'm').exec(log)
    return m ? Number(m[1]) : undefined
  }
  const passed = n('pass')
  const failed = n('fail')
  if (passed === undefined || failed === undefined) return undefined
  return {passed, failed: failed + (n('cancelled') ?? 0), skipped: (n('skipped') ?? 0) + (n('todo') ?? 0)}
}

function row(kernel: string, where: string, log: string, exitCode: number | null, note?: string): Row {
  const counts = parseCounts(log)
  if (!counts) return {kernel, where, passed: 0, failed: 1, skipped: 0, ok: false, note: note ?? 'the test runner printed no counts'}
  return {kernel, where, ...counts, ok: exitCode === 0 && counts.failed === 0, note}
}

/** Children to end with this script (a VM would run on for its whole deadline), and folders to remove. */
const children = new Set<ReturnType<typeof spawn>>()
const folders = new Set<string>()
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.on(signal, () => {
    for (const child of children) child.kill('SIGKILL')
    for (const dir of folders) rmSync(dir, {recursive: true, force: true})
    process.exit(signal === 'SIGINT' ? 130 : 143)
  })

/** A child's exit code and everything it printed, shown as it comes when `show`. */
function collect(
  command: string,
  args: string[],
  opts: {env?: NodeJS.ProcessEnv; deadlineMs?: number; show: boolean},
): Promise<{code: number | null; output: string}> {
  return new Promise((done) => {
    const chunks: string[] = []
    const child = spawn(command, args, {cwd: ROOT, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe']})
    children.add(child)
    const timer = opts.deadlineMs ? setTimeout(() => child.kill('SIGKILL'), opts.deadlineMs) : undefined
    const take = (chunk: Buffer) => {
      chunks.push(chunk.toString())
      if (opts.show) process.stdout.write(chunk)
    }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    child.on('error', (error) => chunks.push(`${command}: ${error.message}\n`))
    child.on('close', (code) => {
      children.delete(child)
      clearTimeout(timer)
      done({code, output: chunks.join('')})
    })
  })
}

async function runHost(tests: string[]): Promise<Row> {
  console.log(`kernels: host ${release()}: ${tests.join(' ')}`)
  const r = await collect(process.execPath, ['scripts/test.js', ...tests], {env: {...process.env, MERBRIDGE_MATRIX: 'quick'}, show: true})
  return row(release(), 'host', r.output, r.code)
}

function failures(log: string): string {
  const lines = log.split('\n')
  const at = lines.findIndex((l) => l.startsWith('✖ failing tests:'))
  return (at >= 0 ? lines.slice(at, at + 80) : lines.slice(-60)).join('\n')
}

/** Debian's current generic 6.1 kernel, extracted and depmod'ed once into the cache. */
function debianKernel(cache: string): {release: string; vmlinuz: string; modules: string} {
  const depends = sh('apt-cache', ['depends', 'linux-image-amd64'])
  const pkg = /Depends: (linux-image-[\d.]+-\d+-amd64)\b/.exec(depends)?.[1]
  if (!pkg) throw new Error('apt-cache names no kernel behind linux-image-amd64: run apt-get update')
  const rel = pkg.replace(/^linux-image-/, '')
  const dir = join(cache, rel)
  const vmlinuz = join(dir, 'boot', `vmlinuz-${rel}`)
  const modules = join(dir, 'lib', 'modules', rel)
  if (!existsSync(join(modules, 'modules.dep'))) {
    const tmp = mkdtempSync(join(cache, 'download-'))
    try {
      // the generic flavour carries the 9p modules; the cloud flavour does not
      const download = () => sh('apt-get', ['download', `${pkg}-unsigned`], {cwd: tmp})
      try {
        download()
      } catch {
        sh('apt-get', ['update', '-qq'])
        download()
      }
      const deb = readdirSync(tmp).find((f) => f.endsWith('.deb'))
      if (!deb) throw new Error(`apt-get download ${pkg}-unsigned left no package`)
      rmSync(dir, {recursive: true, force: true})
      sh('dpkg-deb', ['-x', join(tmp, deb), dir])
      sh('depmod', ['-b', dir, rel])
    } finally {
      rmSync(tmp, {recursive: true, force: true})
    }
  }
  return {release: rel, vmlinuz, modules}
}

/** The modules to insmod, each after what it depends on (modules.dep lists direct and indirect dependencies). */
export function loadOrder(modulesDep: string, wanted: string[]): string[] {
  const deps = new Map<string, string[]>()
  for (const line of modulesDep.split('\n')) {
    const [mod, rest = ''] = line.split(':')
    if (mod) deps.set(mod, rest.trim().split(/\s+/).filter(Boolean))
  }
  const order: string[] = []
  for (const name of wanted) {
    const mod = [...deps.keys()].find((m) => m.endsWith(`/${name}.ko`))
    if (!mod) throw new Error(`the kernel has no module ${name}`)
    for (const m of [...(deps.get(mod) ?? [])].reverse().concat(mod)) if (!order.includes(m)) order.push(m)
  }
  return order
}

function initramfs(kernel: {modules: string}, out: string): void {
  const stage = mkdtempSync(join(tmpdir(), 'merbridge-initramfs-'))
  try {
    for (const d of ['bin', 'lib']) mkdirSync(join(stage, d))
    // busybox-static's: the initramfs has no libraries
    if (!existsSync('/bin/busybox')) throw new Error('busybox is missing: apt-get install busybox-static')
    copyFileSync('/bin/busybox', join(stage, 'bin', 'busybox'))
    copyFileSync(join(ROOT, 'scripts', 'vm', 'init'), join(stage, 'init'))
    sh('chmod', ['755', join(stage, 'init'), join(stage, 'bin', 'busybox')])
    const order = loadOrder(readFileSync(join(kernel.modules, 'modules.dep'), 'utf8'), MODULES)
    for (const m of order) {
      mkdirSync(dirname(join(stage, m)), {recursive: true})
      copyFileSync(join(kernel.modules, m), join(stage, m))
    }
    writeFileSync(join(stage, 'modules.order'), order.join('\n') + '\n')
    const files = sh('find', ['.', '-mindepth', '1'], {cwd: stage})
    const cpio = spawnSync('cpio', ['-o', '-H', 'newc', '--quiet'], {cwd: stage, input: files, maxBuffer: 512 * 2 ** 20})
    if (cpio.status !== 0) throw new Error(`cpio failed: ${String(cpio.stderr)}`)
    writeFileSync(out, cpio.stdout)
  } finally {
    rmSync(stage, {recursive: true, force: true})
  }
}

async function runVm(tests: string[], showConsole: boolean, exec?: string): Promise<Row> {
  const cache = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'merbridge', 'kernels')
  mkdirSync(cache, {recursive: true})
  const kernel = debianKernel(cache)
  const work = mkdtempSync(join(tmpdir(), 'merbridge-vm-'))
  folders.add(work)
  try {
    return await bootAndTest(kernel, work, tests, showConsole, exec)
  } finally {
    rmSync(work, {recursive: true, force: true})
    folders.delete(work)
  }
}

async function bootAndTest(
  kernel: {release: string; vmlinuz: string; modules: string},
  work: string,
  tests: string[],
  showConsole: boolean,
  exec?: string,
): Promise<Row> {
  const outDir = join(work, 'out')
  mkdirSync(outDir)
  // --exec: a script of the developer's runs instead of the tests (its output is the test log)
  if (exec) copyFileSync(exec, join(outDir, 'exec.sh'))
  const initrd = join(work, 'initrd.cpio')
  initramfs(kernel, initrd)
  const append = [
    'console=ttyS0',
    'panic=-1',
    'loglevel=4',
    `mb.guest=${join(ROOT, 'scripts', 'vm', 'guest.sh')}`,
    `mb.checkout=${ROOT}`,
    `mb.modules=${kernel.modules}`,
    `mb.tests=${tests.join(',')}`,
  ].join(' ')
  if (/\s/.test(ROOT)) throw new Error(`the checkout's path has a blank, which the VM's kernel command line cannot carry: ${ROOT}`)
  const args = [
    ...['-machine', 'q35', '-accel', 'tcg,thread=multi', '-cpu', 'max', '-smp', '2', '-m', '6G'],
    ...['-nographic', '-no-reboot', '-nic', 'none', '-device', 'virtio-rng-pci'],
    ...['-kernel', kernel.vmlinuz, '-initrd', initrd, '-append', append],
    // multidevs=remap: / spans several filesystems whose inode numbers would collide under the overlay
    ...['-virtfs', 'local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap'],
    ...['-virtfs', `local,path=${outDir},mount_tag=out,security_model=passthrough`],
  ]
  console.log(`kernels: vm ${kernel.release} (QEMU without acceleration): ${tests.join(' ')}`)
  const started = Date.now()
  const vm = await collect('qemu-system-x86_64', args, {deadlineMs: VM_DEADLINE_MS, show: showConsole})
  const minutes = ((Date.now() - started) / 60_000).toFixed(1)
  const log = existsSync(join(outDir, 'test.log')) ? readFileSync(join(outDir, 'test.log'), 'utf8') : ''
  const rc = existsSync(join(outDir, 'rc')) ? Number(readFileSync(join(outDir, 'rc'), 'utf8').trim()) : null
  console.log(log)
  if (rc !== 0)
    console.log(
      `${failures(log)}\nkernels: the VM's console, last lines (qemu exit ${vm.code}):\n${vm.output.split('\n').slice(-40).join('\n')}`,
    )
  return row(kernel.release, `vm, ${minutes} min`, log, rc, rc === null ? 'the VM ended before its tests did' : undefined)
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2)
  const flag = (name: string) => {
    const i = argv.indexOf(name)
    return i >= 0 ? argv[i + 1] : undefined
  }
  const only = flag('--only')
  const tests = flag('--tests')?.split(',') ?? SELECTION
  for (const t of tests) if (!existsSync(join(ROOT, t))) throw new Error(`no test file ${t}`)
  if (!existsSync(join(ROOT, 'dist'))) throw new Error('build first: npm run build')
  const rows: Row[] = []
  if (only !== 'vm') rows.push(await runHost(tests))
  if (only !== 'host') rows.push(await runVm(tests, argv.includes('--console'), flag('--exec')))
  console.log('')
  for (const r of rows)
    console.log(
      `kernel ${r.kernel} (${r.where}): ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped${r.note ? ` (${r.note})` : ''}`,
    )
  const total = (k: 'passed' | 'failed' | 'skipped') => rows.reduce((n, r) => n + r[k], 0)
  console.log(`kernels: ${total('passed')} passed, ${total('failed')} failed, ${total('skipped')} skipped`)
  process.exitCode = rows.every((r) => r.ok) ? 0 : 1
}

await main()
