import {existsSync} from 'node:fs'
import {homedir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

/**
 * The package root: the nearest folder above this module holding bpf/ and package.json. This
 * module runs from src/ (bin/dev.js, tests), dist/ (tsc) and dist/chunks/ (the bundled commands).
 */
export const PACKAGE_ROOT = findPackageRoot(dirname(fileURLToPath(import.meta.url)))
export const BPF_SOURCE_DIR = join(PACKAGE_ROOT, 'bpf')

export const DEFAULT_BPFFS_DIR = '/sys/fs/bpf/merbridge'
export const BPFFS_MOUNT = '/sys/fs/bpf'

/** Compiled objects, keyed by a hash of their inputs. */
export function cacheDir(): string {
  if (process.env.MERBRIDGE_CACHE_DIR) return process.env.MERBRIDGE_CACHE_DIR
  const base = process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache')
  return join(base, 'merbridge')
}

/** Where enable records what it did (tmpfs, cleared at boot like the bpffs pins it describes). */
export function runDir(): string {
  return process.env.MERBRIDGE_RUN_DIR ?? '/run/merbridge'
}

/**
 * The host's /proc: where pods' network namespaces, addresses, resolv.conf and process names are
 * read. Inside a container (the DaemonSet) the host's is mounted elsewhere (--host-proc); our own
 * process is still read through /proc/self.
 */
export function hostProc(): string {
  const dir = process.env.MERBRIDGE_HOST_PROC
  return dir === undefined || dir === '' ? '/proc' : dir
}

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'bpf'))) return dir
    if (dirname(dir) === dir) return resolve(from, '..')
  }
}
