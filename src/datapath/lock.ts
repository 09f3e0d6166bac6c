/**
 * One command at a time changes an installation: enable, sync and disable take a lock file beside
 * the installation's record (created exclusively, holding the pid). A second command waits a
 * bounded time for it, then fails naming the holder; a lock whose process is gone is taken over.
 */
import {existsSync, openSync, closeSync, readFileSync, rmSync, writeSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {MerbridgeError} from '../errors.js'
import {runDir} from '../paths.js'
import type {Installation} from './installation.js'

/** How long a second command waits for the first (MERBRIDGE_LOCK_WAIT_MS changes it). */
function waitMs(): number {
  const v = Number(process.env.MERBRIDGE_LOCK_WAIT_MS)
  return Number.isFinite(v) && v >= 0 ? v : 30_000
}

function holder(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function tryTake(path: string): boolean {
  try {
    const fd = openSync(path, 'wx', 0o600)
    writeSync(fd, `${process.pid}\n`)
    closeSync(fd)
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw error
  }
}

export async function withInstallationLock<T>(inst: Installation, what: string, fn: () => Promise<T>): Promise<T> {
  await mkdir(runDir(), {recursive: true}).catch((error: unknown) => {
    throw new MerbridgeError(`cannot keep merbridge's records in ${runDir()}: ${(error as Error).message}`, {code: 'RUN_DIR', suggestion: 'MERBRIDGE_RUN_DIR names another folder'})
  })
  const path = `${inst.stateFile}.lock`
  const deadline = Date.now() + waitMs()
  while (!tryTake(path)) {
    const pid = holder(path)
    // a lock left by a process that is gone (killed) is not held
    if (pid !== undefined && !alive(pid)) {
      rmSync(path, {force: true})
      continue
    }
    if (Date.now() >= deadline)
      throw new MerbridgeError(`another merbridge command (pid ${pid ?? '?'}) is changing ${inst.dir}; ${what} did not start`, {
        code: 'LOCKED',
        suggestion: `wait for it to finish, then run ${what} again`,
      })
    await sleep(100)
  }
  try {
    return await fn()
  } finally {
    if (holder(path) === process.pid && existsSync(path)) rmSync(path, {force: true})
  }
}
