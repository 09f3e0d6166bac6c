import {readFileSync} from 'node:fs'
import {MerbridgeError} from '../errors.js'

/** Capability bits (linux/capability.h) the datapath needs. */
export const CAPS = {CAP_NET_ADMIN: 12, CAP_SYS_ADMIN: 21, CAP_BPF: 39} as const
export type CapName = keyof typeof CAPS

/** The effective capability set from /proc/self/status text. */
export function parseCapEff(statusText: string): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-f]+)$/im.exec(statusText)
  return m?.[1] ? BigInt('0x' + m[1]) : undefined
}

export function missingCaps(capEff: bigint): CapName[] {
  return (Object.keys(CAPS) as CapName[]).filter((name) => ((capEff >> BigInt(CAPS[name])) & 1n) === 0n)
}

export function currentPrivileges(): {uid: number; missing: CapName[]} {
  const uid = process.getuid?.() ?? -1
  const capEff = parseCapEff(readFileSync('/proc/self/status', 'utf8')) ?? 0n
  return {uid, missing: missingCaps(capEff)}
}

/** Fail early, before any progress is drawn, when the command cannot work without privileges. */
export function requirePrivileges(command: string): void {
  const {uid, missing} = currentPrivileges()
  if (missing.length > 0)
    throw new MerbridgeError(`merbridge ${command} needs root: uid ${uid} lacks ${missing.join(', ')}`, {
      code: 'NOT_ROOT',
      suggestion: `run as root: sudo merbridge ${command}`,
    })
}
