/**
 * Reading a file as a pod sees it, through a process's root (/proc/PID/root), when the pod may be
 * hostile: its links are resolved inside that root (never out of it into the node's files), the
 * file is opened without blocking (a FIFO would stall the agent's event loop) and never as a link,
 * only a regular file is read, and at most maxBytes of it (a link to /dev/zero would exhaust
 * memory). Anything else is "cannot be read": the caller decides what that costs the pod alone.
 */
import {closeSync, constants, fstatSync, lstatSync, openSync, readlinkSync, readSync} from 'node:fs'
import {join} from 'node:path'

/** Links followed in one path at most, as the kernel's own limit. */
const MAX_LINKS = 40

/** The path under `root` that `path` names as seen from inside it, or undefined when it does not resolve. */
export function resolveInRoot(root: string, path: string): string | undefined {
  let rest = path.split('/').filter(Boolean)
  let done: string[] = []
  let links = 0
  for (let part = rest.shift(); part !== undefined; part = rest.shift()) {
    if (part === '.') continue
    if (part === '..') {
      done.pop() // at the root, .. is the root
      continue
    }
    const here = join(root, ...done, part)
    let isLink: boolean
    try {
      isLink = lstatSync(here).isSymbolicLink()
    } catch {
      return undefined
    }
    if (!isLink) {
      done.push(part)
      continue
    }
    if (++links > MAX_LINKS) return undefined
    const target = readlinkSync(here)
    if (target.startsWith('/')) done = []
    rest = [...target.split('/').filter(Boolean), ...rest]
  }
  return join(root, ...done)
}

/** The text of a regular file as the process with this root sees it, at most maxBytes; undefined otherwise. */
export function readPodFile(root: string, path: string, maxBytes: number): string | undefined {
  const resolved = resolveInRoot(root, path)
  if (resolved === undefined) return undefined
  let fd: number
  try {
    fd = openSync(resolved, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW | constants.O_NOCTTY)
  } catch {
    return undefined
  }
  try {
    const stat = fstatSync(fd)
    if (!stat.isFile() || stat.size > maxBytes) return undefined
    const buf = Buffer.alloc(maxBytes + 1)
    const n = readSync(fd, buf, 0, buf.length, 0)
    return n > maxBytes ? undefined : buf.subarray(0, n).toString('utf8')
  } catch {
    return undefined
  } finally {
    closeSync(fd)
  }
}
