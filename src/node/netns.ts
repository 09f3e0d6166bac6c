import {hostProc} from '../paths.js'
import {existsSync, readdirSync, readFileSync, readlinkSync, statSync} from 'node:fs'
import {readPodFile} from './pod-files.js'
import {isIP} from 'node:net'
import {join} from 'node:path'
import {ipToSlot, slotToIp} from '../bpf/ip.js'
import {run} from '../exec.js'

/**
 * IPv6 addresses of one scope in a /proc/PID/net/if_inet6 text (32 hex digits, then index,
 * prefix, scope): global ('00', a pod's address), or link-local ('20').
 */
export function parseIfInet6(text: string, scope: '00' | '20' = '00'): string[] {
  const out: string[] = []
  for (const [, hex = '', found = ''] of text.matchAll(/^([0-9a-f]{32}) \S+ \S+ ([0-9a-f]{2}) /gm))
    if (found === scope) out.push(slotToIp(Buffer.from(hex, 'hex')))
  return out
}

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
  /** its IPv6 link-local addresses: never a pod's IP, but Istio's ip6tables capture what arrives for them */
  linkLocal: string[]
  /** processes in it (a few), to read the pod's files through their root */
  pids: number[]
  /** its name under /run/netns, if it has one */
  name?: string
}

/** Processes looked at per namespace for its resolv.conf: the sandbox's pause has none, its containers do. */
const PIDS_KEPT = 8

function netnsInode(path: string): number | undefined {
  try {
    return statSync(path).ino
  } catch {
    return undefined
  }
}

/**
 * Every network namespace on the node other than our own, with its local addresses: one
 * process per namespace (from /proc), and the named ones under /run/netns that no process holds.
 * `helper`: the netns-cookie helper, which reads the latter's addresses; `addresses: false` when
 * only the namespaces are wanted.
 */
export async function listNetnsCandidates(opts: {helper?: string; addresses?: boolean} = {}): Promise<NetnsCandidate[]> {
  const own = netnsInode('/proc/self/ns/net')
  const byInode = new Map<number, NetnsCandidate>()
  const unheld: NetnsCandidate[] = []
  const proc = hostProc()
  for (const entry of readdirSync(proc)) {
    if (!/^\d+$/.test(entry)) continue
    let link: string
    try {
      link = readlinkSync(`${proc}/${entry}/ns/net`)
    } catch {
      continue // gone, or not ours to read
    }
    const inode = Number(/\[(\d+)\]/.exec(link)?.[1])
    if (!inode || inode === own) continue
    const known = byInode.get(inode)
    if (known) {
      if (known.pids.length < PIDS_KEPT) known.pids.push(Number(entry))
      continue
    }
    try {
      const addresses = [...parseFibTrieLocal(readFileSync(`${proc}/${entry}/net/fib_trie`, 'utf8')), ...ipv6Of(entry, '00')]
      byInode.set(inode, {inode, path: `${proc}/${entry}/ns/net`, addresses, linkLocal: ipv6Of(entry, '20'), pids: [Number(entry)]})
    } catch {
      continue
    }
  }
  for (const dir of ['/run/netns', '/var/run/netns']) {
    if (!existsSync(dir)) continue
    for (const name of readdirSync(dir)) {
      const path = join(dir, name)
      const inode = netnsInode(path)
      if (!inode || inode === own) continue
      const known = byInode.get(inode)
      if (known) {
        // a name is a bind mount that lives as long as the namespace; a process may exit at any time
        // (a short-lived one in the pod, while a slow enable is between its scan and its tc step)
        if (known.name === undefined) {
          known.name = name
          known.path = path
        }
        continue
      }
      const candidate: NetnsCandidate = {inode, path, addresses: [], linkLocal: [], pids: [], name}
      byInode.set(inode, candidate)
      unheld.push(candidate)
    }
  }
  if (opts.addresses !== false) await readUnheldAddresses(unheld, opts.helper)
  return [...byInode.values()]
}

/**
 * The addresses of named namespaces no process is in: all in one run of the netns-cookie helper
 * (a node starting many pods has as many such sandboxes), else one `ip -n` each (a helper kept by
 * an older enable prints no addresses).
 */
async function readUnheldAddresses(unheld: NetnsCandidate[], helper: string | undefined): Promise<void> {
  if (unheld.length === 0) return
  const lines = helper ? (await run(helper, ['--addresses', ...unheld.map((c) => c.path)], {allowFailure: true})).stdout.split('\n') : []
  for (const [i, c] of unheld.entries()) {
    const listed = /^\d+ addrs(.*)$/.exec(lines[i] ?? '')?.[1]
    if (listed !== undefined) {
      const words = listed.split(' ').filter(Boolean)
      c.addresses = words.filter((w) => !w.startsWith('~')).map((ip) => slotToIp(ipToSlot(ip)))
      c.linkLocal = words.filter((w) => w.startsWith('~')).map((ip) => slotToIp(ipToSlot(ip.slice(1))))
      continue
    }
    const r = await run('ip', ['-netns', c.name ?? '', '-o', 'addr', 'show'], {allowFailure: true})
    c.addresses = [
      ...[...r.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\//g)].map(([, ip = '']) => ip),
      ...[...r.stdout.matchAll(/inet6 ([0-9a-f:]+)\/\d+ scope global/g)].map(([, ip = '']) => slotToIp(ipToSlot(ip))),
    ]
    c.linkLocal = [...r.stdout.matchAll(/inet6 ([0-9a-f:]+)\/\d+ scope link/g)].map(([, ip = '']) => slotToIp(ipToSlot(ip)))
  }
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

/**
 * The indexes of the named interfaces in the namespace at path (those it has now): `ip -o link`
 * prints one line per interface, "INDEX: NAME[@PEER]: ...".
 */
export async function interfaceIndexes(path: string, names: readonly string[]): Promise<Map<string, number>> {
  const r = await run('nsenter', [`--net=${path}`, 'ip', '-o', 'link', 'show'], {allowFailure: true})
  const out = new Map<string, number>()
  for (const [, index = '', name = ''] of r.stdout.matchAll(/^(\d+): ([^:@\s]+)[@:]/gm))
    if (names.includes(name)) out.set(name, Number(index))
  return out
}

/**
 * For each IP (canonical), every namespace that has it as a local address. A pod's address held
 * by more than one is a claim: any process able to make a network namespace can put another
 * pod's address on its own loopback.
 */
export function namespaceHolders(candidates: NetnsCandidate[]): Map<string, NetnsCandidate[]> {
  const out = new Map<string, NetnsCandidate[]>()
  for (const c of candidates)
    for (const ip of c.addresses) {
      if (ip.startsWith('127.')) continue
      const key = normalIp(ip)
      const list = out.get(key) ?? []
      if (!list.includes(c)) list.push(c)
      out.set(key, list)
    }
  return out
}

/** One spelling per address (IPv6 is written many ways), as keys of namespaceHolders. */
export function normalIp(ip: string): string {
  return slotToIp(ipToSlot(ip))
}

function ipv6Of(pid: string, scope: '00' | '20'): string[] {
  try {
    return parseIfInet6(readFileSync(`${hostProc()}/${pid}/net/if_inet6`, 'utf8'), scope)
  } catch {
    return [] // IPv6 disabled in that namespace
  }
}

/** The nameserver addresses of a resolv.conf text, as a resolver reads them (a zone index dropped). */
export function parseResolvConf(text: string): string[] {
  const out: string[] = []
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line)
    const ip = m?.[1]?.replace(/%.*$/, '')
    if (ip && isIP(ip) && !out.includes(ip)) out.push(ip)
  }
  return out
}

/** A resolv.conf larger than this is not one a resolver would read: taken as unreadable. */
const MAX_RESOLV_CONF = 64 * 1024

/**
 * The resolvers a namespace's processes use, as istio-init would read them from its own
 * /etc/resolv.conf: through the root of each process in it (a container's view), else the file
 * `ip netns exec` would bind for a named one. Every process's view counts (a process of the pod
 * that mounted another file over its own must not narrow what is captured): the union of what
 * they name. A file that cannot be read safely (pod-files.ts) is left out, costing only this pod.
 * Undefined when none can be read.
 */
export function namespaceResolvers(c: NetnsCandidate): {servers: string[]; from: string} | undefined {
  const files: [root: string, path: string][] = [
    ...c.pids.map((pid): [string, string] => [`${hostProc()}/${pid}/root`, '/etc/resolv.conf']),
    ...(c.name ? [['/', join('/etc/netns', c.name, 'resolv.conf')] as [string, string]] : []),
  ]
  const servers: string[] = []
  const read: string[] = []
  for (const [root, path] of files) {
    // a process gone, or a container with no resolv.conf (a sandbox's pause), or a hostile file
    const text = readPodFile(root, path, MAX_RESOLV_CONF)
    if (text === undefined) continue
    for (const s of parseResolvConf(text)) if (!servers.includes(s)) servers.push(s)
    read.push(join(root, path))
  }
  const [first, ...more] = read
  if (first === undefined) return undefined
  return {servers, from: more.length === 0 ? first : `${first} and ${more.length} more`}
}
