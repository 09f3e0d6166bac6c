import {execa, ExecaError, type Options} from 'execa'
import {type ChildProcess, spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {ToolFailedError, ToolNotFoundError} from './errors.js'

/** How to install each external tool, for the error a user sees when it is missing. */
export const INSTALL_HINTS: Record<string, string> = {
  bpftool: 'install bpftool: apt-get install bpftool',
  clang: 'install clang: apt-get install clang llvm libbpf-dev',
  ip: 'install iproute2: apt-get install iproute2',
  nsenter: 'install util-linux: apt-get install util-linux',
  haproxy: 'install haproxy: apt-get install haproxy',
  iptables: 'install iptables: apt-get install iptables',
  wrk: 'install wrk: apt-get install wrk',
}

/** Whether a program is on PATH (no shell, no spawn). */
export function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => dir && existsSync(join(dir, tool)))
}

/** Fail, before anything is built, naming every missing program and how to install them. */
export function requireTools(tools: string[], purpose: string, install: string): void {
  const missing = tools.filter((t) => !onPath(toolPath(t)) && !existsSync(toolPath(t)))
  if (missing.length > 0) throw new ToolNotFoundError(`${missing.join(', ')} (needed for ${purpose})`, install)
}

/** Environment overrides for tool paths (MERBRIDGE_BPFTOOL, MERBRIDGE_CLANG). */
export function toolPath(tool: string): string {
  return process.env[`MERBRIDGE_${tool.toUpperCase()}`] ?? tool
}

let pdeathsig: boolean | undefined

/**
 * The program and arguments to spawn: under `setpriv --pdeathsig KILL` where there is one, so a
 * child dies with the CLI even when the CLI is killed by SIGKILL (a bpftool left running would go
 * on pinning and attaching after the enable that started it is gone, with nothing to undo it).
 */
function spawnArgs(tool: string, args: readonly string[]): [string, string[]] {
  const file = toolPath(tool)
  pdeathsig ??= onPath('setpriv')
  if (!pdeathsig) return [file, [...args]]
  // setpriv would say "failed to execute" with exit 127: the missing tool is named as ever
  if (!existsSync(file) && !onPath(file)) throw new ToolNotFoundError(tool, INSTALL_HINTS[tool] ?? `install ${tool}`)
  return ['setpriv', ['--pdeathsig', 'KILL', '--', file, ...args]]
}

export interface RunResult {
  stdout: string
  stderr: string
  exitCode: number
}

/**
 * The one place the CLI runs another program: no shell, a timeout, and failures turned into
 * errors that say what to do. With `allowFailure` a non-zero exit is returned, not thrown.
 */
export async function run(
  tool: string,
  args: readonly string[],
  opts: {input?: string; timeoutMs?: number; allowFailure?: boolean; env?: Record<string, string>} = {},
): Promise<RunResult> {
  const options: Options = {
    input: opts.input,
    timeout: opts.timeoutMs ?? 60_000,
    reject: false,
    stripFinalNewline: true,
    env: opts.env,
    stdin: opts.input === undefined ? 'ignore' : undefined,
  }
  const result = await execa(...spawnArgs(tool, args), options)
  const stdout = String(result.stdout ?? '')
  const stderr = String(result.stderr ?? '')
  if (result.failed && result.exitCode === undefined) {
    const cause = result instanceof ExecaError ? result : undefined
    if ((cause?.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' || String(result.message).includes('ENOENT'))
      throw new ToolNotFoundError(tool, INSTALL_HINTS[tool] ?? `install ${tool}`)
    throw new ToolFailedError(
      `${tool} ${args.slice(0, 3).join(' ')}`,
      result.timedOut ? 'timed out' : String(result.shortMessage ?? result.message),
      stderr,
    )
  }
  const exitCode = result.exitCode ?? 1
  if (exitCode !== 0 && !opts.allowFailure) {
    const detail = lastLine(stderr) || lastLine(stdout) || `exit code ${exitCode}`
    throw new ToolFailedError(`${tool} ${args.slice(0, 3).join(' ')}`, detail, stderr, permissionHint(stderr))
  }
  return {stdout, stderr, exitCode}
}

function lastLine(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
  return lines.at(-1) ?? ''
}

function permissionHint(stderr: string): string | undefined {
  if (/Operation not permitted|Permission denied|EPERM|EACCES/i.test(stderr))
    return 'run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)'
  return undefined
}

/**
 * Like run(), for output too large to hold: stdout is handed over chunk by chunk as it arrives.
 * Throws as run() does on a missing tool or a non-zero exit.
 */
export async function runStreaming(
  tool: string,
  args: readonly string[],
  onStdout: (chunk: string) => void,
  opts: {timeoutMs?: number} = {},
): Promise<void> {
  const child = execa(...spawnArgs(tool, args), {
    timeout: opts.timeoutMs ?? 120_000,
    reject: false,
    buffer: {stdout: false, stderr: true},
    stdin: 'ignore',
  })
  child.stdout.setEncoding('utf8')
  // a throw in a 'data' handler would escape every caller as an uncaught exception: keep it for
  // after the exit, which says more when the tool failed (its output then is its error)
  let failure: Error | undefined
  let head = ''
  child.stdout.on('data', (chunk: string) => {
    if (head.length < 1024) head += chunk.slice(0, 1024)
    if (failure !== undefined) return
    try {
      onStdout(chunk)
    } catch (error) {
      failure = error instanceof Error ? error : new Error(String(error))
      child.kill()
    }
  })
  const result = await child
  const stderr = result.stderr
  // bpftool -j reports its error on stdout, as {"error":"..."}: the tool failed by itself, even
  // when our kill (after the handler refused that output) got to it before its exit
  const fromJson = /^\s*\{"error":\s*"(.*)"\}/.exec(head)?.[1]
  // killed by us: what the handler threw is the story (unless the tool had failed by itself)
  if (failure !== undefined && fromJson === undefined && (result.exitCode === undefined || result.exitCode === 0)) throw failure
  if (result.failed && result.exitCode === undefined && fromJson === undefined) {
    if (String(result.message).includes('ENOENT')) throw new ToolNotFoundError(tool, INSTALL_HINTS[tool] ?? `install ${tool}`)
    throw new ToolFailedError(
      `${tool} ${args.slice(0, 3).join(' ')}`,
      result.timedOut ? 'timed out' : String(result.shortMessage ?? result.message),
      stderr,
    )
  }
  if (result.exitCode !== 0 || fromJson !== undefined) {
    const said = lastLine(stderr) || (fromJson ?? `exit code ${result.exitCode}`)
    throw new ToolFailedError(`${tool} ${args.slice(0, 3).join(' ')}`, said, stderr || head, permissionHint(stderr || head))
  }
}

export type {ChildProcess}

/**
 * A program that runs until its caller stops it (the lab's sidecars, apps and clients): no shell,
 * no timeout, stdout and stderr piped to the caller, which owns it and stops it by pid.
 */
export function startProcess(command: string, args: readonly string[]): ChildProcess {
  return spawn(command, [...args], {stdio: ['ignore', 'pipe', 'pipe']})
}
