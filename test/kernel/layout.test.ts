// The C structs and their TypeScript mirrors agree: offsets against the object's BTF, values
// written through bpftool into real kernel maps and read back through the codecs.
import assert from 'node:assert/strict'
import {mkdirSync, rmdirSync, rmSync} from 'node:fs'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {Bpftool, bpftool} from '../../src/bpf/bpftool.js'
import {ipToSlot} from '../../src/bpf/ip.js'
import {
  COUNTERS,
  encodeIface,
  encodeOrigin,
  encodePodId,
  encodePair,
  encodePodRules,
  encodeProcess,
  encodeSettings,
  encodeU32,
  encodeU64,
  LAYOUT,
  POD_DNS_CAPTURE,
  POD_GROUPS_ONLY,
  POD_NO_IPV6,
} from '../../src/bpf/layout.js'
import {readMaps} from '../../src/bpf/maps.js'
import {run, runStreaming} from '../../src/exec.js'
import {buildObjects, type BuiltObjects} from '../../src/bpf/objects.js'
import {Installation} from '../../src/datapath/installation.js'
import {MAP_NAMES, PROGRAMS} from '../../src/bpf/programs.js'
import {findCgroup2, readMounts} from '../../src/node/mounts.js'
import {ensureBpffs, kernelSkipReason, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason()

describe('struct layouts', {skip}, () => {
  let objects: BuiltObjects
  let inst: Installation
  let unmount: () => Promise<void> = () => Promise.resolve()
  const {bpffs, cleanup} = uniqueInstall()

  before(async () => {
    objects = await buildObjects()
    unmount = await ensureBpffs()
    inst = new Installation(bpffs)
    mkdirSync(inst.dir)
    await bpftool.loadAll(objects.datapath, inst.progDir, inst.mapDir)
  })

  after(async () => {
    rmSync(bpffs, {recursive: true, force: true})
    await unmount()
    cleanup()
  })

  it('pin exactly the programs and maps an installation names (no .rodata or .data maps)', async () => {
    // an unnamed map would make every installation look like another tool's folder to checkOurs
    const pins = await inst.pinned()
    assert.deepEqual(pins.maps, [...MAP_NAMES].sort())
    assert.deepEqual(pins.progs, PROGRAMS.map((p) => p.name).sort())
  })

  it('match the BTF of the compiled object, field by field', async () => {
    interface Btf {
      types: {kind: string; name?: string; size?: number; members?: {name: string; bits_offset: number}[]}[]
    }
    const btfOf = async (object: string) =>
      (JSON.parse((await execa('bpftool', ['btf', 'dump', 'file', object, '-j'])).stdout) as Btf).types
    // the datapath's structs, and the record the sockhash-queued iterator writes for disable
    const types = [...(await btfOf(objects.datapath)), ...(await btfOf(objects.sockhashQueued))]
    for (const [name, layout] of Object.entries(LAYOUT)) {
      const t = types.find((x) => x.kind === 'STRUCT' && x.name === name)
      assert.ok(t, `struct ${name} is in the object's BTF`)
      assert.equal(t.size, layout.size, `sizeof(struct ${name})`)
      const btf = Object.fromEntries((t.members ?? []).map((m) => [m.name, m.bits_offset / 8]))
      assert.deepEqual(btf, layout.fields, `offsets of struct ${name}`)
    }
  })

  it('round-trip through the kernel for every map user space writes', async () => {
    const pair = {netns: 77n, localIp: '127.0.0.1', localPort: 15001, remoteIp: '127.0.0.1', remotePort: 41000}
    const origin = {ip: '10.77.0.3', port: 8080, flags: 1, pid: 1234}
    const rules = {
      outAllCidrs: false,
      inAllPorts: false,
      outIncludePorts: [443],
      outExcludePorts: [22],
      inIncludePorts: [8080, 9090],
      inExcludePorts: [15008, 15090, 15021, 15020],
      outIncludeCidrs: [{ip: '10.0.0.0', prefix: 8}],
      outExcludeCidrs: [
        {ip: '10.96.0.0', prefix: 12},
        {ip: 'fd00::', prefix: 8},
      ],
      proxyUid: 1500,
      proxyGid: 1501,
      dns: {all: false, servers: ['10.96.0.10', 'fd00::a']},
      noIpv6: true,
      ownerGroups: {only: true, gids: [202, 4000]},
      loopback: {ip: '127.0.0.1', prefix: 8},
    }
    const settings = {
      sidecarUid: 1337,
      sidecarGid: 1338,
      outboundPort: 15001,
      inboundPort: 15006,
      draining: false,
      inboundRewrite: true,
      cni: false,
      hostNetns: 3n,
      dnsPort: 15053,
    }
    await bpftool.batch([
      bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot('10.77.0.2'), encodePodRules(rules)),
      bpftool.mapUpdateLine(inst.map('netns_pod_ips'), encodeU64(4101n), encodePodId({ip: '10.77.0.2', ip6: 'fd77::2'})),
      bpftool.mapUpdateLine(inst.map('pair_original_dst'), encodePair(pair), encodeOrigin(origin)),
      bpftool.mapUpdateLine(inst.map('process_ip'), encodeU32(4242), encodeProcess({podIp: '10.77.0.2', netns: 4101n})),
      bpftool.mapUpdateLine(inst.map('settings'), encodeU32(0), encodeSettings(settings)),
      bpftool.mapUpdateLine(inst.map('inbound_skip'), encodeIface({netns: 4101n, ifindex: 7}), encodeU32(1)),
    ])
    assert.deepEqual(await readMaps.localPods(inst), [{ip: '10.77.0.2', rules}])
    assert.deepEqual(await readMaps.netnsPods(inst), [{netns: 4101n, ip: '10.77.0.2', ip6: 'fd77::2'}])
    assert.deepEqual(await readMaps.originals(inst), [{pair, origin}])
    assert.deepEqual(await readMaps.processes(inst), [{pid: 4242, entry: {podIp: '10.77.0.2', netns: 4101n}}])
    assert.deepEqual(await readMaps.settings(inst), settings)
    assert.deepEqual(await readMaps.inboundSkips(inst), [{netns: 4101n, ifindex: 7}])

    // the kernel's own BTF rendering of the same entry agrees with the codec
    const [raw] = await bpftool.mapDump(inst.map('pair_original_dst'))
    const f = raw?.formatted as {key: {netns: number; local_port: number}; value: {pid: number; flags: number; port: number}}
    assert.equal(BigInt(f.key.netns), pair.netns)
    assert.equal(f.value.pid, origin.pid)
    assert.equal(f.value.flags, origin.flags)
    assert.equal(f.value.port, ((origin.port & 0xff) << 8) | (origin.port >> 8), 'port is stored in network order')
    const [settingsRaw] = await bpftool.mapDump(inst.map('settings'))
    assert.equal((settingsRaw?.formatted as {value: {sidecar_gid: number}}).value.sidecar_gid, 1338)
    assert.equal((settingsRaw?.formatted as {value: {dns_port: number}}).value.dns_port, 15053)
    const [podRaw] = await bpftool.mapDump(inst.map('local_pod_ips'))
    const pod = (
      podRaw?.formatted as {
        value: {flags: number; n_dns: number; n_owner_groups: number; owner_groups: number[]; loopback: {prefix: number}}
      }
    ).value
    assert.equal(pod.n_dns, 2)
    assert.equal(
      pod.flags,
      POD_DNS_CAPTURE | POD_NO_IPV6 | POD_GROUPS_ONLY,
      'DNS capture to the listed resolvers only, no IPv6 capture, only some groups captured',
    )
    assert.deepEqual([pod.n_owner_groups, pod.owner_groups.slice(0, 3)], [2, [202, 4000, 0]])
    assert.equal(pod.loopback.prefix, 96 + 8, 'an IPv4 prefix over the 128-bit slot')
    const [skipRaw] = await bpftool.mapDump(inst.map('inbound_skip'))
    assert.deepEqual((skipRaw?.formatted as {key: {netns: number; ifindex: number}}).key, {netns: 4101, ifindex: 7, pad: 0})
  })

  it('reads zeroed per-CPU counters by name', async () => {
    const counters = await readMaps.counters(inst)
    assert.equal(counters.connOutbound, 0)
    assert.deepEqual(Object.keys(counters), [...COUNTERS])
  })

  it('shows pinned programs in one bpftool process, as one by one would, and falls back to one by one', async () => {
    const calls: string[][] = []
    const counted = new Bpftool({run: (tool, args, opts) => (calls.push([...args]), run(tool, args, opts)), runStreaming})
    const pins = [...PROGRAMS.map((p) => inst.prog(p.name)), inst.stagedProg('mb_connect4')]
    const oneByOne = await Promise.all(pins.map((p) => bpftool.progShowPinned(p)))
    assert.equal(oneByOne.at(-1), undefined, 'no staged pin')
    assert.deepEqual(await counted.progsShowPinned(pins), oneByOne)
    assert.deepEqual(
      calls.map((c) => c.slice(0, 2)),
      [['-j', 'batch']],
    )
    // a map's pin among them: the batch stops there, and one by one fails naming it
    calls.length = 0
    await assert.rejects(counted.progsShowPinned([inst.prog('mb_connect4'), inst.map('settings')]), /bpftool prog show/)
    assert.deepEqual(
      calls.map((c) => c.slice(0, 2)),
      [
        ['-j', 'batch'],
        ['prog', 'show'],
        ['prog', 'show'],
      ],
    )
  })

  it('reads the pod maps in one bpftool process, as one by one would, and falls back to one by one', async () => {
    const calls: string[][] = []
    const counted = new Bpftool({
      run: (tool, args, opts) => (calls.push([...args]), run(tool, args, opts)),
      runStreaming: (tool, args, onChunk, opts) => (calls.push([...args]), runStreaming(tool, args, onChunk, opts)),
    })
    const pins = (['local_pod_ips', 'netns_pod_ips', 'pod_other_ips', 'inbound_skip', 'pod_share'] as const).map((m) => inst.map(m))
    const oneByOne = await Promise.all(pins.map((p) => bpftool.mapDumpBytes(p)))
    assert.ok(oneByOne[0]?.length && oneByOne[1]?.length && oneByOne[3]?.length, 'pods written by the test above')
    assert.deepEqual(await counted.mapsDumpBytes(pins), oneByOne)
    assert.deepEqual(
      calls.map((c) => c.slice(0, 2)),
      [['-j', 'batch']],
    )
    const pods = await readMaps.podMaps(inst)
    assert.deepEqual(pods, {
      localPods: await readMaps.localPods(inst),
      netnsPods: await readMaps.netnsPods(inst),
      otherIps: await readMaps.otherIps(inst),
      inboundSkips: await readMaps.inboundSkips(inst),
      podShare: await readMaps.podShare(inst),
    })
    // a pin gone among them: the batch stops there, and one by one fails naming the dump
    calls.length = 0
    await assert.rejects(counted.mapsDumpBytes([pins[0] ?? '', `${inst.mapDir}/gone`]), /map dump/)
    assert.deepEqual(
      calls.map((c) => c.slice(0, 2)),
      [
        ['-j', 'batch'],
        ['map', 'dump'],
        ['map', 'dump'],
      ],
    )
  })

  it('detaches from cgroups in one bpftool process, in order, and one by one what a failed batch left', async () => {
    const {path: root} = findCgroup2(readMounts())
    assert.ok(root, 'a cgroup v2 hierarchy')
    const cgroup = join(root, `merbridge-test-detach-${process.pid}`)
    mkdirSync(cgroup)
    try {
      const calls: string[][] = []
      const counted = new Bpftool({run: (tool, args, opts) => (calls.push([...args]), run(tool, args, opts)), runStreaming})
      const attach = async () => {
        const items = []
        for (const [name, type] of [
          ['mb_connect4', 'connect4'],
          ['mb_connect6', 'connect6'],
          ['mb_getsockopt', 'getsockopt'],
        ] as const) {
          await bpftool.cgroupAttach(cgroup, type, inst.prog(name))
          const id = (await bpftool.progShowPinned(inst.prog(name)))?.id
          assert.ok(id !== undefined)
          items.push({cgroup, attachType: type, id})
        }
        return items
      }
      const items = await attach()
      await counted.cgroupDetachAll(items)
      assert.deepEqual(await bpftool.cgroupShow(cgroup), [])
      assert.deepEqual(
        calls.map((c) => c.slice(0, 2)),
        [['-j', 'batch']],
      )
      // the first already detached: the batch stops at it, and the rest still go
      const again = await attach()
      await bpftool.cgroupDetach(cgroup, 'connect4', again[0]?.id ?? -1)
      calls.length = 0
      await counted.cgroupDetachAll(again)
      assert.deepEqual(await bpftool.cgroupShow(cgroup), [])
      assert.deepEqual(
        calls.map((c) => c.slice(0, 2)),
        [
          ['-j', 'batch'],
          ['cgroup', 'show'],
          ['cgroup', 'detach'],
          ['cgroup', 'detach'],
        ],
      )
    } finally {
      for (const a of await bpftool.cgroupShow(cgroup).catch(() => []))
        await bpftool
          .cgroupDetach(cgroup, PROGRAMS.find((p) => p.name === a.name)?.attachType ?? a.attach_type, a.id)
          .catch(() => undefined)
      rmdirSync(cgroup)
    }
  })
})
