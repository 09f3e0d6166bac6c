// Bad input never weakens the node: each case is what a careless or hostile user could type, and
// what merbridge answers (docs/bad-input.md lists them, from these tests). Every refusal is one
// line, exit 2, and leaves the node as it was.
import assert from 'node:assert/strict'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import {tmpdir} from 'node:os'
import {type AddressInfo, createServer} from 'node:net'
import {dirname, join} from 'node:path'
import {after, describe, it} from 'node:test'
import {execa} from 'execa'
import {bpftool} from '../../src/bpf/bpftool.js'
import {readMaps} from '../../src/bpf/maps.js'
import {PROGRAMS} from '../../src/bpf/programs.js'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import type {DisableResult} from '../../src/datapath/disable.js'
import {lockName} from '../../src/datapath/lock.js'
import {Lab} from '../../src/lab/lab.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {SETTING_VARIABLES} from '../../src/ui/base-command.js'
import {BIN, buildSkipReason, cli, kernelSkipReason, parseJson, suiteTimeout, uniqueInstall} from '../helpers.js'

const install = uniqueInstall()
after(() => install.cleanup())

/** The error line of a refusal, and that nothing was installed. */
async function refused(args: string[], env: Record<string, string>, message: string): Promise<void> {
  const r = await cli(args, {...install.env, ...env})
  assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`)
  assert.deepEqual(
    r.stderr.split('\n').filter((l) => l.startsWith('Error:')),
    [`Error: ${message}`],
  )
  assert.ok(!existsSync(install.bpffs), 'nothing pinned')
}

describe('blank settings', {skip: buildSkipReason()}, () => {
  it('refuses every path variable set but empty or blank, never taking it for the default', async () => {
    for (const name of SETTING_VARIABLES)
      for (const value of ['', '  '])
        await refused(['enable', '--bpffs', install.bpffs, '--pods-file', '/dev/null'], {[name]: value}, `${name} is set but empty`)
  })

  it('refuses a records, cache or /proc folder that is a file, rather than report the node never enabled', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mb-file-')), 'run')
    writeFileSync(file, '')
    try {
      for (const name of ['MERBRIDGE_RUN_DIR', 'MERBRIDGE_CACHE_DIR', 'MERBRIDGE_HOST_PROC'])
        await refused(['status', '--bpffs', install.bpffs], {[name]: file}, `${name} names ${file}, which is a regular file, not a folder`)
      await refused(
        ['status', '--bpffs', install.bpffs],
        {MERBRIDGE_RUN_DIR: '/dev/null'},
        'MERBRIDGE_RUN_DIR names /dev/null, which is a character device, not a folder',
      )
    } finally {
      rmSync(dirname(file), {recursive: true, force: true})
    }
  })

  it('refuses an empty or blank flag value, inline or apart', async () => {
    await refused(['enable', '--bpffs', install.bpffs, '--cgroup', ''], {}, '--cgroup is empty')
    await refused(['enable', '--bpffs', install.bpffs, '--cgroup=  '], {}, '--cgroup is empty')
    await refused(['sync', '--bpffs', install.bpffs, '--pods-file', ' '], {}, '--pods-file is empty')
    await refused(['disable', '--bpffs='], {}, '--bpffs is empty')
  })
})

const labSkip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'unshare'])
const ALL_CGROUP_PROGRAMS = PROGRAMS.filter((p) => p.target === 'cgroup').length

describe('odd folders and outputs', {skip: buildSkipReason()}, () => {
  it('refuses a bpffs folder that is too long or a symbolic link, in one line', async () => {
    await refused(['status', '--bpffs', `/sys/fs/bpf/${'a'.repeat(300)}`], {}, 'the bpffs folder (312 characters) is too long')
    const link = join(mkdtempSync(join(tmpdir(), 'mb-link-')), 'pins')
    symlinkSync('/sys/fs/bpf', link)
    try {
      await refused(['disable', '--bpffs', link], {}, `the bpffs folder ${link} is a symbolic link`)
    } finally {
      rmSync(dirname(link), {recursive: true, force: true})
    }
  })

  it('says in one line that it cannot write to a full disk', async () => {
    const r = await execa('sh', ['-c', `"${process.execPath}" "${BIN}" doctor --json > /dev/full`], {reject: false})
    assert.equal(r.exitCode, 1)
    assert.equal(r.stderr, 'Error: cannot write the output: ENOSPC')
  })
})

describe('pods lists that would unregister every pod', {skip: labSkip, timeout: suiteTimeout(180_000)}, () => {
  const lab = labSkip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const mine = uniqueInstall()
  const registered = async () => (await readMaps.netnsPods(mine.installation())).length
  const sync = (args: string[]) => cli(['sync', '--bpffs', mine.bpffs, ...args], mine.env)

  after(async () => {
    await cli(['disable', '--bpffs', mine.bpffs], mine.env)
    await lab.destroy()
    mine.cleanup()
  })

  it('enables with two meshed pods', async () => {
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
    ])
    const r = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', mine.bpffs, '--pods-file', lab.writePodList()], mine.env)
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.equal(await registered(), 2)
  })

  it("refuses a --node that names none of the list's pods, and keeps every pod registered", async () => {
    const r = await sync(['--node', 'typo', '--pods-file', lab.writePodList()])
    assert.equal(r.code, 2, r.stdout + r.stderr)
    assert.match(
      r.stderr,
      /^Error: .* names no pod of node "typo" \(2 on other nodes\): syncing would unregister all 2 registered pod\(s\)$/m,
    )
    assert.match(r.stderr, /add --allow-empty/)
    assert.equal(await registered(), 2)
    const e = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', mine.bpffs, '--node', 'typo', '--pods-file', lab.writePodList()],
      mine.env,
    )
    assert.notEqual(e.code, 0, 'enable over the installation refuses it too')
    assert.match(e.stderr, /names no pod of node "typo"/)
    assert.equal(await registered(), 2)
  })

  it('refuses a PodList whose items are not pods, in JSON or YAML, and keeps every pod registered', async () => {
    for (const [name, text] of [
      ['junk.json', '{"kind":"PodList","items":[null,5,"x",{}]}'],
      ['objects.json', '{"kind":"PodList","items":[{}]}'],
      ['lists.yaml', 'kind: PodList\nitems:\n  - [a, b]\n'],
    ] as const) {
      const file = join(lab.tmp, name)
      writeFileSync(file, text)
      const r = await sync(['--pods-file', file])
      assert.notEqual(r.code, 0, `${name}: ${r.stdout}`)
      assert.match(r.stderr, /item 0 of "items" is not a pod/, name)
      assert.equal(await registered(), 2, name)
    }
  })

  it('a lock left behind (empty, garbage, a live unrelated pid, a killed holder) never locks anyone out', async () => {
    const note = `${mine.installation().stateFile}.lock`
    for (const left of ['', 'x\n', '1\n']) {
      writeFileSync(note, left)
      const r = await sync(['--pods-file', lab.writePodList()])
      assert.equal(r.code, 0, `lock note ${JSON.stringify(left)}: ${r.stdout}${r.stderr}`)
    }
    // a holder killed while it holds the lock: the kernel releases it with the process
    const held = execa(
      process.execPath,
      [
        '-e',
        `const s = require('node:net').createServer(); s.listen({path: ${JSON.stringify(lockName(mine.bpffs))}}, () => console.log('held'))`,
      ],
      {reject: false},
    )
    await new Promise<void>((resolve) => held.stdout.once('data', () => resolve()))
    const waits = await cli(['sync', '--bpffs', mine.bpffs, '--pods-file', lab.writePodList()], {
      ...mine.env,
      MERBRIDGE_LOCK_WAIT_MS: '300',
    })
    assert.equal(waits.code, 1, 'held: the second command waits, then says so')
    assert.match(waits.stderr, /another merbridge command \(pid .*\) is changing/)
    held.kill('SIGKILL')
    await held
    const r = await sync(['--pods-file', lab.writePodList()])
    assert.equal(r.code, 0, r.stdout + r.stderr)
  })

  it('disable from a cgroup namespace that cannot see the cgroup refuses, and changes nothing', async () => {
    const mount = findCgroup2(readMounts()).path!
    const nsRoot = join(lab.cgroup, 'container')
    mkdirSync(nsRoot)
    try {
      // as a container on containerd sees it: its own cgroup namespace, cgroup2 mounted inside it
      const script = `echo $$ > ${nsRoot}/cgroup.procs && exec unshare --cgroup --mount --propagation private sh -c 'umount -l ${mount} && mount -t cgroup2 none ${mount} && exec "${process.execPath}" "${BIN}" disable --bpffs "${mine.bpffs}"'`
      const r = await execa('sh', ['-c', script], {reject: false, env: {...mine.env, NO_COLOR: '1'}})
      assert.equal(r.exitCode, 1, r.stdout + r.stderr)
      assert.match(
        r.stderr,
        new RegExp(`^Error: merbridge was enabled on cgroup ${lab.cgroup}, which this process cannot see from its cgroup namespace$`, 'm'),
      )
      assert.equal((await bpftool.cgroupShow(lab.cgroup)).length, ALL_CGROUP_PROGRAMS, 'every program still attached')
      assert.equal((await cli(['status', '--bpffs', mine.bpffs], mine.env)).code, 0, 'still enabled and healthy')
    } finally {
      rmdirSync(nsRoot)
    }
  })

  it('says in one line that a map pin removed by hand leaves the installation incomplete', async () => {
    const inst = mine.installation()
    const aside = `${mine.bpffs}-aside`
    renameSync(inst.map('netns_pod_ips'), aside)
    try {
      for (const args of [['sync', '--pods-file', lab.writePodList()], ['dump-maps'], ['dump-maps', 'netns_pod_ips']]) {
        const r = await cli([...args, '--bpffs', mine.bpffs], mine.env)
        assert.equal(r.code, 4, `${args.join(' ')}: ${r.stdout}${r.stderr}`)
        assert.deepEqual(
          r.stderr.split('\n').filter((l) => l.startsWith('Error:')),
          [`Error: the installation in ${mine.bpffs} is incomplete: map netns_pod_ips is not pinned`],
          args.join(' '),
        )
      }
      assert.equal((await cli(['dump-maps', 'counters', '--bpffs', mine.bpffs], mine.env)).code, 0, 'the maps still pinned are read')
    } finally {
      renameSync(aside, inst.map('netns_pod_ips'))
    }
    assert.equal(await registered(), 2)
  })

  it('disable finds a program whose pin was removed, by the id enable recorded, and says disabled only when it is', async () => {
    const inst = mine.installation()
    const id = (await bpftool.progShowPinned(inst.prog('mb_connect4')))?.id
    assert.ok(id !== undefined)
    rmSync(inst.prog('mb_connect4'))
    const r = await cli(['disable', '--bpffs', mine.bpffs, '--json'], mine.env)
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.ok(
      parseJson<DisableResult>(r.stdout).detached.some((d) => d.program === 'mb_connect4' && d.id === id),
      r.stdout,
    )
    assert.deepEqual(await bpftool.cgroupShow(lab.cgroup), [], 'nothing left attached to the cgroup')
    const again = await cli(['enable', '--cgroup', lab.cgroup, '--bpffs', mine.bpffs, '--pods-file', lab.writePodList()], mine.env)
    assert.equal(again.code, 0, `enable on the cgroup again: ${again.stdout}${again.stderr}`)
  })

  it('refuses a pods file or kubeconfig that is not a regular file, at once, and an API server that never answers, in time', async () => {
    const fifo = join(lab.tmp, 'pods.fifo')
    await execa('mkfifo', [fifo])
    const f = await sync(['--pods-file', fifo])
    assert.equal(f.code, 2, f.stdout + f.stderr)
    assert.match(f.stderr, new RegExp(`^Error: the pods file ${fifo} is a FIFO, not a regular file$`, 'm'))
    const z = await sync(['--kubeconfig', '/dev/zero'])
    assert.equal(z.code, 2, z.stdout + z.stderr)
    assert.match(z.stderr, /^Error: kubeconfig \/dev\/zero is a character device, not a regular file$/m)
    // a server that accepts connections and never says a word
    const silent = createServer(() => undefined)
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const port = (silent.address() as AddressInfo).port
    const kubeconfig = join(lab.tmp, 'silent.kubeconfig')
    writeFileSync(
      kubeconfig,
      `apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "https://127.0.0.1:${port}", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n`,
    )
    try {
      const r = await cli(['sync', '--bpffs', mine.bpffs, '--kubeconfig', kubeconfig], {...mine.env, MERBRIDGE_API_TIMEOUT_MS: '2000'})
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.match(
        r.stderr,
        new RegExp(`^Error: the Kubernetes API at https://127.0.0.1:${port} did not answer the list of pods within 2 s$`, 'm'),
      )
    } finally {
      silent.close()
    }
    // plain HTTP: said as such, not as a certificate problem
    const http = join(lab.tmp, 'http.kubeconfig')
    writeFileSync(
      http,
      `apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "http://127.0.0.1:${port}"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n`,
    )
    const h = await cli(['sync', '--bpffs', mine.bpffs, '--kubeconfig', http], mine.env)
    assert.equal(h.code, 1, h.stdout + h.stderr)
    assert.deepEqual(
      h.stderr.split('\n').filter((l) => l.startsWith('Error:')),
      [
        `Error: the Kubernetes API at http://127.0.0.1:${port} (${http} (--kubeconfig)) is plain HTTP: merbridge reads pods over HTTPS only`,
      ],
    )
    assert.equal(await registered(), 2, 'every pod still registered')
  })

  it('holds one installation per cgroup with its ancestors and descendants, decided one enable at a time', async () => {
    const child = join(lab.cgroup, 'nested')
    mkdirSync(child)
    const others = [uniqueInstall(), uniqueInstall()]
    try {
      const nested = await cli(
        ['enable', '--cgroup', child, '--bpffs', others[0]!.bpffs, '--pods-file', lab.writePodList()],
        others[0]!.env,
      )
      assert.equal(nested.code, 1, nested.stdout + nested.stderr)
      assert.match(nested.stderr, new RegExp(`another merbridge installation is attached to ${lab.cgroup}, above ${child}`))
      assert.ok(!existsSync(others[0]!.bpffs), 'nothing loaded')
      // two enables at once on a cgroup without merbridge: one wins, the other is refused
      const freeCgroup = `${lab.cgroup.replace(/\/[^/]+$/, '')}/${lab.cgroup.split('/').at(-1)}-free`
      mkdirSync(freeCgroup)
      try {
        const both = await Promise.all(
          others.map((o) =>
            cli(['enable', '--cgroup', freeCgroup, '--bpffs', o.bpffs, '--pods-file', lab.writePodList('elsewhere')], o.env),
          ),
        )
        assert.deepEqual(both.map((r) => r.code).sort(), [0, 1], both.map((r) => r.stderr).join('\n'))
        assert.match(both.find((r) => r.code === 1)?.stderr ?? '', /another merbridge installation is attached to/)
      } finally {
        for (const o of others) await cli(['disable', '--bpffs', o.bpffs], o.env)
        rmdirSync(freeCgroup)
      }
    } finally {
      for (const o of others) o.cleanup()
      rmdirSync(child)
    }
  })

  it('disable leaves a pin folder it did not make, emptied of what it made', async () => {
    const other = uniqueInstall()
    const sibling = `${lab.cgroup}-sibling`
    mkdirSync(other.bpffs)
    mkdirSync(sibling)
    try {
      const e = await cli(['enable', '--cgroup', sibling, '--bpffs', other.bpffs, '--pods-file', lab.writePodList('elsewhere')], other.env)
      assert.equal(e.code, 0, e.stdout + e.stderr)
      const d = await cli(['disable', '--bpffs', other.bpffs], other.env)
      assert.equal(d.code, 0, d.stdout + d.stderr)
      assert.deepEqual(readdirSync(other.bpffs), [], 'the folder stays, empty')
      assert.match((await cli(['disable', '--bpffs', other.bpffs], other.env)).stdout, /nothing to do/)
    } finally {
      await cli(['disable', '--bpffs', other.bpffs], other.env)
      rmSync(other.bpffs, {recursive: true, force: true})
      rmdirSync(sibling)
      other.cleanup()
    }
  })

  it("leaves a pod's inbound capture to the installation that holds it: another never replaces or removes it", async () => {
    const other = uniqueInstall()
    const sibling = `${lab.cgroup}-other`
    mkdirSync(sibling)
    const healthy = async (what: string) => {
      const st = await cli(['status', '--bpffs', mine.bpffs], mine.env)
      assert.equal(st.code, 0, `${what}: ${st.stdout}${st.stderr}`)
    }
    const held = new RegExp(`held by another merbridge installation \\(program \\d+, pinned at ${mine.bpffs}/progs/mb_tc_inbound\\)`)
    try {
      const e = await cli(['enable', '--cgroup', sibling, '--bpffs', other.bpffs, '--pods-file', lab.writePodList()], other.env)
      assert.equal(e.code, 1, e.stdout + e.stderr)
      assert.match(e.stderr, held)
      assert.ok(!existsSync(other.bpffs), 'the refused enable undid itself')
      await healthy('after a refused enable')
      const e2 = await cli(['enable', '--cgroup', sibling, '--bpffs', other.bpffs, '--pods-file', lab.writePodList('elsewhere')], other.env)
      assert.equal(e2.code, 0, e2.stdout + e2.stderr)
      const s2 = await cli(['sync', '--bpffs', other.bpffs, '--pods-file', lab.writePodList()], other.env)
      assert.match(s2.stdout + s2.stderr, held)
      await healthy('after a sync of the other')
      assert.equal((await cli(['disable', '--bpffs', other.bpffs], other.env)).code, 0)
      await healthy("after the other's disable")
    } finally {
      await cli(['disable', '--bpffs', other.bpffs], other.env)
      rmdirSync(sibling)
      other.cleanup()
    }
  })

  it('refuses an object cache or records folder others could write: what is in them runs as root', async () => {
    const open = mkdtempSync(join(tmpdir(), 'mb-open-'))
    chmodSync(open, 0o777)
    const other = uniqueInstall()
    const sibling = `${lab.cgroup}-open`
    mkdirSync(sibling)
    try {
      const e = await cli(['enable', '--cgroup', sibling, '--bpffs', other.bpffs, '--pods-file', lab.writePodList('elsewhere')], {
        ...other.env,
        MERBRIDGE_CACHE_DIR: open,
      })
      assert.equal(e.code, 1, e.stdout + e.stderr)
      assert.deepEqual(
        e.stderr.split('\n').filter((l) => l.startsWith('Error:')),
        [
          `Error: enable failed at "Build the datapath": the object cache ${open} is not safe to run from as root: ${open} is writable by every user`,
        ],
      )
      assert.ok(!existsSync(other.bpffs), 'nothing loaded')
      const st = await cli(['status', '--bpffs', mine.bpffs], {MERBRIDGE_RUN_DIR: open})
      assert.equal(st.code, 1, st.stdout + st.stderr)
      assert.match(
        st.stderr,
        new RegExp(`^Error: the records folder ${open} is not safe to run from as root: ${open} is writable by every user$`, 'm'),
      )
    } finally {
      rmSync(open, {recursive: true, force: true})
      rmdirSync(sibling)
      other.cleanup()
    }
  })

  it('unregisters them all when told the node has no pods now', async () => {
    const r = await sync(['--node', 'typo', '--pods-file', lab.writePodList(), '--allow-empty'])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.equal(await registered(), 0)
  })
})
