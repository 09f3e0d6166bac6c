import {isIPv4, isIPv6} from 'node:net'

/** Addresses live in 16-byte slots; IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), like bpf/headers/types.h. */
export const IP_SLOT = 16

export function ipToSlot(ip: string): Buffer {
  const out = Buffer.alloc(IP_SLOT)
  if (isIPv4(ip)) {
    out[10] = 0xff
    out[11] = 0xff
    ip.split('.').forEach((octet, i) => (out[12 + i] = Number(octet)))
    return out
  }
  if (!isIPv6(ip)) throw new Error(`not an IP address: ${ip}`)
  const [head = '', tail = ''] = ip.split('::')
  const words = (s: string) => (s ? s.split(':') : [])
  let h = words(head)
  let t = ip.includes('::') ? words(tail) : []
  // an embedded IPv4 tail (::ffff:1.2.3.4) counts as two words
  const expand = (list: string[]) =>
    list.flatMap((w) =>
      isIPv4(w)
        ? [(Number(w.split('.')[0]) << 8) | Number(w.split('.')[1]), (Number(w.split('.')[2]) << 8) | Number(w.split('.')[3])].map((n) =>
            n.toString(16),
          )
        : [w],
    )
  h = expand(h)
  t = expand(t)
  const all = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  all.forEach((w, i) => out.writeUInt16BE(Number.parseInt(w, 16), i * 2))
  return out
}

export function isMappedV4(slot: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (slot[i] !== 0) return false
  return slot[10] === 0xff && slot[11] === 0xff
}

export function slotToIp(slot: Uint8Array): string {
  if (isMappedV4(slot)) return `${slot[12]}.${slot[13]}.${slot[14]}.${slot[15]}`
  const words: string[] = []
  for (let i = 0; i < 16; i += 2) words.push((((slot[i] ?? 0) << 8) | (slot[i + 1] ?? 0)).toString(16))
  // compress the longest run of zero words, as RFC 5952 asks
  let best = {start: -1, len: 0}
  for (let i = 0; i < 8;) {
    if (words[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && words[j] === '0') j++
    if (j - i > best.len && j - i > 1) best = {start: i, len: j - i}
    i = j
  }
  if (best.start < 0) return words.join(':')
  return `${words.slice(0, best.start).join(':')}::${words.slice(best.start + best.len).join(':')}`
}

export interface Cidr {
  ip: string
  /** In the address's own family: 0-32 for IPv4, 0-128 for IPv6. */
  prefix: number
}

export function parseCidr(text: string): Cidr | undefined {
  const [ip = '', len, ...rest] = text.trim().split('/')
  if (rest.length > 0) return undefined
  const v4 = isIPv4(ip)
  if (!v4 && !isIPv6(ip)) return undefined
  const max = v4 ? 32 : 128
  const prefix = len === undefined ? max : /^\d+$/.test(len) ? Number(len) : Number.NaN
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) return undefined
  return {ip, prefix}
}

export function formatCidr(c: Cidr): string {
  return `${c.ip}/${c.prefix}`
}

/** An address in its one spelling: IPv4-mapped IPv6 as IPv4, IPv6 compressed; undefined when it is no IP. */
export function canonicalIp(ip: string): string | undefined {
  return isIPv4(ip) || isIPv6(ip) ? slotToIp(ipToSlot(ip)) : undefined
}

/**
 * Why an address cannot be a pod's own (loopback, unspecified, broadcast, multicast, link-local:
 * every node has them, or none can), or undefined when it can be.
 */
export function notAPodAddress(ip: string): string | undefined {
  const slot = ipToSlot(ip)
  if (isMappedV4(slot)) {
    const [a = 0, b = 0] = [slot[12], slot[13]]
    if (a === 127) return 'a loopback address'
    if (a === 0) return 'an unspecified address'
    if (slot.subarray(12).every((x) => x === 255)) return 'the broadcast address'
    if (a >= 224 && a <= 239) return 'a multicast address'
    if (a === 169 && b === 254) return 'a link-local address'
    return undefined
  }
  if (slot.every((x, i) => x === (i === 15 ? 1 : 0))) return 'a loopback address'
  if (slot.every((x) => x === 0)) return 'an unspecified address'
  if (slot[0] === 0xff) return 'a multicast address'
  if (slot[0] === 0xfe && ((slot[1] ?? 0) & 0xc0) === 0x80) return 'a link-local address'
  return undefined
}
