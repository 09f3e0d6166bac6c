import {readFileSync} from 'node:fs'

export interface Mount {
  source: string
  target: string
  fstype: string
  options: string
}

/** Decode the octal escapes (\040 for a space) that /proc/mounts uses in paths. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)))
}

/** Parse /proc/mounts (or /proc/self/mounts) text. */
export function parseMounts(text: string): Mount[] {
  const mounts: Mount[] = []
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/)
    if (f.length < 4 || !f[0] || !f[1] || !f[2] || !f[3]) continue
    mounts.push({source: f[0], target: unescapeMountPath(f[1]), fstype: f[2], options: f[3]})
  }
  return mounts
}

export function readMounts(path = '/proc/self/mounts'): Mount[] {
  return parseMounts(readFileSync(path, 'utf8'))
}

export type CgroupLayout = 'unified' | 'hybrid' | 'legacy' | 'none'

/** Which cgroup layout a host has and where its cgroup v2 hierarchy is mounted. */
export function findCgroup2(mounts: Mount[]): {layout: CgroupLayout; path?: string} {
  const v2 = mounts.filter((m) => m.fstype === 'cgroup2')
  const v1 = mounts.some((m) => m.fstype === 'cgroup')
  // Prefer the conventional places when several cgroup2 mounts exist (bind mounts, containers).
  const preferred = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']
  const chosen = preferred.map((p) => v2.find((m) => m.target === p)).find(Boolean) ?? v2[0]
  if (chosen) return {layout: v1 ? 'hybrid' : 'unified', path: chosen.target}
  return {layout: v1 ? 'legacy' : 'none'}
}

/** The mount a path lives on (longest matching mount point). */
export function mountOf(mounts: Mount[], path: string): Mount | undefined {
  let best: Mount | undefined
  for (const m of mounts) {
    const inside = path === m.target || path.startsWith(m.target.endsWith('/') ? m.target : m.target + '/')
    if (inside && (!best || m.target.length >= best.target.length)) best = m
  }
  return best
}

export function isBpffs(mounts: Mount[], path: string): boolean {
  return mountOf(mounts, path)?.fstype === 'bpf'
}
