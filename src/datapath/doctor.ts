import {existsSync, statSync} from 'node:fs'
import {join, resolve} from 'node:path'
import {bpftool} from '../bpf/bpftool.js'
import {clangTargetsBpf, clangVersion} from '../bpf/clang.js'
import {missingFeatures} from '../bpf/features.js'
import {buildObjects, shippedObjects} from '../bpf/objects.js'
import {OPTIONAL_FEATURE_NAMES, OPTIONAL_FEATURES} from '../bpf/optional.js'
import {probeLoads, type ProbeResults} from './probes.js'
import {Installation} from './installation.js'
import {programsOf} from './disable.js'
import {PROGRAMS} from '../bpf/programs.js'
import {describeError} from '../errors.js'
import {BPFFS_MOUNT} from '../paths.js'
import {currentPrivileges, type CapName} from '../node/caps.js'
import {hasBtf, kernelAtLeast, type KernelVersion, MIN_KERNEL, runningKernel} from '../node/kernel.js'
import {findCgroup2, isBpffs, type Mount, mountOf, readMounts} from '../node/mounts.js'
import {listNetnsCandidates, namespaceHolders, netnsCookies, normalIp} from '../node/netns.js'
import {missingInbound} from '../node/tc-inbound.js'

export type CheckStatus = 'pass' | 'warn' | 'fail'

export interface Check {
  id: string
  title: string
  status: CheckStatus
  detail: string
  /** what to do, when status is not pass */
  remedy?: string
  /** a failed required check stops enable */
  required: boolean
  /** an optional kernel feature (bpf/optional.ts): shown apart, a warning at worst */
  optional?: boolean
}

const pass = (id: string, title: string, detail: string, required = true): Check => ({id, title, status: 'pass', detail, required})

// ---- decisions, pure so that tests can feed them any machine ------------------------------------

export function checkPrivileges(uid: number, missing: CapName[]): Check {
  const title = 'privileges'
  if (uid === 0 && missing.length === 0) return pass('privileges', title, 'running as root')
  if (missing.length === 0) return pass('privileges', title, `uid ${uid} with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN`)
  return {
    id: 'privileges',
    title,
    status: 'fail',
    required: true,
    detail: `uid ${uid} lacks ${missing.join(', ')}`,
    remedy: 'run as root: sudo merbridge ...',
  }
}

/** The release, for information: what the kernel can do is decided by the feature checks (a distribution kernel may have backports). */
export function checkKernel(v: KernelVersion | undefined): Check {
  const title = 'kernel version'
  if (!v)
    return {
      id: 'kernel',
      title,
      status: 'warn',
      required: false,
      detail: 'could not read the kernel release; judged by its features below',
      remedy: 'check `uname -r`',
    }
  if (!kernelAtLeast(v, MIN_KERNEL.major, MIN_KERNEL.minor))
    return {
      id: 'kernel',
      title,
      status: 'warn',
      required: false,
      detail: `${v.raw} is older than ${MIN_KERNEL.text}, the oldest release with every feature the datapath uses; judged by its features below`,
      remedy: `if a feature check fails, upgrade the node to Linux ${MIN_KERNEL.text} or newer`,
    }
  return pass('kernel', title, v.raw, false)
}

/** The probe loads of doctor (datapath/probes.ts): the datapath, the netns cookie, then each optional feature apart. */
export function checkProbes(p: ProbeResults): Check[] {
  const checks: Check[] = [
    p.datapath === undefined
      ? pass(
          'datapath-load',
          'datapath loads',
          "every program of the datapath passed this kernel's verifier (loaded, attached nowhere, removed)",
        )
      : {
          id: 'datapath-load',
          title: 'datapath loads',
          status: 'fail',
          required: true,
          detail: p.datapath,
          remedy: 'the kernel lacks a feature the datapath needs (the line above names the program it refused): upgrade the node',
        },
    p.netnsCookie === undefined
      ? pass('netns-cookie', 'network namespace cookies', 'SO_NETNS_COOKIE answers')
      : {
          id: 'netns-cookie',
          title: 'network namespace cookies',
          status: 'fail',
          required: true,
          detail: p.netnsCookie,
          remedy: `upgrade the node to Linux ${MIN_KERNEL.text} or newer`,
        },
  ]
  for (const feature of OPTIONAL_FEATURE_NAMES) {
    const f = OPTIONAL_FEATURES[feature]
    const why = p.unavailable[feature]
    checks.push(
      why === undefined
        ? {...pass(feature, f.title, 'perConnection' in f ? f.perConnection : f.buys, false), optional: true}
        : {
            id: feature,
            title: f.title,
            status: 'warn',
            required: false,
            optional: true,
            detail: `unavailable (${why})`,
            remedy: `merbridge works without it: ${f.without}`,
          },
    )
  }
  return checks
}

export function checkBtf(present: boolean): Check {
  if (present) return pass('btf', 'kernel BTF', '/sys/kernel/btf/vmlinux present', false)
  return {
    id: 'btf',
    title: 'kernel BTF',
    status: 'fail',
    required: true,
    detail: "/sys/kernel/btf/vmlinux is missing: the inbound guard reads a socket's network namespace through it (CO-RE)",
    remedy: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y',
  }
}

/** Find the cgroup v2 root, or check the one given with --cgroup. */
export function checkCgroup(mounts: Mount[], given?: string): Check & {path?: string} {
  const title = 'cgroup v2'
  const found = findCgroup2(mounts)
  if (given) {
    const path = resolve(given)
    const mount = mountOf(mounts, path)
    if (!existsSync(path) || !statSync(path).isDirectory())
      return {
        id: 'cgroup',
        title,
        status: 'fail',
        required: true,
        detail: existsSync(path) ? `${path} is a file, not a cgroup folder` : `${path} does not exist`,
        remedy: found.path
          ? `use --cgroup ${found.path}, this host's cgroup v2 mount`
          : 'mount cgroup v2: mount -t cgroup2 none /sys/fs/cgroup',
      }
    // a hybrid host's cgroup root given whole (the DaemonSet mounts the host's /sys/fs/cgroup):
    // its v2 hierarchy is the `unified` mount inside it
    const unified = join(path, 'unified')
    if (mount?.fstype !== 'cgroup2' && mounts.some((m) => m.target === unified && m.fstype === 'cgroup2'))
      return {...pass('cgroup', title, `${unified} (the cgroup v2 mount of the hybrid host's cgroup root ${path})`), path: unified}
    if (mount?.fstype !== 'cgroup2')
      return {
        id: 'cgroup',
        title,
        status: 'fail',
        required: true,
        detail: `${path} is not on a cgroup v2 mount (it is ${mount?.fstype ?? 'unknown'})`,
        remedy: found.path
          ? `use --cgroup ${found.path}, this host's cgroup v2 mount`
          : 'mount cgroup v2: mount -t cgroup2 none /sys/fs/cgroup',
      }
    return {...pass('cgroup', title, `${path} (given; ${found.layout} host)`), path}
  }
  if (found.path) return {...pass('cgroup', title, `${found.path} (${found.layout} host)`), path: found.path}
  const detail = found.layout === 'legacy' ? 'only cgroup v1 is mounted (a v1-only host)' : 'no cgroup filesystem is mounted'
  return {
    id: 'cgroup',
    title,
    status: 'fail',
    required: true,
    detail,
    remedy:
      'mount cgroup v2 (mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified), or boot with systemd.unified_cgroup_hierarchy=1',
  }
}

export function checkBpffs(mounts: Mount[], dir: string): Check {
  const title = 'bpf filesystem'
  if (isBpffs(mounts, dir)) return pass('bpffs', title, `${mountOf(mounts, dir)?.target} is mounted`)
  if (dir.startsWith(BPFFS_MOUNT + '/') || dir === BPFFS_MOUNT)
    return {
      id: 'bpffs',
      title,
      status: 'warn',
      required: true,
      detail: `${BPFFS_MOUNT} is not mounted; enable will mount it`,
      remedy: `mount -t bpf bpf ${BPFFS_MOUNT}`,
    }
  return {
    id: 'bpffs',
    title,
    status: 'fail',
    required: true,
    detail: `${dir} is not on a bpf filesystem`,
    remedy: `choose a folder below ${BPFFS_MOUNT} (--bpffs), or mount -t bpf bpf ${BPFFS_MOUNT}`,
  }
}

export function checkFeatures(probe: unknown): Check {
  const {missing, checked} = missingFeatures(probe)
  if (missing.length === 0) return pass('features', 'kernel BPF features', `${checked} program types, map types and helpers available`)
  return {
    id: 'features',
    title: 'kernel BPF features',
    status: 'fail',
    required: true,
    detail: `missing: ${missing.join(', ')}`,
    remedy: 'upgrade the node to Linux 5.15 or newer with CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and CONFIG_BPF_STREAM_PARSER',
  }
}

interface Attached {
  id: number
  name: string
  attach_type: string
}

/** Whether one cgroup path is the other or below it. */
const within = (path: string, root: string) => path === root || path.startsWith(root.endsWith('/') ? root : `${root}/`)

/**
 * Programs of other tools on the cgroup (a warning), and merbridge's programs of another
 * installation on it, above it or below it (a failure): a cgroup's programs run for every cgroup
 * below it, so two datapaths there would both rewrite every connect of the pods below, and each
 * one's disable would leave the other's half working. `tree` is every cgroup with programs.
 */
export function checkForeignPrograms(
  cgroup: string,
  attached: Attached[],
  ours: Set<number>,
  tree: {cgroup: string; programs: Attached[]}[] = [],
): Check {
  const foreign = attached.filter((a) => !ours.has(a.id))
  const twins = [
    {cgroup, programs: foreign},
    ...tree.filter((t) => t.cgroup !== cgroup && (within(t.cgroup, cgroup) || within(cgroup, t.cgroup))),
  ]
    .map((t) => ({cgroup: t.cgroup, twin: t.programs.filter((a) => a.name.startsWith('mb_') && !ours.has(a.id))}))
    .filter((t) => t.twin.length > 0)
  const first = twins[0]
  if (first)
    return {
      id: 'foreign-programs',
      title: 'other programs on the cgroup',
      status: 'fail',
      required: true,
      detail: `another merbridge installation is attached to ${first.cgroup}${first.cgroup === cgroup ? '' : within(first.cgroup, cgroup) ? `, below ${cgroup}` : `, above ${cgroup}`} (${first.twin
        .map((a) => `${a.name} id ${a.id}`)
        .slice(0, 3)
        .join(', ')}${first.twin.length > 3 ? ', ...' : ''})`,
      remedy: 'use the --bpffs of that installation, or remove it first with merbridge disable --bpffs <its folder>',
    }
  if (foreign.length === 0) return pass('foreign-programs', 'other programs on the cgroup', `none on ${cgroup}`, false)
  return {
    id: 'foreign-programs',
    title: 'other programs on the cgroup',
    status: 'warn',
    required: false,
    detail: foreign.map((a) => `${a.id} ${a.name || '(no name)'} (${a.attach_type})`).join(', '),
    remedy:
      'another mesh accelerator or a CNI socket load balancer may conflict with merbridge; check what owns them with `bpftool prog show id ID`',
  }
}

// ---- probes of this machine ---------------------------------------------------------------------

async function toolCheck(id: string, title: string, probe: () => Promise<string>): Promise<Check> {
  try {
    return pass(id, title, await probe())
  } catch (error) {
    const {message, suggestion} = describeError(error)
    return {id, title, status: 'fail', required: true, detail: message, remedy: suggestion}
  }
}

/** clang, unless the package ships the objects of the default build (the image keeps no compiler). */
async function compilerCheck(): Promise<Check> {
  const check = await toolCheck('clang', 'clang', async () => {
    const version = await clangVersion()
    if (!(await clangTargetsBpf())) throw new Error(`clang ${version} cannot target bpf (install the llvm build with the BPF backend)`)
    return `clang ${version}, targets bpf`
  })
  const shipped = check.status === 'pass' ? undefined : await shippedObjects()
  return shipped === undefined
    ? check
    : pass('clang', 'clang', `not needed: the package ships the objects (${shipped}); another --max-connections needs clang`)
}

export interface PreflightOptions {
  cgroup?: string
  bpffs?: string
  /** doctor: once enabled, also check that inbound capture is on every registered pod's interfaces */
  inbound?: boolean
  /** doctor: build the objects and load them for a moment, to judge the kernel by what it does */
  probeLoads?: boolean
}

export interface PreflightResult {
  checks: Check[]
  ok: boolean
  cgroup?: string
  enabled: boolean
}

/** Every check, run for real on this node. */
export async function runPreflight(opts: PreflightOptions = {}): Promise<PreflightResult> {
  const installation = new Installation(opts.bpffs)
  const mounts = readMounts()
  const privileges = currentPrivileges()
  const cgroup = checkCgroup(mounts, opts.cgroup)
  const checks: Check[] = [
    checkPrivileges(privileges.uid, privileges.missing),
    checkKernel(runningKernel()),
    checkBtf(hasBtf()),
    cgroup,
    checkBpffs(mounts, installation.dir),
  ]
  // the probes are processes that wait on nothing of each other's: run side by side (enable pays
  // for them every time, seconds on an emulated node)
  const [compiler, bpftoolCheck] = await Promise.all([
    compilerCheck(),
    toolCheck('bpftool', 'bpftool', async () => `bpftool ${await bpftool.version()}`),
  ])
  checks.push(compiler, bpftoolCheck)
  if (bpftoolCheck.status === 'pass' && privileges.missing.length === 0) {
    const [features, probes, foreign] = await Promise.all([
      featureCheck(),
      opts.probeLoads ? probeChecks(checks) : [],
      cgroup.path ? foreignCheck(cgroup.path, installation) : undefined,
    ])
    checks.push(features, ...probes, ...(foreign ? [foreign] : []))
  } else {
    checks.push({
      id: 'features',
      title: 'kernel BPF features',
      status: 'fail',
      required: true,
      detail: 'not probed: needs bpftool and root',
      remedy: 'fix the checks above, then run merbridge doctor again',
    })
  }
  const enabled = await enabledCheck(installation)
  checks.push(enabled.check)
  if (opts.inbound && enabled.enabled) checks.push(await inboundCheck(installation))
  return {checks, ok: checks.every((c) => !c.required || c.status !== 'fail'), cgroup: cgroup.path, enabled: enabled.enabled}
}

async function featureCheck(): Promise<Check> {
  try {
    return checkFeatures(await bpftool.featureProbe())
  } catch (error) {
    return {
      id: 'features',
      title: 'kernel BPF features',
      status: 'fail',
      required: true,
      detail: describeError(error).message,
      remedy: 'run `bpftool feature probe kernel` to see why',
    }
  }
}

async function probeChecks(before: Check[]): Promise<Check[]> {
  const blocker = before.find((c) => c.required && c.status === 'fail' && ['clang', 'bpffs'].includes(c.id))
  if (blocker)
    return [
      {
        id: 'datapath-load',
        title: 'datapath loads',
        status: 'fail',
        required: true,
        detail: `not probed: ${blocker.title} failed`,
        remedy: 'fix the checks above, then run merbridge doctor again',
      },
    ]
  try {
    return checkProbes(await probeLoads(await buildObjects()))
  } catch (error) {
    const {message, suggestion} = describeError(error)
    return [{id: 'datapath-load', title: 'datapath loads', status: 'fail', required: true, detail: message, remedy: suggestion}]
  }
}

/** This installation's programs, a staged replacement's among them (both run while one takes over). */
async function ourProgramIds(installation: Installation): Promise<Set<number>> {
  return new Set((await programsOf(installation, await installation.readState().catch(() => undefined), {staged: true})).keys())
}

async function foreignCheck(cgroup: string, installation: Installation): Promise<Check> {
  try {
    return checkForeignPrograms(cgroup, await bpftool.cgroupShow(cgroup), await ourProgramIds(installation), await bpftool.cgroupTree())
  } catch (error) {
    return {
      id: 'foreign-programs',
      title: 'other programs on the cgroup',
      status: 'warn',
      required: false,
      detail: describeError(error).message,
    }
  }
}

/** Pods whose interfaces lack inbound capture (tc): their sidecar is skipped by whatever arrives there. */
export function checkInbound(gaps: {pod: string; interfaces: string[]}[], checked: number, unreadable: string[]): Check {
  const id = 'inbound'
  const title = 'inbound capture on the pods'
  if (gaps.length > 0) {
    const list = gaps.slice(0, 5).map((g) => `${g.pod} (${g.interfaces.join(', ')})`)
    return {
      id,
      title,
      status: 'fail',
      required: true,
      detail: `not attached on ${gaps.length} of ${checked} registered pod(s): ${list.join('; ')}${gaps.length > 5 ? '; ...' : ''}`,
      remedy: 'run merbridge sync (or merbridge enable) to attach it again',
    }
  }
  if (unreadable.length > 0)
    return {
      id,
      title,
      status: 'warn',
      required: false,
      detail: `${checked - unreadable.length} of ${checked} pod(s) checked; cannot read ${unreadable.slice(0, 3).join(', ')}${unreadable.length > 3 ? ', ...' : ''}`,
    }
  return pass(id, title, `on every interface of the ${checked} registered pod(s) found on this node`)
}

async function inboundCheck(installation: Installation): Promise<Check> {
  try {
    const prog = await bpftool.progShowPinned(installation.prog('mb_tc_inbound'))
    const state = await installation.readState()
    if (!prog || !state) return checkInbound([], 0, [])
    const helpers = installation.requireHelpers()
    const holders = namespaceHolders(await listNetnsCandidates({helper: helpers.netnsCookie}))
    const held = state.pods.meshed.map((p) => ({p, holders: p.netns === undefined ? [] : (holders.get(normalIp(p.ip)) ?? [])}))
    const cookies = await netnsCookies(helpers.netnsCookie, [...new Set(held.flatMap((h) => h.holders.map((c) => c.path)))])
    // the namespace each pod is registered to (not another holding its address); pods gone since the last sync have nothing to capture
    const found = held.flatMap(({p, holders: hs}) => {
      const ns = hs.find((h) => cookies.get(h.path)?.toString() === p.netns)
      return ns ? [{pod: `${p.namespace}/${p.name}`, target: {path: ns.path, skip: p.noInboundCapture ?? []}}] : []
    })
    const tc = await missingInbound(
      helpers.tcInbound,
      prog.id,
      found.map((f) => f.target),
    )
    const gaps = found.flatMap((f) => {
      const missing = tc.done.get(f.target.path) ?? []
      return missing.length > 0 ? [{pod: f.pod, interfaces: missing}] : []
    })
    return checkInbound(
      gaps,
      found.length,
      found.filter((f) => tc.failed.has(f.target.path)).map((f) => f.pod),
    )
  } catch (error) {
    return {id: 'inbound', title: 'inbound capture on the pods', status: 'warn', required: false, detail: describeError(error).message}
  }
}

async function enabledCheck(installation: Installation): Promise<{check: Check; enabled: boolean}> {
  const state = await installation.readState()
  const pins = installation.exists() ? await installation.pinned() : {progs: [], maps: []}
  const title = 'merbridge on this node'
  if (state && pins.progs.length === PROGRAMS.length)
    return {
      enabled: true,
      check: pass('enabled', title, `enabled since ${state.enabledAt} on ${state.cgroup} (${installation.dir})`, false),
    }
  if (pins.progs.length + pins.maps.length > 0 || state)
    return {
      enabled: false,
      check: {
        id: 'enabled',
        title,
        status: 'warn',
        required: false,
        detail: `a partial installation is left in ${installation.dir}`,
        remedy: 'run merbridge disable to clean it',
      },
    }
  return {enabled: false, check: pass('enabled', title, 'not enabled', false)}
}
