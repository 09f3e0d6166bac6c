import {createHash} from 'node:crypto'
import {existsSync, readFileSync} from 'node:fs'
import {cp, mkdir, readdir, readFile, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {MerbridgeError} from '../errors.js'
import {requireTrustedDir} from '../trust.js'
import {BPF_SOURCE_DIR, cacheDir, PACKAGE_ROOT} from '../paths.js'
import {BPF_CFLAGS, clangIdentity, compileBpf, compileHost, HOST_CFLAGS, multiarchInclude} from './clang.js'

/** The host programs sync needs beside the datapath: enable keeps a copy with the installation. */
export interface Helpers {
  netnsCookie: string
  /** attaches and detaches mb_tc_inbound in pod network namespaces */
  tcInbound: string
  /** iterator disable reads to release each socket of sock_pair_map once it has read what was moved to it */
  sockhashQueued: string
  /** the chained CNI plugin, copied into the host's CNI folder in CNI mode */
  cniPlugin: string
}

export const HELPER_FILES = {
  netnsCookie: 'netns-cookie',
  tcInbound: 'tc-inbound',
  sockhashQueued: 'sockhash-queued.bpf.o',
  cniPlugin: 'merbridge-cni',
} as const

export interface BuiltObjects extends Helpers {
  /** Hash of sources, flags and compiler: names the cache entry and tells status if objects are stale. */
  hash: string
  dir: string
  datapath: string
  /** iterators status reads entry counts from (pinned by enable where the kernel can run them) */
  counters: {maps: string; sockhash: string}
  compiled: boolean
}

async function sourceFiles(): Promise<string[]> {
  const files: string[] = []
  for (const sub of ['', 'headers', 'tools', 'iter']) {
    const dir = join(BPF_SOURCE_DIR, sub)
    if (!existsSync(dir)) continue
    for (const name of (await readdir(dir)).sort()) if (/\.(c|h)$/.test(name)) files.push(join(dir, name))
  }
  return files
}

/** How the objects are built beyond their sources: the capacity of the connection maps. */
export interface BuildOptions {
  /** entries of sock_pair_map and pair_original_dst (default: the header's, 65,535) */
  maxConnections?: number
}

export const DEFAULT_MAX_CONNECTIONS = 65_535

function defines(opts: BuildOptions): string[] {
  return opts.maxConnections === undefined || opts.maxConnections === DEFAULT_MAX_CONNECTIONS
    ? []
    : [`-DMB_MAX_CONNS=${opts.maxConnections}`]
}

/** A hash of what goes into the objects but the compiler. */
async function inputsHash(opts: BuildOptions): Promise<string> {
  const h = createHash('sha256')
  h.update(JSON.stringify([BPF_CFLAGS, HOST_CFLAGS, multiarchInclude(), ...defines(opts)]))
  for (const file of await sourceFiles()) {
    h.update(file.slice(BPF_SOURCE_DIR.length))
    h.update(await readFile(file))
  }
  return h.digest('hex')
}

/**
 * Objects built into the package (the image ships them, and no compiler): one folder per build,
 * named by its hash, and an index from the hash of their inputs (all but the compiler) to it.
 */
export const SHIPPED_DIR = join(PACKAGE_ROOT, 'prebuilt')
const shippedIndex = () => join(SHIPPED_DIR, 'index.json')

function shippedHash(inputs: string): string | undefined {
  try {
    const hash = (JSON.parse(readFileSync(shippedIndex(), 'utf8')) as Record<string, unknown>)[inputs]
    return typeof hash === 'string' && /^[0-9a-f]{16}$/.test(hash) ? hash : undefined
  } catch {
    return undefined
  }
}

/** The hash of the shipped build of these options' inputs, when the package has it. */
export async function shippedObjects(opts: BuildOptions = {}): Promise<string | undefined> {
  const hash = shippedHash(await inputsHash(opts))
  return hash !== undefined && existsSync(join(SHIPPED_DIR, hash)) ? hash : undefined
}

/**
 * A hash of everything that goes into the objects, the compiler too. Without a compiler, that of
 * the shipped build of the same inputs, if there is one: then enable needs no compiler.
 */
export async function sourceHash(opts: BuildOptions = {}, compiler?: string): Promise<string> {
  const inputs = await inputsHash(opts)
  let identity = compiler
  if (identity === undefined) {
    try {
      identity = clangIdentity()
    } catch (error) {
      const shipped = shippedHash(inputs)
      if (shipped !== undefined) return shipped
      throw error
    }
  }
  return createHash('sha256').update(identity).update(inputs).digest('hex').slice(0, 16)
}

/**
 * Compile the datapath and its helper unless the cache already holds this exact build.
 * Writes to a temporary folder and renames it, so a killed build never leaves a half cache entry.
 */
export async function buildObjects(opts: {rebuild?: boolean} & BuildOptions = {}): Promise<BuiltObjects> {
  const hash = await sourceHash(opts)
  // what is in them runs as root (the helpers) or in the kernel
  requireTrustedDir(cacheDir(), 'the object cache')
  requireTrustedDir(SHIPPED_DIR, 'the shipped objects')
  const cached = join(cacheDir(), hash)
  const dir = !opts.rebuild && !existsSync(cached) && existsSync(join(SHIPPED_DIR, hash)) ? join(SHIPPED_DIR, hash) : cached
  const result = {
    hash,
    dir,
    datapath: join(dir, 'merbridge.bpf.o'),
    netnsCookie: join(dir, HELPER_FILES.netnsCookie),
    tcInbound: join(dir, HELPER_FILES.tcInbound),
    cniPlugin: join(dir, HELPER_FILES.cniPlugin),
    sockhashQueued: join(dir, HELPER_FILES.sockhashQueued),
    counters: {maps: join(dir, 'map-counts.bpf.o'), sockhash: join(dir, 'sockhash-size.bpf.o')},
  }
  const outputs = [
    result.datapath,
    result.netnsCookie,
    result.tcInbound,
    result.cniPlugin,
    result.sockhashQueued,
    result.counters.maps,
    result.counters.sockhash,
  ]
  if (!opts.rebuild && outputs.every((f) => existsSync(f))) return {...result, compiled: false}

  if (dir !== cached)
    throw new MerbridgeError(`the shipped bpf objects in ${dir} are incomplete`, {
      code: 'SHIPPED_OBJECTS',
      suggestion: 'rebuild the image, or install clang so enable builds them',
    })
  const tmp = `${dir}.tmp-${process.pid}`
  await rm(tmp, {recursive: true, force: true})
  await mkdir(tmp, {recursive: true})
  // only the datapath takes the build's defines: another capacity reuses the default build's rest
  // (same sources and compiler), which an emulated node takes a minute to compile
  const base = defines(opts).length > 0 && !opts.rebuild ? join(cacheDir(), await sourceHash()) : undefined
  const build = async (file: string, compile: (output: string) => Promise<void>) => {
    if (base !== undefined && existsSync(join(base, file))) await cp(join(base, file), join(tmp, file))
    else await compile(join(tmp, file))
  }
  try {
    await compileBpf(join(BPF_SOURCE_DIR, 'merbridge.bpf.c'), join(tmp, 'merbridge.bpf.o'), defines(opts))
    for (const name of ['map-counts', 'sockhash-size'])
      await build(`${name}.bpf.o`, (out) => compileBpf(join(BPF_SOURCE_DIR, 'iter', `${name}.bpf.c`), out))
    await build(HELPER_FILES.sockhashQueued, (out) => compileBpf(join(BPF_SOURCE_DIR, 'iter', 'sockhash-queued.bpf.c'), out))
    await build(HELPER_FILES.netnsCookie, (out) => compileHost(join(BPF_SOURCE_DIR, 'tools', 'netns-cookie.c'), out))
    await build(HELPER_FILES.tcInbound, (out) => compileHost(join(BPF_SOURCE_DIR, 'tools', 'tc-inbound.c'), out, ['bpf']))
    // copied into the host's CNI folder from the image: it must not depend on the image's libc
    await build(HELPER_FILES.cniPlugin, (out) => compileHost(join(BPF_SOURCE_DIR, 'tools', 'merbridge-cni.c'), out, [], ['-static']))
    await rm(dir, {recursive: true, force: true})
    await rename(tmp, dir)
  } catch (error) {
    await rm(tmp, {recursive: true, force: true})
    throw error
  }
  return {...result, compiled: true}
}

/**
 * Put the objects of the default build into the package (SHIPPED_DIR), for an image that keeps
 * no compiler: `node dist/bpf/build-objects.js --ship` in the image's build stage.
 */
export async function shipObjects(): Promise<{hash: string; dir: string}> {
  const built = await buildObjects()
  const dir = join(SHIPPED_DIR, built.hash)
  await rm(SHIPPED_DIR, {recursive: true, force: true})
  await mkdir(SHIPPED_DIR, {recursive: true})
  await cp(built.dir, dir, {recursive: true})
  await writeFile(shippedIndex(), JSON.stringify({[await inputsHash({})]: built.hash}, null, 2) + '\n')
  return {hash: built.hash, dir}
}
