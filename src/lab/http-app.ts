/**
 * The lab's application: `serve PORT` answers
 *   /whoami            the caller's address as the app sees it (127.0.0.6 means: via the inbound sidecar)
 *   /bytes?n=N         N bytes of a fixed pattern
 *   /stream?gate=NAME  the pattern, a chunk every STREAM_TICK_MS, until the file NAME appears in the
 *                      gate folder given to `serve`: a connection that stays open, and keeps
 *                      flowing, for exactly as long as a test needs it, however slow the machine
 * and `get URL [WAIT_MS]` fetches one URL and prints {status, bytes, sha256, body?} as JSON, after a
 * {"progress": bytes} line for every PROGRESS_STEP bytes received. WAIT_MS: how long the connection
 * may take to be accepted, SYN retransmissions included (else Node's agent gives up after 5 s).
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {createServer, get} from 'node:http'
import {join} from 'node:path'

const CHUNK = 64 * 1024
const STREAM_TICK_MS = 10
const PROGRESS_STEP = 256 * 1024

/** Byte i of the pattern: cheap to generate and to verify, and shifts at every chunk. */
export function patternChunk(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (offset + i) % 251
  return b
}

export function patternSha256(total: number): string {
  const h = createHash('sha256')
  for (let off = 0; off < total; off += CHUNK) h.update(patternChunk(off, Math.min(CHUNK, total - off)))
  return h.digest('hex')
}

function serve(port: number, gateDir: string | undefined): void {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://app')
    if (url.pathname === '/whoami') {
      res.setHeader('content-type', 'application/json')
      res.end(
        JSON.stringify({
          remoteAddress: req.socket.remoteAddress?.replace(/^::ffff:/, ''),
          remotePort: req.socket.remotePort,
          localAddress: req.socket.localAddress?.replace(/^::ffff:/, ''),
          localPort: req.socket.localPort,
        }),
      )
      return
    }
    if (url.pathname === '/bytes') {
      const n = Number(url.searchParams.get('n') ?? 0)
      res.setHeader('content-length', String(n))
      let off = 0
      const pump = () => {
        while (off < n) {
          const len = Math.min(CHUNK, n - off)
          const ok = res.write(patternChunk(off, len))
          off += len
          if (!ok) return void res.once('drain', pump)
        }
        res.end()
      }
      pump()
      return
    }
    const gate = url.searchParams.get('gate') ?? ''
    if (url.pathname === '/stream' && gateDir && /^[\w-]+$/.test(gate)) {
      // chunked: the length is whatever flowed until the gate opened
      let off = 0
      const tick = () => {
        if (existsSync(join(gateDir, gate))) return void res.end()
        const ok = res.write(patternChunk(off, CHUNK))
        off += CHUNK
        if (ok) setTimeout(tick, STREAM_TICK_MS)
        else res.once('drain', () => setTimeout(tick, STREAM_TICK_MS))
      }
      tick()
      return
    }
    res.statusCode = 404
    res.end('not found\n')
  })
  // '::' takes IPv4 too (as ::ffff:a.b.c.d, which /whoami strips), and IPv6 in dual-stack pods
  server.listen(port, '::', () => console.log(`listening on ${port}`))
  process.on('SIGTERM', () => process.exit(0))
}

function fetchOnce(url: string, waitMs?: number): void {
  // no agent: the global one's 5 s socket timeout would end a connection being held that long
  const req = get(url, {headers: {connection: 'close'}, ...(waitMs === undefined ? {} : {agent: false, timeout: waitMs})}, (res) => {
    const h = createHash('sha256')
    let bytes = 0
    const keep: Buffer[] = []
    res.on('data', (d: Buffer) => {
      h.update(d)
      const before = bytes
      bytes += d.length
      if (bytes <= 4096) keep.push(d)
      if (Math.floor(bytes / PROGRESS_STEP) > Math.floor(before / PROGRESS_STEP)) console.log(JSON.stringify({progress: bytes}))
    })
    res.on('end', () => {
      const body = bytes <= 4096 ? Buffer.concat(keep).toString('utf8') : undefined
      console.log(JSON.stringify({status: res.statusCode, bytes, sha256: h.digest('hex'), body}))
    })
    res.on('error', (e) => fail(e))
  })
  req.on('error', (e) => fail(e))
  req.setTimeout(waitMs ?? 60_000, () => req.destroy(new Error('timed out')))
}

function fail(e: Error & {code?: string}): void {
  console.log(JSON.stringify({error: e.code ?? e.message}))
  process.exitCode = 1
}

const [mode, arg, gateDir] = process.argv.slice(2)
if (mode === 'serve') serve(Number(arg ?? 8080), gateDir)
else if (mode === 'get' && arg) fetchOnce(arg, gateDir === undefined ? undefined : Number(gateDir))
