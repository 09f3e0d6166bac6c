// enable is transactional: a failure at any step leaves the node as it was, a killed enable is
// cleaned by disable, and a user without privileges gets one clear line.
import assert from 'node:assert/strict'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {readMaps} from '../../src/bpf/maps.js'
import {Installation} from '../../src/datapath/installation.js'
import {Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import type {DisableResult} from '../../src/datapath/disable.js'
import type {PreflightResult} from '../../src/datapath/doctor.js'
import type {StatusReport} from '../../src/datapath/status.js'
import type {EnableResult} from '../../src/commands/enable.js'
import {BIN, cli, eventually, kernelSkipReason, parseJson, uniqueInstall, suiteTimeout} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'setpriv'])

/** A pods list of `n` meshed pods on this node: more than the maps hold when n > 4096. */
function manyPods(n: number): string {
  const items = Array.from({length: n}, (_, i) => ({
    kind: 'Pod',
    metadata: {name: `p${i}`, namespace: 'many', annotations: {'sidecar.istio.io/status': '{}'}},
    spec: {nodeName: hostname(), containers: [{name: 'istio-proxy'}]},
    status: {phase: 'Running', podIP: `10.200.${i >> 8}.${i & 255}`},
  }))
  return JSON.stringify({kind: 'List', items})
}

/**
 * A stand-in for a tool that runs the real one but fails the Nth call whose arguments contain
 * MB_FAIL_MATCH and do not match the glob MB_FAIL_UNLESS (after running it when MB_FAIL_AFTER=1),
 * or kills its caller with MB_FAIL_KILL=1.
 */
/** bpftool's batches that only read (JSON out): a fault in a map write batch passes them by */
const WRITES_ONLY = '-j *'

function faultyTool(dir: string, real: string): string {
  const path = join(dir, `faulty-${real}`)
  writeFileSync(
    path,
    `#!/bin/sh
case "$*" in
  $MB_FAIL_UNLESS) ;;
  *"$MB_FAIL_MATCH"*)
    n=$(cat "$MB_FAIL_COUNTER" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$MB_FAIL_COUNTER"
    if [ "$n" = "\${MB_FAIL_NTH:-1}" ]; then
      [ "$MB_FAIL_AFTER" = 1 ] && ${real} "$@" >/dev/null 2>&1
      [ "$MB_FAIL_KILL" = 1 ] && kill -9 $PPID
      echo "injected failure of ${real} $*" >&2
      exit 1
    fi;;
esac
exec ${real} "$@"
`,
  )
  chmodSync(path, 0o755)
  return path
}

/**
 * A bpftool that says when enable reached the attach step (the file `mark` appears) and holds it
 * there until `${mark}.go` exists: an enable caught in the middle, for as long as a test needs.
 */
/** Whether a process lives (a zombie awaiting its reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

function heldTool(dir: string): {tool: string; mark: string} {
  const mark = join(dir, 'attaching')
  const tool = join(dir, 'held-bpftool')
  writeFileSync(
    tool,
    `#!/bin/sh\ncase "$*" in *"cgroup attach"*) echo $$ > "${mark}"; while [ ! -e "${mark}.go" ]; do sleep 0.05; done;; esac\nexec bpftool "$@"\n`,
  )
  chmodSync(tool, 0o755)
  return {tool, mark}
}

describe('enable failures', {skip, timeout: suiteTimeout(180_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const tmp = mkdtempSync(join(tmpdir(), 'mb-faults-'))
  let podsFile = ''

  before(async () => {
    await lab.create([{name: 'a', meshed: true}])
    podsFile = lab.writePodList()
  })

  after(async () => {
    await lab.destroy()
    rmSync(tmp, {recursive: true, force: true})
  })

  /** A first installation, which the test then tries to replace. */
  async function enabled(install: ReturnType<typeof uniqueInstall>): Promise<void> {
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], install.env)
    assert.equal(r.code, 0, r.stdout + r.stderr)
  }

  /** Each program as status sees it: name, id and whether it is attached. */
  async function programIds(install: ReturnType<typeof uniqueInstall>): Promise<string[]> {
    const r = await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)
    return parseJson<StatusReport>(r.stdout).programs.map((p) => `${p.name} ${p.id ?? '?'} ${String(p.attached)}`)
  }

  /** An enable held at its attach step by a wrapper of bpftool, until `release()`. */
  function heldEnable(name: string) {
    const install = uniqueInstall()
    const {tool, mark} = heldTool(mkdtempSync(join(tmp, `${name}-`)))
    const child = execa(process.execPath, [BIN, 'enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], {
      reject: false,
      env: {...install.env, MERBRIDGE_BPFTOOL: tool, NO_COLOR: '1'},
      // execa's kill would follow SIGTERM with SIGKILL after 5 s: an undo takes longer on a slow node
      forceKillAfterDelay: false,
    })
    return {install, child, mark, release: () => writeFileSync(`${mark}.go`, '')}
  }

  async function assertNothingLeft(inst: Installation): Promise<void> {
    assert.ok(!existsSync(inst.dir), `pins left in ${inst.dir}`)
    assert.ok(!existsSync(inst.stateFile), 'state file left')
    const tree = JSON.parse((await execa('bpftool', ['cgroup', 'tree', '-j'])).stdout) as {cgroup: string}[]
    assert.deepEqual(
      tree.filter((t) => t.cgroup.startsWith(lab.cgroup)),
      [],
      'programs left attached',
    )
  }

  const failures: {
    step: string
    title: string
    env?: (dir: string) => Record<string, string>
    flags?: Record<string, string>
    prepare?: (inst: Installation) => () => void
  }[] = [
    {step: 'preflight', title: 'Check the node', flags: {'--cgroup': '/proc'}},
    {
      step: 'build',
      title: 'Build the datapath',
      env: (d) => ({MERBRIDGE_CLANG: faultyTool(d, 'clang'), MERBRIDGE_CACHE_DIR: join(d, 'cache'), MB_FAIL_MATCH: '-target bpf'}),
    },
    {
      step: 'load',
      title: 'Load and pin programs and maps',
      env: (d) => ({MERBRIDGE_BPFTOOL: faultyTool(d, 'bpftool'), MB_FAIL_MATCH: 'prog loadall', MB_FAIL_AFTER: '1'}),
    },
    {
      step: 'configure',
      title: 'Configure the mesh profile',
      env: (d) => ({MERBRIDGE_BPFTOOL: faultyTool(d, 'bpftool'), MB_FAIL_MATCH: 'batch file', MB_FAIL_UNLESS: WRITES_ONLY}),
    },
    {step: 'read-pods (bad file)', title: 'Read the pods of this node', flags: {'--pods-file': join(tmp, 'bad-pods.json')}},
    {
      step: 'read-pods (more pods than the maps hold)',
      title: 'Read the pods of this node',
      flags: {'--pods-file': join(tmp, 'many-pods.json')},
    },
    {
      step: 'pods (map writes)',
      title: 'Register the pods of this node',
      env: (d) => ({
        MERBRIDGE_BPFTOOL: faultyTool(d, 'bpftool'),
        MB_FAIL_MATCH: 'batch file',
        MB_FAIL_UNLESS: WRITES_ONLY,
        MB_FAIL_NTH: '2',
      }),
    },
    {
      step: 'attach',
      title: 'Attach to the cgroup',
      env: (d) => ({MERBRIDGE_BPFTOOL: faultyTool(d, 'bpftool'), MB_FAIL_MATCH: 'connect4 pinned', MB_FAIL_AFTER: '1'}),
    },
    // the record's place is taken by a folder: everything before it succeeds, the record cannot be written
    {
      step: 'record',
      title: 'Record the installation',
      prepare: (inst) => (mkdirSync(inst.stateFile, {recursive: true}), () => rmdirSync(inst.stateFile)),
    },
  ]

  for (const f of failures) {
    it(`leaves nothing behind when "${f.title}" fails (${f.step})`, async () => {
      writeFileSync(join(tmp, 'bad-pods.json'), '{"items": [')
      writeFileSync(join(tmp, 'many-pods.json'), manyPods(4097))
      const install = uniqueInstall()
      const dir = mkdtempSync(join(tmp, 'step-'))
      const env = {...install.env, MB_FAIL_COUNTER: join(dir, 'count'), ...f.env?.(dir)}
      const unprepare = f.prepare?.(install.installation())
      try {
        const flags = {'--cgroup': lab.cgroup, '--bpffs': install.bpffs, '--pods-file': podsFile, ...f.flags}
        const r = await cli(['enable', ...Object.entries(flags).flat()], env)
        assert.equal(r.code, 1, r.stdout + r.stderr)
        const errorLines = r.stderr.split('\n').filter((l) => l.startsWith('Error:'))
        assert.equal(errorLines.length, 1, r.stderr)
        assert.match(errorLines[0]!, new RegExp(`enable failed at "${f.title}"`))
        unprepare?.() // the test's own obstacle (an empty folder: enable wrote nothing into it)
        await assertNothingLeft(install.installation())
      } finally {
        await cli(['disable', '--bpffs', install.bpffs], install.env)
        install.cleanup()
      }
    })
  }

  it('says so in one line and changes nothing when run without privileges', async () => {
    const install = uniqueInstall()
    try {
      const r = await execa(
        'setpriv',
        [
          '--reuid',
          '65534',
          '--regid',
          '65534',
          '--clear-groups',
          '--inh-caps=-all',
          process.execPath,
          BIN,
          'enable',
          '--cgroup',
          lab.cgroup,
          '--bpffs',
          install.bpffs,
          '--pods-file',
          podsFile,
        ],
        {
          reject: false,
          env: {...install.env, HOME: '/nonexistent', NO_COLOR: '1'},
        },
      )
      assert.equal(r.exitCode, 1, r.stdout + r.stderr)
      const lines = r.stderr.split('\n').filter(Boolean)
      assert.match(lines[0]!, /^Error: merbridge enable needs root: uid 65534 lacks CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF$/)
      assert.match(lines[1] ?? '', /run as root/)
      assert.equal(lines.length, 2, 'the error and what to do, nothing else')
      await assertNothingLeft(install.installation())
    } finally {
      install.cleanup()
    }
  })

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`undoes everything and says so when ${signal} arrives during enable`, async () => {
      const {install, child, mark, release} = heldEnable('signal')
      try {
        await eventually('enable to reach the attach step', () => existsSync(mark))
        child.kill(signal)
        release()
        const r = await child
        assert.equal(r.exitCode, signal === 'SIGINT' ? 130 : 143, r.stdout + r.stderr)
        const lines = r.stderr.split('\n').filter((l) => l.startsWith('Error:'))
        assert.deepEqual(lines, [
          `Error: enable was interrupted by ${signal} during "Attach to the cgroup"; everything it had done was undone`,
        ])
        // the progress names no other step as the one that failed
        assert.doesNotMatch(r.stdout + r.stderr, /FAILED/)
        assert.match(r.stdout, /Record the installation \[SKIPPED: interrupted\]/)
        await assertNothingLeft(install.installation())
      } finally {
        release()
        await child
        install.cleanup()
      }
    })
  }

  it('takes its tools with it when killed by SIGKILL: nothing goes on attaching after it', async () => {
    const {install, child, mark, release} = heldEnable('sigkill')
    try {
      await eventually('enable to reach the attach step', () => existsSync(mark) && readFileSync(mark, 'utf8').trim() !== '')
      const held = Number(readFileSync(mark, 'utf8'))
      child.kill('SIGKILL')
      await child
      await eventually('the bpftool enable started to be gone with it', () => !alive(held))
      // had it lived, it would attach now, with no enable left to undo it: disable cleans what enable left
      release()
      const d = await cli(['disable', '--bpffs', install.bpffs], install.env)
      assert.equal(d.code, 0, d.stdout + d.stderr)
      await assertNothingLeft(install.installation())
    } finally {
      release()
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('lets one command change an installation at a time: a second enable waits, then names the first', async () => {
    const {install, child: first, mark, release} = heldEnable('lock')
    try {
      await eventually('the first enable to reach the attach step', () => existsSync(mark))
      // the first holds the installation: the second waits its 300 ms, then fails without touching anything
      const second = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], {
        ...install.env,
        MERBRIDGE_LOCK_WAIT_MS: '300',
      })
      assert.equal(second.code, 1, second.stdout + second.stderr)
      assert.deepEqual(
        second.stderr.split('\n').filter((l) => l.startsWith('Error:')),
        [`Error: another merbridge command (pid ${first.pid}) is changing ${install.bpffs}; enable did not start`],
      )
      const disable = await cli(['disable', '--bpffs', install.bpffs], {...install.env, MERBRIDGE_LOCK_WAIT_MS: '300'})
      assert.equal(disable.code, 1, 'disable waits its turn too')
      release()
      const r = await first
      assert.equal(r.exitCode, 0, r.stdout + r.stderr)
      // released: the next command runs
      assert.equal((await cli(['disable', '--bpffs', install.bpffs], install.env)).code, 0)
      await assertNothingLeft(install.installation())
    } finally {
      release()
      await first
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('keeps the running datapath when a replacement cannot read its pods, and says why in one line', async () => {
    const install = uniqueInstall()
    try {
      await enabled(install)
      const ids = () => programIds(install)
      const before = await ids()
      writeFileSync(join(tmp, 'bad-pods.json'), '{"items": [')
      // --rebuild asks for a replacement: nothing of the old datapath may go before the new one can be made
      const r = await cli(
        ['enable', '--rebuild', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', join(tmp, 'bad-pods.json')],
        install.env,
      )
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.deepEqual(r.stderr.split('\n').filter((l) => l.startsWith('Error:')).length, 1, r.stderr)
      assert.match(r.stderr, /enable failed at "Read the pods of this node"/)
      assert.deepEqual(await ids(), before, 'the same programs, still attached')
      const status = await cli(['status', '--bpffs', install.bpffs], install.env)
      assert.equal(status.code, 0, status.stdout)
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('puts the old programs back when a replacement fails midway, and keeps the installation', async () => {
    const install = uniqueInstall()
    const dir = mkdtempSync(join(tmp, 'swap-'))
    try {
      await enabled(install)
      const ids = () => programIds(install)
      const before = await ids()
      // the staged connect6 cannot be attached: connect4..recvmsg6 were swapped already, and go back
      const env = {
        ...install.env,
        MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
        MB_FAIL_MATCH: `connect6 pinned ${install.bpffs}/next/progs/mb_connect6`,
        MB_FAIL_COUNTER: join(dir, 'count'),
      }
      const r = await cli(['enable', '--rebuild', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], env)
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.match(r.stderr, /enable failed at "Attach to the cgroup"/)
      assert.deepEqual(await ids(), before, 'the same programs, attached')
      assert.ok(!existsSync(join(install.bpffs, 'next')), 'the staged programs are gone')
      const status = await cli(['status', '--bpffs', install.bpffs], install.env)
      assert.equal(status.code, 0, status.stdout)
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('takes a replacement on new maps off again when it fails midway, and keeps the old datapath running', async () => {
    const install = uniqueInstall()
    const dir = mkdtempSync(join(tmp, 'swap-new-'))
    const attached = async () =>
      (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout) as {id: number}[]).map((p) => p.id).sort()
    try {
      await enabled(install)
      const before = await attached()
      // another capacity: maps of its own; its connect6 cannot be attached, after the others were
      const env = {
        ...install.env,
        MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
        MB_FAIL_MATCH: `connect6 pinned ${install.bpffs}/next/progs/mb_connect6`,
        MB_FAIL_COUNTER: join(dir, 'count'),
      }
      const r = await cli(
        ['enable', '--max-connections', '70000', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile],
        env,
      )
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.match(r.stderr, /enable failed at "Attach to the cgroup"/)
      assert.deepEqual(await attached(), before, 'only the old programs, all attached')
      assert.ok(!existsSync(join(install.bpffs, 'next')), 'the staged programs and maps are gone')
      const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
      assert.equal(status.verdict, 'healthy', status.problems.join('; '))
      assert.equal(status.maps.find((m) => m.name === 'pair_original_dst')?.capacity, 65535)
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('repairs a replacement on new maps killed with both datapaths attached, and disable then leaves nothing', async () => {
    const install = uniqueInstall()
    const dir = mkdtempSync(join(tmp, 'swap-killed-'))
    const attached = async () =>
      (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout || '[]') as unknown[]).length
    try {
      await enabled(install)
      const one = await attached()
      // killed right after the new connect4 is attached: the old and the new programs both run
      const env = {
        ...install.env,
        MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
        MB_FAIL_MATCH: `connect4 pinned ${install.bpffs}/next/progs/mb_connect4`,
        MB_FAIL_AFTER: '1',
        MB_FAIL_KILL: '1',
        MB_FAIL_COUNTER: join(dir, 'count'),
      }
      const killed = await cli(
        ['enable', '--max-connections', '70000', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile],
        env,
      )
      assert.notEqual(killed.code, 0)
      assert.equal(await attached(), 2 * one, `both datapaths attached (the case under test): ${killed.stdout} ${killed.stderr}`)
      const r = await cli(
        ['enable', '--max-connections', '70000', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile, '--json'],
        install.env,
      )
      assert.equal(r.code, 0, r.stderr + r.stdout)
      assert.match(parseJson<EnableResult>(r.stdout).repaired ?? '', /a replacement was interrupted/)
      assert.equal(await attached(), one, 'one datapath')
      const status = parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
      assert.equal(status.verdict, 'healthy', status.problems.join('; '))
      const d = await cli(['disable', '--bpffs', install.bpffs], install.env)
      assert.equal(d.code, 0, d.stderr)
      assert.equal(await attached(), 0)
      await assertNothingLeft(install.installation())
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('replaces anew, and says why, when the maps cannot be shared', async () => {
    const install = uniqueInstall()
    const dir = mkdtempSync(join(tmp, 'anew-'))
    try {
      await enabled(install)
      // loading on the old maps fails, as it does when a new version changed their layout
      const env = {
        ...install.env,
        MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
        MB_FAIL_MATCH: 'map name local_pod_ips pinned',
        MB_FAIL_COUNTER: join(dir, 'count'),
      }
      const r = await cli(['enable', '--rebuild', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile, '--json'], env)
      assert.equal(r.code, 0, r.stderr)
      const out = parseJson<EnableResult>(r.stdout)
      assert.equal(out.replaced?.how, 'anew')
      assert.match(out.replaced.why ?? '', /injected failure of bpftool prog loadall/)
      const status = await cli(['status', '--bpffs', install.bpffs], install.env)
      assert.equal(status.code, 0, status.stdout)
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('refuses a second installation on a cgroup that has one, before loading anything', async () => {
    const first = uniqueInstall()
    const second = uniqueInstall()
    try {
      const r1 = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', first.bpffs, '--pods-file', podsFile], first.env)
      assert.equal(r1.code, 0, r1.stderr)
      const attached = async () => (JSON.parse((await execa('bpftool', ['cgroup', 'show', lab.cgroup, '-j'])).stdout) as unknown[]).length
      const before = await attached()
      const r2 = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', second.bpffs, '--pods-file', podsFile], second.env)
      assert.equal(r2.code, 1, r2.stdout + r2.stderr)
      assert.match(r2.stderr, /another merbridge installation is attached to /)
      assert.equal(await attached(), before, 'no program added to the cgroup')
      assert.ok(!existsSync(second.bpffs), 'nothing pinned for the second')
    } finally {
      for (const i of [second, first]) {
        await cli(['disable', '--bpffs', i.bpffs], i.env)
        i.cleanup()
      }
    }
  })

  it('repairs what a killed sync left, with no compiler or cache, in a pin folder whose name has spaces', async () => {
    const install = uniqueInstall()
    const bpffs = `${install.bpffs} with spaces`
    const dir = mkdtempSync(join(tmp, 'sync-kill-'))
    const emptyList = join(dir, 'no-pods.json')
    writeFileSync(emptyList, JSON.stringify({kind: 'List', items: []}))
    const inst = install.installation(bpffs)
    const podIps = async () => (await readMaps.localPods(inst)).map((p) => p.ip)
    // a sync from a list without pod a, killed once its map batch has run: maps changed, record not
    const killedSync = () =>
      cli(['sync', '--bpffs', bpffs, '--pods-file', emptyList, '--allow-empty'], {
        ...install.env,
        MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
        MB_FAIL_MATCH: 'batch file',
        MB_FAIL_UNLESS: WRITES_ONLY,
        MB_FAIL_AFTER: '1',
        MB_FAIL_KILL: '1',
        MB_FAIL_COUNTER: join(dir, `count-${Date.now()}`),
      })
    // neither clang nor the build cache: sync uses what enable kept
    const noCompiler = {...install.env, MERBRIDGE_CLANG: join(dir, 'no-clang'), MERBRIDGE_CACHE_DIR: join(dir, 'no-cache')}
    try {
      const e = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', bpffs, '--pods-file', podsFile], install.env)
      assert.equal(e.code, 0, e.stderr)
      assert.deepEqual(await podIps(), [lab.pod('a').ip])

      assert.notEqual((await killedSync()).code, 0)
      assert.deepEqual(await podIps(), [], 'the killed sync removed pod a from the maps (the case under test)')
      assert.deepEqual(
        (await inst.readState())?.pods.meshed.map((p) => p.name),
        ['a'],
        'and left the record as it was',
      )

      const s = await cli(['sync', '--bpffs', bpffs, '--pods-file', podsFile, '--json'], noCompiler)
      assert.equal(s.code, 0, s.stderr)
      assert.deepEqual(await podIps(), [lab.pod('a').ip], 'the next sync repaired the maps')

      assert.notEqual((await killedSync()).code, 0)
      assert.deepEqual(await podIps(), [])
      const again = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', bpffs, '--pods-file', podsFile, '--json'], install.env)
      assert.equal(again.code, 0, again.stderr)
      assert.deepEqual(await podIps(), [lab.pod('a').ip], 'the next enable repaired the maps')
      const status = parseJson<StatusReport>((await cli(['status', '--bpffs', bpffs, '--json'], noCompiler)).stdout)
      assert.equal(status.verdict, 'healthy', JSON.stringify(status.problems))

      const d = await cli(['disable', '--bpffs', bpffs], noCompiler)
      assert.equal(d.code, 0, d.stderr)
      await assertNothingLeft(inst)
      assert.ok(!existsSync(inst.helperDir), 'the kept helpers are removed with the record')
    } finally {
      await cli(['disable', '--bpffs', bpffs], install.env)
      install.cleanup()
    }
  })

  it('sizes the connection maps with --max-connections, keeps the size on the next enable, and replaces them on new maps for a new size', async () => {
    const install = uniqueInstall()
    const capacity = (report: StatusReport, map: string) => report.maps.find((m) => m.name === map)
    const status = async () => parseJson<StatusReport>((await cli(['status', '--bpffs', install.bpffs, '--json'], install.env)).stdout)
    try {
      const base = ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile, '--json']
      const first = await cli([...base, '--max-connections', '131072'], install.env)
      assert.equal(first.code, 0, first.stderr)
      assert.equal(parseJson<EnableResult>(first.stdout).maxConnections, 131072)
      const big = await status()
      for (const map of ['sock_pair_map', 'pair_original_dst']) assert.equal(capacity(big, map)?.capacity, 131072, map)
      assert.ok((capacity(big, 'pair_original_dst')?.memoryBytes ?? 0) > 0, 'the memory each map holds')
      assert.equal(big.verdict, 'healthy', big.problems.join('; '))

      const again = parseJson<EnableResult>((await cli(base, install.env)).stdout)
      assert.deepEqual([again.mode, again.maxConnections], ['resync', 131072], 'an enable without the flag keeps the size')

      const smaller = parseJson<EnableResult>((await cli([...base, '--max-connections', '65535'], install.env)).stdout)
      assert.equal(smaller.mode, 'replace')
      assert.equal(smaller.replaced?.how, 'new maps', 'maps of another size cannot be shared')
      const after = await status()
      assert.equal(capacity(after, 'sock_pair_map')?.capacity, 65535)
      assert.ok(
        (capacity(after, 'pair_original_dst')?.memoryBytes ?? 0) < (capacity(big, 'pair_original_dst')?.memoryBytes ?? 0),
        'half the entries, less memory',
      )
      assert.equal(after.verdict, 'healthy', after.problems.join('; '))
      assert.deepEqual(
        after.hints.filter((h) => h.includes('older sources')),
        [],
        'the recorded size is not mistaken for stale sources',
      )
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })

  it('mounts bpffs where it is missing, for root only', async () => {
    const install = uniqueInstall()
    try {
      // a mount namespace of its own without bpffs: the mount enable makes lives there only
      const run = (cmd: string) => `"${process.execPath}" "${BIN}" ${cmd} --bpffs "${install.bpffs}"`
      const script = `umount /sys/fs/bpf 2>/dev/null; mountpoint -q /sys/fs/bpf && exit 9; ${run(`enable --cgroup "${lab.cgroup}" --pods-file "${podsFile}"`)} >&2 && stat -c %a /sys/fs/bpf; ${run('disable')} >&2`
      const r = await execa('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], {
        env: {...install.env, NO_COLOR: '1'},
        reject: false,
      })
      assert.equal(r.exitCode, 0, r.stdout + r.stderr)
      // the kernel keeps bpffs's sticky bit: no one but root may enter it
      assert.equal(Number.parseInt(r.stdout.trim(), 8) & 0o077, 0, `mode ${r.stdout.trim()}: ${r.stderr}`)
      await assertNothingLeft(install.installation())
    } finally {
      install.cleanup()
    }
  })

  it('cleans a half-enabled node, left by an enable killed while attaching', async () => {
    const install = uniqueInstall()
    const dir = mkdtempSync(join(tmp, 'kill-'))
    const env = {
      ...install.env,
      MERBRIDGE_BPFTOOL: faultyTool(dir, 'bpftool'),
      MB_FAIL_MATCH: 'sock_ops pinned',
      MB_FAIL_KILL: '1',
      MB_FAIL_COUNTER: join(dir, 'count'),
    }
    try {
      const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', podsFile], env)
      assert.notEqual(r.code, 0)
      const inst = install.installation()
      assert.ok(existsSync(inst.dir), 'the killed enable left pins (the case under test)')
      const tree = JSON.parse((await execa('bpftool', ['cgroup', 'tree', '-j'])).stdout) as {cgroup: string; programs: unknown[]}[]
      assert.ok(
        tree.some((t) => t.cgroup === lab.cgroup && t.programs.length > 0),
        'and attachments',
      )

      const doctor = await cli(['doctor', '--bpffs', install.bpffs, '--cgroup', lab.cgroup, '--json'], install.env)
      const enabled = parseJson<PreflightResult>(doctor.stdout).checks.find((c) => c.id === 'enabled')
      assert.equal(enabled?.status, 'warn')
      assert.match(enabled.remedy ?? '', /merbridge disable/)

      const d = await cli(['disable', '--bpffs', install.bpffs, '--json'], install.env)
      assert.equal(d.code, 0, d.stderr)
      assert.ok(parseJson<DisableResult>(d.stdout).detached.length >= 1)
      await assertNothingLeft(inst)
    } finally {
      await cli(['disable', '--bpffs', install.bpffs], install.env)
      install.cleanup()
    }
  })
})
