import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, readdir, readFile, rename, rm} from 'node:fs/promises'
import {join} from 'node:path'
import {BPF_SOURCE_DIR, cacheDir} from '../paths.js'
import {BPF_CFLAGS, clangIdentity, compileBpf, compileHost, HOST_CFLAGS, multiarchInclude} from './clang.js'

/** The host programs sync needs beside the datapath: enable keeps a copy with the installation. */
export interface Helpers {
  netnsCookie: string
  /** attaches and detaches mb_tc_inbound in pod network namespaces */
  tcInbound: string
  /** iterator disable reads to release each socket of sock_pair_map once it has read what was moved to it */
  sockhashQueued: string
}

export const HELPER_FILES = {netnsCookie: 'netns-cookie', tcInbound: 'tc-inbound', sockhashQueued: 'sockhash-queued.bpf.o'} as const

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
  return opts.maxConnections === undefined || opts.maxConnections === DEFAULT_MAX_CONNECTIONS ? [] : [`-DMB_MAX_CONNS=${opts.maxConnections}`]
}

/** A hash of everything that goes into the objects. */
export async function sourceHash(opts: BuildOptions = {}, compiler?: string): Promise<string> {
  const h = createHash('sha256')
  h.update(compiler ?? clangIdentity())
  h.update(JSON.stringify([BPF_CFLAGS, HOST_CFLAGS, multiarchInclude(), ...defines(opts)]))
  for (const file of await sourceFiles()) {
    h.update(file.slice(BPF_SOURCE_DIR.length))
    h.update(await readFile(file))
  }
  return h.digest('hex').slice(0, 16)
}

/**
 * Compile the datapath and its helper unless the cache already holds this exact build.
 * Writes to a temporary folder and renames it, so a killed build never leaves a half cache entry.
 */
export async function buildObjects(opts: {rebuild?: boolean} & BuildOptions = {}): Promise<BuiltObjects> {
  const hash = await sourceHash(opts)
  const dir = join(cacheDir(), hash)
  const result = {hash, dir, datapath: join(dir, 'merbridge.bpf.o'), netnsCookie: join(dir, HELPER_FILES.netnsCookie), tcInbound: join(dir, HELPER_FILES.tcInbound), sockhashQueued: join(dir, HELPER_FILES.sockhashQueued), counters: {maps: join(dir, 'map-counts.bpf.o'), sockhash: join(dir, 'sockhash-count.bpf.o')}}
  const outputs = [result.datapath, result.netnsCookie, result.tcInbound, result.sockhashQueued, result.counters.maps, result.counters.sockhash]
  if (!opts.rebuild && outputs.every((f) => existsSync(f))) return {...result, compiled: false}

  const tmp = `${dir}.tmp-${process.pid}`
  await rm(tmp, {recursive: true, force: true})
  await mkdir(tmp, {recursive: true})
  try {
    await compileBpf(join(BPF_SOURCE_DIR, 'merbridge.bpf.c'), join(tmp, 'merbridge.bpf.o'), defines(opts))
    for (const name of ['map-counts', 'sockhash-count']) await compileBpf(join(BPF_SOURCE_DIR, 'iter', `${name}.bpf.c`), join(tmp, `${name}.bpf.o`))
    await compileBpf(join(BPF_SOURCE_DIR, 'iter', 'sockhash-queued.bpf.c'), join(tmp, HELPER_FILES.sockhashQueued))
    await compileHost(join(BPF_SOURCE_DIR, 'tools', 'netns-cookie.c'), join(tmp, HELPER_FILES.netnsCookie))
    await compileHost(join(BPF_SOURCE_DIR, 'tools', 'tc-inbound.c'), join(tmp, HELPER_FILES.tcInbound), ['bpf'])
    await rm(dir, {recursive: true, force: true})
    await rename(tmp, dir)
  } catch (error) {
    await rm(tmp, {recursive: true, force: true})
    throw error
  }
  return {...result, compiled: true}
}
