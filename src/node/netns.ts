import {existsSync, readdirSync, readFileSync, readlinkSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {run} from './exec.js'

/** Local IPv4 addresses in a /proc/PID/net/fib_trie text: the lines before each "/32 host LOCAL". */
export function parseFibTrieLocal(text: string): string[] {
  const out = new Set<string>()
  let last: string | undefined
  for (const line of text.split('\n')) {
    const leaf = /\|--\s+(\d+\.\d+\.\d+\.\d+)/.exec(line)
    if (leaf) {
      last = leaf[1]
      continue
    }
    if (last && line.includes('/32 host LOCAL')) out.add(last)
  }
  return [...out]
}

export interface NetnsCandidate {
  /** the namespace's inode */
  inode: number
  /** a path that opens it: /proc/PID/ns/net or /run/netns/NAME */
  path: string
  addresses: string[]
}

function netnsInode(path: string): number | undefined {
  try {
    return statSync(path).ino
  } catch {
    return undefined
  }
}

/**
 * Every network namespace on the node other than our own, with its local IPv4 addresses: one
 * process per namespace (from /proc), and the named ones under /run/netns that no process holds.
 */
export async function listNetnsCandidates(): Promise<NetnsCandidate[]> {
  const own = netnsInode('/proc/self/ns/net')
  const byInode = new Map<number, NetnsCandidate>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let link: string
    try {
      link = readlinkSync(`/proc/${entry}/ns/net`)
    } catch {
      continue // gone, or not ours to read
    }
    const inode = Number(/\[(\d+)\]/.exec(link)?.[1])
    if (!inode || inode === own || byInode.has(inode)) continue
    try {
      const addresses = parseFibTrieLocal(readFileSync(`/proc/${entry}/net/fib_trie`, 'utf8'))
      byInode.set(inode, {inode, path: `/proc/${entry}/ns/net`, addresses})
    } catch {
      continue
    }
  }
  for (const dir of ['/run/netns', '/var/run/netns']) {
    if (!existsSync(dir)) continue
    for (const name of readdirSync(dir)) {
      const path = join(dir, name)
      const inode = netnsInode(path)
      if (!inode || inode === own || byInode.has(inode)) continue
      const r = await run('ip', ['-netns', name, '-4', '-o', 'addr', 'show'], {allowFailure: true})
      const addresses = [...r.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\//g)].map(([, ip = '']) => ip)
      byInode.set(inode, {inode, path, addresses})
    }
  }
  return [...byInode.values()]
}

/** The kernel's netns cookies of the given namespace paths, read by the netns-cookie helper. */
export async function netnsCookies(helper: string, paths: string[]): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>()
  if (paths.length === 0) return out
  const r = await run(helper, paths, {allowFailure: true})
  const lines = r.stdout.split('\n')
  paths.forEach((p, i) => {
    const line = lines[i]?.trim() ?? ''
    if (/^\d+$/.test(line)) out.set(p, BigInt(line))
  })
  return out
}

/** For each IP, the namespace that has it as a local address (pod IPs are unique on a node). */
export function namespacesByIp(candidates: NetnsCandidate[]): Map<string, NetnsCandidate> {
  const out = new Map<string, NetnsCandidate>()
  for (const c of candidates) for (const ip of c.addresses) if (!ip.startsWith('127.')) out.set(ip, c)
  return out
}
