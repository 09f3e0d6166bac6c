/**
 * Reading what a user names as input (a pods file, a kubeconfig, standard input): regular files
 * only, opened without blocking (a FIFO with no writer would hang the command), and bounded in
 * size (a link to /dev/zero would exhaust memory). A bad input is one line, never a hang.
 */
import {constants, statSync} from 'node:fs'
import {open} from 'node:fs/promises'
import {MerbridgeError} from './errors.js'

const KINDS: [(s: import('node:fs').Stats) => boolean, string][] = [
  [(s) => s.isDirectory(), 'a folder'],
  [(s) => s.isFIFO(), 'a FIFO'],
  [(s) => s.isCharacterDevice(), 'a character device'],
  [(s) => s.isBlockDevice(), 'a block device'],
  [(s) => s.isSocket(), 'a socket'],
]

/** What kind of file this is, in words ("a FIFO"), or undefined for a regular file. */
export function fileKind(stat: import('node:fs').Stats): string | undefined {
  return KINDS.find(([is]) => is(stat))?.[1]
}

/**
 * A folder a setting names (MERBRIDGE_RUN_DIR, ...) that exists and is not one: refused, or a
 * record would be looked for in a file and an enabled node reported as never enabled.
 */
export function refuseNonFolder(name: string, path: string | undefined): void {
  if (path === undefined) return
  let stat
  try {
    stat = statSync(path)
  } catch {
    return // made when first needed
  }
  if (stat.isDirectory()) return
  throw new MerbridgeError(`${name} names ${path}, which is ${fileKind(stat) ?? 'a regular file'}, not a folder`, {
    code: 'USAGE',
    exitCode: 2,
    suggestion: `point ${name} at a folder, or unset it for its default`,
  })
}

function tooLarge(what: string, maxBytes: number): MerbridgeError {
  return new MerbridgeError(`${what} is larger than ${Math.round(maxBytes / 2 ** 20)} MiB`, {
    code: 'BAD_INPUT',
    exitCode: 2,
    suggestion: `give a smaller ${what.replace(/ .*$/, '')}`,
  })
}

/** A regular file's text, at most maxBytes of it; what names it in messages ("the pods file X"). */
export async function readInputFile(path: string, what: string, maxBytes: number): Promise<string> {
  let handle
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY)
  } catch (error) {
    throw new MerbridgeError(`cannot read ${what}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, {
      code: 'BAD_INPUT',
      exitCode: 2,
      suggestion: 'give an existing, readable file',
    })
  }
  try {
    const stat = await handle.stat()
    const kind = fileKind(stat)
    if (kind)
      throw new MerbridgeError(`${what} is ${kind}, not a regular file`, {
        code: 'BAD_INPUT',
        exitCode: 2,
        suggestion: 'give a regular file (or - for standard input where that is taken)',
      })
    if (stat.size > maxBytes) throw tooLarge(what, maxBytes)
    const buf = Buffer.alloc(Math.min(stat.size, maxBytes) + 1)
    const {bytesRead} = await handle.read(buf, 0, buf.length, 0)
    // a file that grew while read: bounded all the same
    if (bytesRead > maxBytes) throw tooLarge(what, maxBytes)
    return buf.subarray(0, bytesRead).toString('utf8')
  } finally {
    await handle.close()
  }
}

/** Standard input's text, at most maxBytes of it. */
export async function readInputStream(stream: NodeJS.ReadableStream, what: string, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of stream) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    size += b.length
    if (size > maxBytes) throw tooLarge(what, maxBytes)
    chunks.push(b)
  }
  return Buffer.concat(chunks).toString('utf8')
}
