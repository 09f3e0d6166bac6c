import {existsSync} from 'node:fs'
import {release} from 'node:os'

export interface KernelVersion {
  major: number
  minor: number
  patch: number
  raw: string
}

/** Parse a `uname -r` string such as `6.18.44-fc-v657` or `5.15.0-91-generic`. */
export function parseKernelRelease(raw: string): KernelVersion | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(raw.trim())
  if (!m) return undefined
  return {major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0), raw: raw.trim()}
}

/**
 * The oldest kernel the datapath loads on, and why: 5.15 lets sockops, sk_msg and cgroup/getsockopt
 * programs call bpf_get_netns_cookie (the pair keys of loopback legs carry the netns), and
 * SO_NETNS_COOKIE (5.14) lets the CLI read a pod namespace's cookie. Everything else it uses is older.
 */
export const MIN_KERNEL = {
  major: 5,
  minor: 15,
  text: '5.15',
  why: 'the datapath calls bpf_get_netns_cookie from sockops, sk_msg and getsockopt programs (5.15) and reads SO_NETNS_COOKIE (5.14)',
} as const

export function kernelAtLeast(v: KernelVersion, major: number, minor: number): boolean {
  return v.major > major || (v.major === major && v.minor >= minor)
}

export function runningKernel(): KernelVersion | undefined {
  return parseKernelRelease(release())
}

export const BTF_PATH = '/sys/kernel/btf/vmlinux'

export function hasBtf(path = BTF_PATH): boolean {
  return existsSync(path)
}
