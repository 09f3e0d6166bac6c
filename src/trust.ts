/**
 * Folders whose contents merbridge runs or loads as root (the object cache, the objects a package
 * ships, the helpers and record an installation keeps): refused when someone else could have
 * written what is in them. The folder and every folder above it must be owned by root (or the
 * user running merbridge) and writable by no one else; an ancestor writable by others is allowed
 * only when it is sticky (/tmp), where no one else may replace an entry of ours.
 */
import {statSync} from 'node:fs'
import {dirname, resolve} from 'node:path'
import {MerbridgeError} from './errors.js'

export function requireTrustedDir(dir: string, what: string): void {
  const uid = process.geteuid?.() ?? 0
  const target = resolve(dir)
  for (let cur = target; ; cur = dirname(cur)) {
    let stat
    try {
      stat = statSync(cur)
    } catch {
      stat = undefined // made later, by merbridge itself
    }
    if (stat) {
      const owner = stat.uid === 0 || stat.uid === uid
      const othersWrite = (stat.mode & 0o022) !== 0
      const sticky = (stat.mode & 0o1000) !== 0
      if (!owner || (othersWrite && (cur === target || !sticky || stat.uid !== 0))) {
        const why = owner ? `writable by ${(stat.mode & 0o002) !== 0 ? 'every user' : 'its group'}` : `owned by uid ${stat.uid}`
        throw new MerbridgeError(`${what} ${target} is not safe to run from as root: ${cur} is ${why}`, {
          code: 'UNTRUSTED_DIR',
          suggestion: `use a folder only root can write (chmod go-w ${cur}, or point the setting elsewhere)`,
        })
      }
    }
    if (dirname(cur) === cur) return
  }
}
