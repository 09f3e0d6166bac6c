/**
 * The node's CNI configuration, as Istio's install-cni keeps it: merbridge-cni copied into the CNI
 * binary folder and its entry put at the end of the plugins of the network configuration the
 * runtime uses (the folder's first file by name), everything else in that file left as it is.
 * The file's bytes before the first install are kept beside it (a dotfile the runtime does not
 * read), so uninstall puts them back exactly while the file still holds only what we wrote.
 */
import {createHash} from 'node:crypto'
import {copyFileSync, existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {basename, dirname, join} from 'node:path'
import {MerbridgeError} from '../errors.js'

export const CNI_PLUGIN_TYPE = 'merbridge-cni'

export interface CniPaths {
  /** the runtime's network configurations (/etc/cni/net.d) */
  confDir: string
  /** the CNI plugin binaries (/opt/cni/bin) */
  binDir: string
}

/** The configuration the runtime uses: the first .conflist, .conf or .json of the folder by name, as libcni picks. */
export function runtimeConfig(confDir: string): string | undefined {
  const names = existsSync(confDir)
    ? readdirSync(confDir)
        .filter((n) => /\.(conflist|conf|json)$/.test(n) && !n.startsWith('.'))
        .sort()
    : []
  const first = names[0]
  return first === undefined ? undefined : join(confDir, first)
}

const backupOf = (file: string) => join(dirname(file), `.${basename(file)}.merbridge-original`)

interface Conflist {
  plugins?: unknown
  [key: string]: unknown
}

function parse(text: string, file: string): Conflist & {plugins: Record<string, unknown>[]} {
  let c: Conflist
  try {
    c = JSON.parse(text) as Conflist
  } catch (error) {
    throw new MerbridgeError(`${file} is not valid JSON (${(error as Error).message}): merbridge-cni is not added to it`, {
      code: 'CNI_CONFIG',
      suggestion: 'fix the network configuration, or let its CNI rewrite it',
    })
  }
  if (!Array.isArray(c.plugins))
    throw new MerbridgeError(`${file} has no "plugins" list (a single-plugin configuration): merbridge-cni chains only into a conflist`, {
      code: 'CNI_CONFIG',
      suggestion: 'configure the network as a .conflist',
    })
  return c as Conflist & {plugins: Record<string, unknown>[]}
}

/** The configuration with merbridge-cni as its last plugin (a previous entry of ours replaced). */
export function withPlugin(text: string, file: string, socket: string): string {
  const c = parse(text, file)
  const plugins = c.plugins.filter((p) => p.type !== CNI_PLUGIN_TYPE)
  return JSON.stringify({...c, plugins: [...plugins, {type: CNI_PLUGIN_TYPE, socket}]}, null, 2) + '\n'
}

/** The configuration without merbridge-cni. */
export function withoutPlugin(text: string, file: string): string {
  const c = parse(text, file)
  return JSON.stringify({...c, plugins: c.plugins.filter((p) => p.type !== CNI_PLUGIN_TYPE)}, null, 2) + '\n'
}

export function hasPlugin(text: string): boolean {
  try {
    const c = JSON.parse(text) as Conflist
    return Array.isArray(c.plugins) && (c.plugins as Record<string, unknown>[]).some((p) => p.type === CNI_PLUGIN_TYPE)
  } catch {
    return false
  }
}

/** Replace a file's content in one rename: a runtime never reads half of it. */
function writeAtomic(file: string, content: string | Buffer, mode: number): void {
  const tmp = join(dirname(file), `.${basename(file)}.merbridge-tmp`)
  writeFileSync(tmp, content, {mode})
  renameSync(tmp, file)
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/**
 * Copy the plugin in and add its entry; idempotent. A file another CNI rewrote since (without our
 * entry) becomes the one to put back at uninstall.
 */
export function installCni(paths: CniPaths, plugin: string, socket: string): {file: string; changed: boolean} {
  const file = runtimeConfig(paths.confDir)
  if (!file)
    throw new MerbridgeError(`no network configuration in ${paths.confDir}: merbridge-cni chains after the node's CNI`, {
      code: 'CNI_CONFIG',
      suggestion: 'install the node network (its CNI writes the configuration), or give --cni-conf-dir',
    })
  const target = join(paths.binDir, CNI_PLUGIN_TYPE)
  if (!existsSync(target) || sha(readFileSync(target)) !== sha(readFileSync(plugin))) {
    const tmp = `${target}.merbridge-tmp`
    copyFileSync(plugin, tmp)
    renameSync(tmp, target)
  }
  const current = readFileSync(file)
  const text = current.toString('utf8')
  const wanted = withPlugin(text, file, socket)
  if (text === wanted) return {file, changed: false}
  if (!hasPlugin(text)) writeAtomic(backupOf(file), current, 0o600)
  writeAtomic(file, wanted, statSync(file).mode & 0o777)
  return {file, changed: true}
}

/**
 * Take the entry out of every configuration of the folder, and the plugin. A file that holds only
 * what install wrote gets its original bytes back; one changed since loses only our entry.
 */
export function uninstallCni(paths: CniPaths): {restored: string[]; edited: string[]} {
  const out = {restored: [] as string[], edited: [] as string[]}
  const names = existsSync(paths.confDir)
    ? readdirSync(paths.confDir).filter((n) => /\.(conflist|conf|json)$/.test(n) && !n.startsWith('.'))
    : []
  for (const name of names) {
    const file = join(paths.confDir, name)
    const text = readFileSync(file, 'utf8')
    if (!hasPlugin(text)) continue
    const backup = backupOf(file)
    const original = existsSync(backup) ? readFileSync(backup) : undefined
    const socket = (parse(text, file).plugins.find((p) => p.type === CNI_PLUGIN_TYPE)?.socket as string | undefined) ?? ''
    if (original && withPlugin(original.toString('utf8'), file, socket) === text) {
      writeAtomic(file, original, statSync(file).mode & 0o777)
      out.restored.push(file)
    } else {
      writeAtomic(file, withoutPlugin(text, file), statSync(file).mode & 0o777)
      out.edited.push(file)
    }
    rmSync(backup, {force: true})
  }
  rmSync(join(paths.binDir, CNI_PLUGIN_TYPE), {force: true})
  return out
}
