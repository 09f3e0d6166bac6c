import {execa} from 'execa'
import {randomBytes} from 'node:crypto'
import {existsSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {onPath} from '../src/node/exec.js'
import {findCgroup2, isBpffs, readMounts} from '../src/node/mounts.js'

export const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..')
export const BIN = join(ROOT, 'bin', 'run.js')

/** Why tests that run the built CLI cannot run; undefined when they can. */
export function buildSkipReason(): string | undefined {
  return existsSync(join(ROOT, 'dist', 'commands')) ? undefined : 'CLI tests need the build: run npm run build'
}

/** Why the kernel tests cannot run here, in one line; undefined when they can. */
export function kernelSkipReason(tools: string[] = ['bpftool', 'clang', 'ip']): string | undefined {
  if (process.platform !== 'linux') return `kernel tests need Linux (this is ${process.platform})`
  if (process.getuid?.() !== 0) return `kernel tests need root (running as uid ${process.getuid?.()})`
  if (!findCgroup2(readMounts()).path) return 'kernel tests need a cgroup v2 mount'
  const missing = tools.filter((t) => !onPath(t))
  if (missing.length > 0) return `kernel tests need ${missing.join(', ')} (apt-get install ${missing.join(' ')})`
  if (!existsSync(join(ROOT, 'dist', 'commands'))) return 'kernel tests need the build: run npm run build'
  return undefined
}

/** A pin folder and a state folder no other test or installation uses. */
export function uniqueInstall(): {bpffs: string; env: Record<string, string>; cleanup: () => void} {
  const id = randomBytes(4).toString('hex')
  const runDir = mkdtempSync(join(tmpdir(), 'mb-run-'))
  return {
    bpffs: `/sys/fs/bpf/merbridge-test-${id}`,
    env: {MERBRIDGE_RUN_DIR: runDir},
    cleanup: () => rmSync(runDir, {recursive: true, force: true}),
  }
}

export async function cli(args: string[], env: Record<string, string> = {}, input?: string) {
  const r = await execa(process.execPath, [BIN, ...args], {env: {...env, NO_COLOR: '1'}, reject: false, input, stdin: input === undefined ? 'ignore' : undefined})
  return {code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr)}
}

export function parseJson<T = any>(text: string): T {
  try {
    return JSON.parse(text) as T
  } catch {
    throw new Error(`not JSON: ${text.slice(0, 500)}`)
  }
}

/** bpffs must be mounted for tests that pin directly; mounts it if needed and says whether it did. */
export async function ensureBpffs(): Promise<() => Promise<void>> {
  if (isBpffs(readMounts(), '/sys/fs/bpf')) return async () => {}
  await execa('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf'])
  return async () => {
    await execa('umount', ['/sys/fs/bpf'], {reject: false})
  }
}
