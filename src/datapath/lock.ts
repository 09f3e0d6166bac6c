/**
 * One command at a time changes an installation: enable, sync and disable hold a lock the kernel
 * releases with its holder, a unix socket bound in the abstract namespace (the host's network
 * namespace, which the node service shares: hostNetwork). Nothing is left behind by a killed
 * holder: no file to judge stale, no pid that another process (or another pid namespace) may have.
 * A second command waits a bounded time for it, then fails naming the holder when it can.
 */
import {createHash} from 'node:crypto'
import {readFileSync, rmSync, writeFileSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {createServer, type Server} from 'node:net'
import {setTimeout as sleep} from 'node:timers/promises'
import {MerbridgeError} from '../errors.js'
import {runDir} from '../paths.js'
import {join} from 'node:path'
import type {Installation} from './installation.js'

/** How long a second command waits for the first (MERBRIDGE_LOCK_WAIT_MS changes it). */
function waitMs(): number {
  const v = Number(process.env.MERBRIDGE_LOCK_WAIT_MS)
  return Number.isFinite(v) && v >= 0 ? v : 30_000
}

/** The abstract socket name of a lock: a hash, since names are short and paths may be long. */
export function lockName(key: string): string {
  return `\0merbridge-lock-${createHash('sha256').update(key).digest('hex').slice(0, 32)}`
}

/** Bind the lock's name: the server while this process holds it, undefined when another does. */
function tryTake(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)))
    // the lock never keeps the process alive on its own
    server.listen({path: name}, () => resolve(server.unref()))
  })
}

/** Who holds it, as the holder wrote it down (for the message only: the socket is the lock). */
function holderOf(note: string): string {
  try {
    return readFileSync(note, 'utf8').trim() || '?'
  } catch {
    return '?'
  }
}

/** Run fn holding the lock named by key; `note` is where the holder's pid is written for others to name. */
export async function withLock<T>(key: string, note: string, what: string, subject: string, fn: () => Promise<T>): Promise<T> {
  const name = lockName(key)
  const deadline = Date.now() + waitMs()
  let server = await tryTake(name)
  while (!server) {
    if (Date.now() >= deadline)
      throw new MerbridgeError(`another merbridge command (pid ${holderOf(note)}) is changing ${subject}; ${what} did not start`, {
        code: 'LOCKED',
        suggestion: `wait for it to finish, then run ${what} again`,
      })
    await sleep(100)
    server = await tryTake(name)
  }
  try {
    writeFileSync(note, `${process.pid}\n`)
    return await fn()
  } finally {
    rmSync(note, {force: true})
    await new Promise((resolve) => server.close(resolve))
  }
}

export async function withInstallationLock<T>(inst: Installation, what: string, fn: () => Promise<T>): Promise<T> {
  await mkdir(runDir(), {recursive: true}).catch((error: unknown) => {
    throw new MerbridgeError(`cannot keep merbridge's records in ${runDir()}: ${(error as Error).message}`, {
      code: 'RUN_DIR',
      suggestion: 'MERBRIDGE_RUN_DIR names another folder',
    })
  })
  // by the pin folder: the record's folder may differ between two commands on one installation
  return withLock(inst.dir, `${inst.stateFile}.lock`, what, inst.dir, fn)
}

/**
 * Held by enable around the installation's own lock: which cgroup an installation may attach to
 * depends on every other installation's (one per cgroup, its ancestors and descendants), so two
 * enables decide one after the other.
 */
export async function withNodeLock<T>(what: string, fn: () => Promise<T>): Promise<T> {
  await mkdir(runDir(), {recursive: true})
  return withLock('merbridge node', join(runDir(), 'node.lock'), what, 'the installations of this node', fn)
}
