import {realpathSync, statSync} from 'node:fs'
import {delimiter, isAbsolute, join} from 'node:path'
import {ToolNotFoundError} from '../errors.js'
import {INSTALL_HINTS, run, toolPath} from '../exec.js'

/**
 * Which compiler would build the objects, without running it (status asks on every call, and a
 * clang process costs more than the rest of status): the resolved binary, its size and mtime. An
 * upgrade changes them, so the cache and `status` still notice a new compiler.
 */
export function clangIdentity(): string {
  const tool = toolPath('clang')
  const candidates = isAbsolute(tool)
    ? [tool]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter(Boolean)
        .map((d) => join(d, tool))
  for (const c of candidates) {
    try {
      const real = realpathSync(c)
      const st = statSync(real)
      if (st.isFile()) return `${real} ${st.size} ${st.mtimeMs}`
    } catch {
      // not in this folder
    }
  }
  throw new ToolNotFoundError('clang', INSTALL_HINTS.clang ?? 'install clang')
}

export async function clangVersion(): Promise<string> {
  const {stdout} = await run('clang', ['--version'])
  return /version (\d+\.\d+\.\d+)/.exec(stdout)?.[1] ?? stdout.split('\n')[0] ?? ''
}

/** Whether this clang was built with the BPF backend (`llc --version` lists it; clang prints targets too). */
export async function clangTargetsBpf(): Promise<boolean> {
  const r = await run('clang', ['-print-targets'], {allowFailure: true})
  return r.exitCode === 0 && /\bbpf\b/.test(r.stdout)
}

/** Debian/Ubuntu keep asm/ headers in a per-architecture folder that BPF builds must be told about. */
export function multiarchInclude(arch = process.arch): string {
  const triple: Record<string, string> = {
    x64: 'x86_64-linux-gnu',
    arm64: 'aarch64-linux-gnu',
    s390x: 's390x-linux-gnu',
    ppc64: 'powerpc64le-linux-gnu',
  }
  return `/usr/include/${triple[arch] ?? `${arch}-linux-gnu`}`
}

export const BPF_CFLAGS = ['-O2', '-g', '-target', 'bpf', '-Wall', '-Werror'] as const
export const HOST_CFLAGS = ['-O2', '-Wall', '-Werror'] as const

/** A compile on a slow or loaded node (an emulated one takes minutes): generous, never endless. */
const COMPILE_TIMEOUT_MS = 600_000

export async function compileBpf(source: string, output: string, extra: readonly string[] = []): Promise<void> {
  await run('clang', [...BPF_CFLAGS, ...extra, `-I${multiarchInclude()}`, '-c', source, '-o', output], {timeoutMs: COMPILE_TIMEOUT_MS})
}

export async function compileHost(
  source: string,
  output: string,
  libs: readonly string[] = [],
  flags: readonly string[] = [],
): Promise<void> {
  await run('clang', [...HOST_CFLAGS, ...flags, source, '-o', output, ...libs.map((l) => `-l${l}`)], {timeoutMs: COMPILE_TIMEOUT_MS})
}
