import {copyFileSync, existsSync} from 'node:fs'
import {join} from 'node:path'
import {PACKAGE_ROOT} from '../paths.js'

/** The lab's Python programs, in src/lab/py (linted there by `npm run lint`). */
export type LabScript = 'dns.py' | 'hold_loopback.py' | 'raw_get.py' | 'scale_client.py' | 'scale_echo.py' | 'sidecar6.py' | 'tun_relay.py'

export const LAB_SCRIPT_DIR = join(PACKAGE_ROOT, 'src', 'lab', 'py')

/**
 * A lab program's path in the lab's own folder, copied there on first use: the pods' users (the
 * proxy's among them) can read that folder, where a checkout under a private home may not be.
 */
export function labScript(dir: string, name: LabScript): string {
  const path = join(dir, name)
  if (!existsSync(path)) copyFileSync(join(LAB_SCRIPT_DIR, name), path)
  return path
}
