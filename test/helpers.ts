import assert from 'node:assert/strict'
import {execa, type Result, type ResultPromise} from 'execa'
import {randomBytes} from 'node:crypto'
import {existsSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {Installation} from '../src/datapath/installation.js'
import type {DumpableMap, MapDump, RowsOf} from '../src/datapath/dump-maps.js'
import {APP_PORT, type Lab} from '../src/lab/lab.js'
import {POLL_DEADLINE_MS} from '../src/lab/process.js'
import {onPath} from '../src/exec.js'
import {findCgroup2, isBpffs, readMounts} from '../src/node/mounts.js'

/**
 * How much slower than this machine the tests run (MERBRIDGE_TEST_TIME_SCALE): an emulated kernel
 * of the kernel matrix (scripts/kernels.ts) runs several times slower. Suites' time limits scale with it.
 */
export const TIME_SCALE = Math.max(1, Number(process.env.MERBRIDGE_TEST_TIME_SCALE) || 1)

/**
 * The kernel matrix's run (MERBRIDGE_MATRIX=quick, scripts/kernels.ts): suites leave out what
 * `npm test` already proves on this machine and costs most under emulation.
 */
export const MATRIX_QUICK = process.env.MERBRIDGE_MATRIX === 'quick'

/** A suite's time limit on this machine, scaled for a slower one. */
export const suiteTimeout = (ms: number) => ms * TIME_SCALE

export const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..')
export const BIN = join(ROOT, 'bin', 'run.js')

/**
 * Outside CI, a test that this machine cannot run is skipped with its reason in one line. CI must
 * prove everything the README claims, so there a reason to skip fails the run instead, naming
 * what is missing (a missing install step must not hide behind a green run).
 */
export function skipOrFail(reason: string | undefined): string | undefined {
  if (reason && process.env.CI) throw new Error(`CI runs every test, but this machine cannot: ${reason}`)
  return reason
}

/** Why tests that run the built CLI cannot run; undefined when they can. */
export function buildSkipReason(): string | undefined {
  return skipOrFail(existsSync(join(ROOT, 'dist', 'commands')) ? undefined : 'CLI tests need the build: run npm run build')
}

/** Why the kernel tests cannot run here, in one line; undefined when they can. */
export function kernelSkipReason(tools: string[] = ['bpftool', 'clang', 'ip'], files: string[] = []): string | undefined {
  return skipOrFail(kernelGap(tools, files))
}

function kernelGap(tools: string[], files: string[]): string | undefined {
  if (process.platform !== 'linux') return `kernel tests need Linux (this is ${process.platform})`
  if (process.getuid?.() !== 0) return `kernel tests need root (running as uid ${process.getuid?.()})`
  if (!findCgroup2(readMounts()).path) return 'kernel tests need a cgroup v2 mount'
  const absent = [...tools.filter((t) => !onPath(t)), ...files.filter((f) => !existsSync(f))]
  if (absent.length > 0) return `kernel tests need ${absent.join(', ')} (bash scripts/setup.sh installs them)`
  if (!existsSync(join(ROOT, 'dist', 'commands'))) return 'kernel tests need the build: run npm run build'
  return undefined
}

/** A pin folder and a state folder no other test or installation uses. */
export function uniqueInstall(): {
  bpffs: string
  env: Record<string, string>
  installation: (bpffs?: string) => Installation
  cleanup: () => void
} {
  const id = randomBytes(4).toString('hex')
  const runDir = mkdtempSync(join(tmpdir(), 'mb-run-'))
  const bpffs = `/sys/fs/bpf/merbridge-test-${id}`
  return {
    bpffs,
    env: {MERBRIDGE_RUN_DIR: runDir},
    // the installation as the CLI run with `env` sees it, record included
    installation: (dir = bpffs) => new Installation(dir, runDir),
    cleanup: () => rmSync(runDir, {recursive: true, force: true}),
  }
}

/** A suite's end: disable its installation, remove its lab and its run folder (also after a failure). */
export async function removeLab(lab: Lab, install: ReturnType<typeof uniqueInstall>): Promise<void> {
  await cli(['disable', '--bpffs', install.bpffs], install.env)
  await lab.destroy()
  install.cleanup()
}

export async function cli(args: string[], env: Record<string, string> = {}, input?: string) {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: {...env, NO_COLOR: '1'},
    reject: false,
    input,
    stdin: input === undefined ? 'ignore' : undefined,
  })
  return {code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr}
}

/** A CLI command left running (`enable --watch`, `sync --watch`), its stdout and stderr collected as they come. */
export class RunningCli {
  output = ''
  readonly process: ResultPromise

  constructor(args: string[], env: Record<string, string> = {}) {
    this.process = execa(process.execPath, [BIN, ...args], {env: {...env, NO_COLOR: '1'}, reject: false, stdin: 'ignore'})
    this.process.stdout?.on('data', (d: Buffer) => (this.output += d.toString()))
    this.process.stderr?.on('data', (d: Buffer) => (this.output += d.toString()))
  }

  /** SIGTERM, as systemd or the kubelet stops it, and its end. */
  async stop(): Promise<Result> {
    this.process.kill('SIGTERM')
    return await this.process
  }

  /** SIGKILL, for a test's clean-up: its end, whatever it was. */
  async kill(): Promise<void> {
    this.process.kill('SIGKILL')
    await this.process
  }
}

/** The CLI's --json answer, as the type the command returns (the test then asserts its contents). */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- T names the command's declared result type at each call
export function parseJson<T>(text: string): T {
  try {
    return JSON.parse(text) as T
  } catch {
    throw new Error(`not JSON: ${text.slice(0, 500)}`)
  }
}

/** bpffs must be mounted for tests that pin directly; mounts it if needed and says whether it did. */
export async function ensureBpffs(): Promise<() => Promise<void>> {
  if (isBpffs(readMounts(), '/sys/fs/bpf')) return () => Promise.resolve()
  await execa('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf'])
  return async () => {
    await execa('umount', ['/sys/fs/bpf'], {reject: false})
  }
}

/**
 * Poll until the condition holds and return how long that took (a figure for diagnostics, never
 * for an assertion); fail after a deadline generous enough for a loaded machine, saying what was
 * awaited and, from `context`, what was seen.
 */
export async function eventually(
  what: string,
  cond: () => boolean | Promise<boolean>,
  context: () => string = () => '',
  deadlineMs = POLL_DEADLINE_MS,
): Promise<number> {
  const t0 = Date.now()
  while (!(await cond())) {
    if (Date.now() - t0 > deadlineMs)
      throw new Error(`gave up waiting for ${what} after ${deadlineMs / 1000} s${context() ? `; ${context()}` : ''}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  return Date.now() - t0
}

/** The rows of one map in a `dump-maps --json` answer; fails when the map is not in it. */
export function rowsOf<K extends DumpableMap>(maps: MapDump[], name: K): RowsOf[K][] {
  const m = maps.find((x) => x.map === name)
  if (!m) throw new Error(`no ${name} in the dump: ${maps.map((x) => x.map).join(', ')}`)
  return m.rows as RowsOf[K][]
}

/** n requests a -> b through both sidecars: each adds a session to a's outbound and b's inbound listener. */
/**
 * Requests from pod `from` to `url` (an app answering /whoami), a new connection each, for as long
 * as `op` runs and three at least: the peer the app saw for each (127.0.0.6 is the inbound
 * sidecar's upstream; `failed: ...` a request that failed) and how many connections `from`'s
 * outbound sidecar took meanwhile.
 */
export async function requestsDuring(
  lab: Lab,
  from: string,
  url: string,
  op: () => Promise<void>,
): Promise<{peers: string[]; outbound: number}> {
  const peers: string[] = []
  const before = (await lab.sidecars.sessions(from)).outbound
  const run = {going: true}
  const load = (async () => {
    while (run.going || peers.length < 3) {
      const r = await lab.clients.get(from, url)
      peers.push(
        r.status === 200 && r.body
          ? (JSON.parse(r.body) as {remoteAddress: string}).remoteAddress
          : `failed: ${r.error ?? String(r.status)}`,
      )
    }
  })()
  try {
    await op()
  } finally {
    run.going = false
    await load
  }
  return {peers, outbound: (await lab.sidecars.sessions(from)).outbound - before}
}

/** What requestsDuring saw: every request passed both sidecars, none failed. */
export function assertAllThroughSidecars(r: {peers: string[]; outbound: number}): void {
  assert.deepEqual([...new Set(r.peers)], ['127.0.0.6'], r.peers.join(', '))
  assert.ok(r.outbound >= r.peers.length, `the outbound sidecar took ${r.outbound} of ${r.peers.length} requests`)
}

export async function requestsPassBothSidecars(lab: Lab, n: number): Promise<void> {
  const [a0, b0] = [await lab.sidecars.sessions('a'), await lab.sidecars.sessions('b')]
  for (let i = 0; i < n; i++) {
    const r = await lab.clients.get('a', `http://${lab.pod('b').ip}:${APP_PORT}/whoami`)
    assert.equal(r.status, 200, r.error)
  }
  const [a1, b1] = [await lab.sidecars.sessions('a'), await lab.sidecars.sessions('b')]
  assert.ok(a1.outbound >= a0.outbound + n, `a's outbound sidecar: ${a0.outbound} -> ${a1.outbound}`)
  assert.ok(b1.inbound >= b0.inbound + n, `b's inbound sidecar: ${b0.inbound} -> ${b1.inbound}`)
}
