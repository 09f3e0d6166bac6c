import assert from 'node:assert/strict'
import {featuresTurnedOff} from '../../src/bpf/optional.js'
import {MerbridgeError, ToolFailedError} from '../../src/errors.js'
import {loadFailure} from '../../src/datapath/probes.js'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, it} from 'node:test'
import {Bpftool, bytesFromHex, DumpScanner} from '../../src/bpf/bpftool.js'
import {type FeatureProbe, missingFeatures} from '../../src/bpf/features.js'
import {ipToSlot, parseCidr, slotToIp} from '../../src/bpf/ip.js'
import {
  CAPTURE_ALL,
  decodeOrigin,
  decodePair,
  decodeQueuedRecords,
  decodePodRules,
  decodeProcess,
  decodeSettings,
  encodeOrigin,
  encodePair,
  encodePodRules,
  encodeProcess,
  encodeSettings,
  COUNTERS,
  LAYOUT,
  MAX_CIDRS,
  MAX_DNS,
  MAX_GROUPS,
  MAX_PODS,
  MAX_PORTS,
  ORIGIN_DNS,
  ORIGIN_INBOUND,
  ORIGIN_OUTBOUND,
  ORIGIN_OWN_POD,
  ORIGIN_UNREGISTERED,
  POD_DNS_ALL,
  POD_DNS_CAPTURE,
  POD_IN_ALL_PORTS,
  POD_OUT_ALL_CIDRS,
  POD_OUT_LOOPBACK,
  POD_NO_IPV6,
  SETTINGS_CNI,
  SETTINGS_DRAINING,
  SETTINGS_INBOUND_REWRITE,
  POD_GROUPS_ONLY,
} from '../../src/bpf/layout.js'
import {checkFeatures, checkForeignPrograms, checkInbound} from '../../src/datapath/doctor.js'
import {ROOT} from '../helpers.js'

const probe = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'bpftool-probe-6.18.json'), 'utf8')) as Required<FeatureProbe>

describe('feature probe', () => {
  it('finds everything the datapath needs in a 6.18 probe', () => {
    assert.deepEqual(missingFeatures(probe).missing, [])
    assert.equal(checkFeatures(probe).status, 'pass')
  })

  it('names a missing helper, program type and map type', () => {
    const p = structuredClone(probe)
    p.helpers.sk_msg_available_helpers = (p.helpers.sk_msg_available_helpers ?? []).filter((h) => h !== 'bpf_msg_redirect_hash')
    p.program_types.have_cgroup_sockopt_prog_type = false
    delete p.map_types.have_sockhash_map_type
    const c = checkFeatures(p)
    assert.equal(c.status, 'fail')
    assert.match(c.detail, /helper bpf_msg_redirect_hash in sk_msg/)
    assert.match(c.detail, /program type cgroup_sockopt/)
    assert.match(c.detail, /map type sockhash/)
  })

  it('treats a probe that is not an object as missing everything', () => {
    assert.ok(missingFeatures(null).missing.length > 10)
  })
})

describe('addresses', () => {
  it('stores IPv4 as IPv4-mapped IPv6 in network order', () => {
    assert.equal(ipToSlot('10.77.0.3').toString('hex'), '00000000000000000000ffff0a4d0003')
    assert.equal(slotToIp(ipToSlot('10.77.0.3')), '10.77.0.3')
  })

  it('round-trips IPv6 with compression', () => {
    for (const ip of ['::1', 'fd00::1:2', '2001:db8::', 'fe80::1:0:0:5']) assert.equal(slotToIp(ipToSlot(ip)), ip)
    assert.equal(slotToIp(ipToSlot('2001:0db8:0000:0000:0000:0000:0000:0001')), '2001:db8::1')
  })

  it('parses CIDRs and refuses bad ones', () => {
    assert.deepEqual(parseCidr('10.0.0.0/8'), {ip: '10.0.0.0', prefix: 8})
    assert.deepEqual(parseCidr('10.1.2.3'), {ip: '10.1.2.3', prefix: 32})
    assert.deepEqual(parseCidr('fd00::/64'), {ip: 'fd00::', prefix: 64})
    for (const bad of ['10.0.0.0/33', '10.0.0/8', 'x/8', '10.0.0.0/8/1', '10.0.0.0/-1', '10.0.0.0/ 8', ''])
      assert.equal(parseCidr(bad), undefined, bad)
  })
})

describe('codecs', () => {
  it('encode to the sizes of the C structs', () => {
    assert.equal(encodePair({netns: 0n, localIp: '1.2.3.4', localPort: 1, remoteIp: '5.6.7.8', remotePort: 2}).length, LAYOUT.mb_pair.size)
    assert.equal(encodePodRules(CAPTURE_ALL).length, LAYOUT.mb_pod_config.size)
    assert.equal(encodeOrigin({ip: '1.2.3.4', port: 80, flags: 1, pid: 7}).length, LAYOUT.mb_origin.size)
  })

  it("read the sockhash-queued iterator's records: each socket's key as the kernel holds it, and its unread bytes", () => {
    const keys = [
      encodePair({netns: 9n, localIp: '127.0.0.1', localPort: 15001, remoteIp: '127.0.0.1', remotePort: 40000}),
      encodePair({netns: 9n, localIp: '10.77.0.2', localPort: 40001, remoteIp: '10.77.0.3', remotePort: 15006}),
    ]
    const file = Buffer.alloc(2 * LAYOUT.mb_queued.size)
    keys.forEach((k, i) => k.copy(file, i * LAYOUT.mb_queued.size + LAYOUT.mb_queued.fields.key))
    file.writeUInt32LE(16_773_221, LAYOUT.mb_queued.size + LAYOUT.mb_queued.fields.queued)
    assert.deepEqual(decodeQueuedRecords(file), [
      {key: keys[0], queued: 0},
      {key: keys[1], queued: 16_773_221},
    ])
    assert.deepEqual(decodeQueuedRecords(Buffer.alloc(0)), [])
    assert.throws(() => decodeQueuedRecords(file.subarray(1)), /not a whole number of 56-byte records/)
  })

  it('round-trip every struct', () => {
    const pair = {netns: 4101n, localIp: '127.0.0.1', localPort: 15001, remoteIp: '127.0.0.1', remotePort: 40000}
    assert.deepEqual(decodePair(encodePair(pair)), pair)
    const origin = {ip: '10.77.0.3', port: 8080, flags: 3, pid: 4242}
    assert.deepEqual(decodeOrigin(encodeOrigin(origin)), origin)
    const rules = {
      outAllCidrs: false,
      inAllPorts: true,
      outIncludePorts: [443],
      outExcludePorts: [22, 3306],
      inIncludePorts: [],
      inExcludePorts: [15008, 15090, 15021, 15020],
      outIncludeCidrs: [
        {ip: '10.0.0.0', prefix: 8},
        {ip: 'fd00::', prefix: 64},
      ],
      outExcludeCidrs: [{ip: '10.96.0.1', prefix: 32}],
      proxyUid: 1337,
      proxyGid: 2000,
    }
    assert.deepEqual(decodePodRules(encodePodRules(rules)), rules)
    const dns = {...rules, dns: {all: true, servers: []}}
    assert.deepEqual(decodePodRules(encodePodRules(dns)), dns)
    const noIpv6 = {...rules, noIpv6: true}
    assert.deepEqual(decodePodRules(encodePodRules(noIpv6)), noIpv6)
    assert.equal(encodePodRules(noIpv6).readUInt32LE(LAYOUT.mb_pod_config.fields.flags) & POD_NO_IPV6, POD_NO_IPV6)
    for (const ownerGroups of [
      {only: true, gids: [202, 2 ** 32 - 1]},
      {only: true, gids: []},
      {only: false, gids: [888]},
    ]) {
      const grouped = {...rules, ownerGroups, loopback: {ip: '127.0.0.1', prefix: 8}}
      assert.deepEqual(decodePodRules(encodePodRules(grouped)), grouped)
    }
    assert.equal(
      encodePodRules({...rules, ownerGroups: {only: true, gids: []}}).readUInt32LE(LAYOUT.mb_pod_config.fields.flags) & POD_GROUPS_ONLY,
      POD_GROUPS_ONLY,
      'an empty include list captures nobody: flagged, not absent',
    )
    assert.throws(
      () => encodePodRules({...rules, ownerGroups: {only: false, gids: Array.from({length: MAX_GROUPS + 1}, (_, i) => i)}}),
      /at most 16 owner groups/,
    )
    const loopback = encodePodRules({...rules, outIncludeCidrs: [{ip: '127.1.2.3', prefix: 32}]})
    assert.equal(
      loopback.readUInt32LE(LAYOUT.mb_pod_config.fields.flags) & POD_OUT_LOOPBACK,
      POD_OUT_LOOPBACK,
      'a loopback include range is flagged',
    )
    assert.throws(
      () => encodePodRules({...rules, dns: {all: false, servers: ['1.1.1.1', '1.1.1.2', '1.1.1.3', '1.1.1.4', '1.1.1.5']}}),
      /at most 4 resolvers/,
    )
    assert.deepEqual(decodeProcess(encodeProcess({podIp: '10.77.0.2', netns: 9n})), {podIp: '10.77.0.2', netns: 9n})
    const settings = {
      sidecarUid: 1337,
      sidecarGid: 1337,
      outboundPort: 15001,
      inboundPort: 15006,
      draining: true,
      inboundRewrite: true,
      cni: true,
      hostNetns: 1n,
      dnsPort: 15053,
    }
    assert.deepEqual(decodeSettings(encodeSettings(settings)), settings)
  })

  it('writes ports in network order in pairs and IPv4 prefixes over the 128-bit slot', () => {
    const b = encodePair({netns: 0n, localIp: '1.2.3.4', localPort: 0x1f90, remoteIp: '5.6.7.8', remotePort: 1})
    assert.equal(b.readUInt16BE(LAYOUT.mb_pair.fields.local_port), 0x1f90)
    const rules = encodePodRules({...CAPTURE_ALL, outIncludeCidrs: [{ip: '10.0.0.0', prefix: 8}]})
    assert.equal(rules.readUInt8(LAYOUT.mb_pod_config.fields.out_include_cidrs + LAYOUT.mb_cidr.fields.prefix), 104)
  })

  it('refuses more entries than the datapath holds', () => {
    assert.throws(() => encodePodRules({...CAPTURE_ALL, outExcludePorts: Array.from({length: 17}, (_, i) => i + 1)}), /at most 16/)
  })
})

describe('bpftool dump scanning', () => {
  const dump = JSON.stringify([
    {key: ['0x01', '0x00'], value: ['0x0a', '0xff'], formatted: {key: [1, 0], value: {u8: [10, 255]}}},
    {key: ['0x02', '0x00'], value: ['0x0b', '0x00'], formatted: {key: {netns: 2}, value: 11}},
    {key: ['0x03', '0x00']},
  ])

  it('reads raw keys and values, however the output is cut into chunks', () => {
    for (const size of [1, 7, 64, dump.length]) {
      const s = new DumpScanner()
      for (let i = 0; i < dump.length; i += size) s.push(dump.slice(i, i + size))
      const out = s.end()
      assert.deepEqual(
        out.map((e) => [e.key.toString('hex'), e.value?.toString('hex')]),
        [
          ['0100', '0aff'],
          ['0200', '0b00'],
          ['0300', undefined],
        ],
        `chunks of ${size}`,
      )
    }
  })

  it('agrees with parsing the whole JSON', () => {
    const whole = new DumpScanner()
    whole.push(dump)
    assert.deepEqual(
      whole.end().map((e) => e.key),
      (JSON.parse(dump) as {key: string[]}[]).map((e) => bytesFromHex(e.key)),
    )
  })
})

describe('constants', () => {
  it('mirror consts.h: capacities, pod, origin and settings flags', () => {
    const text = readFileSync(join(ROOT, 'bpf/headers/consts.h'), 'utf8')
    const define = (name: string) => {
      const m = new RegExp(`^#define ${name}\\s+\\(?(\\d+)u?(?: << (\\d+))?\\)?`, 'm').exec(text)
      assert.ok(m, `${name} in consts.h`)
      return Number(m[1]) << Number(m[2] ?? 0)
    }
    const expected: Record<string, number> = {
      MB_MAX_PODS: MAX_PODS,
      MB_MAX_PORTS: MAX_PORTS,
      MB_MAX_CIDRS: MAX_CIDRS,
      MB_MAX_DNS: MAX_DNS,
      MB_MAX_GROUPS: MAX_GROUPS,
      MB_POD_OUT_ALL_CIDRS: POD_OUT_ALL_CIDRS,
      MB_POD_IN_ALL_PORTS: POD_IN_ALL_PORTS,
      MB_POD_DNS_CAPTURE: POD_DNS_CAPTURE,
      MB_POD_DNS_ALL: POD_DNS_ALL,
      MB_POD_OUT_LOOPBACK: POD_OUT_LOOPBACK,
      MB_POD_NO_IPV6: POD_NO_IPV6,
      MB_POD_GROUPS_ONLY: POD_GROUPS_ONLY,
      MB_ORIGIN_OUTBOUND: ORIGIN_OUTBOUND,
      MB_ORIGIN_INBOUND: ORIGIN_INBOUND,
      MB_ORIGIN_UNREGISTERED: ORIGIN_UNREGISTERED,
      MB_ORIGIN_OWN_POD: ORIGIN_OWN_POD,
      MB_ORIGIN_DNS: ORIGIN_DNS,
      MB_SETTINGS_DRAINING: SETTINGS_DRAINING,
      MB_SETTINGS_INBOUND_REWRITE: SETTINGS_INBOUND_REWRITE,
      MB_SETTINGS_CNI: SETTINGS_CNI,
    }
    for (const [name, value] of Object.entries(expected)) assert.equal(define(name), value, name)
    // the counters enum, in order
    const counters = [...text.matchAll(/^\s+MB_CNT_(\w+)(?: = 0)?,/gm)].map(([, n = '']) => n).filter((n) => n !== '_COUNT')
    assert.equal(counters.length, COUNTERS.length, counters.join(', '))
  })
})

describe('programs on the cgroup', () => {
  it("fails on another merbridge installation's programs and only warns about other tools'", () => {
    const ours = new Set([10])
    const twin = checkForeignPrograms(
      '/cg',
      [
        {id: 10, name: 'mb_connect4', attach_type: 'cgroup_inet4_connect'},
        {id: 20, name: 'mb_connect4', attach_type: 'cgroup_inet4_connect'},
      ],
      ours,
    )
    assert.equal(twin.status, 'fail')
    assert.equal(twin.required, true)
    assert.match(twin.detail, /another merbridge installation is attached to \/cg \(mb_connect4 id 20\)/)
    const other = checkForeignPrograms('/cg', [{id: 30, name: 'cil_sock4_connect', attach_type: 'cgroup_inet4_connect'}], ours)
    assert.equal(other.status, 'warn')
    assert.equal(other.required, false)
    assert.equal(checkForeignPrograms('/cg', [{id: 10, name: 'mb_connect4', attach_type: 'cgroup_inet4_connect'}], ours).status, 'pass')
  })
})

describe('inbound capture on the pods', () => {
  it('fails naming the pods and interfaces without it, warns when some could not be read, passes otherwise', () => {
    const gaps = Array.from({length: 6}, (_, i) => ({pod: `ns/p${i}`, interfaces: i === 0 ? ['eth0', 'net1'] : ['eth0']}))
    const many = checkInbound(gaps, 9, [])
    assert.deepEqual([many.status, many.required], ['fail', true])
    assert.equal(
      many.detail,
      'not attached on 6 of 9 registered pod(s): ns/p0 (eth0, net1); ns/p1 (eth0); ns/p2 (eth0); ns/p3 (eth0); ns/p4 (eth0); ...',
    )
    assert.match(many.remedy ?? '', /merbridge sync/)
    assert.deepEqual([checkInbound([], 3, ['ns/a']).status, checkInbound([], 3, ['ns/a']).required], ['warn', false])
    assert.equal(checkInbound([], 3, []).status, 'pass')
  })
})

describe('bpftool wrapper', () => {
  /** A Bpftool whose runner plays one recorded answer and remembers the arguments. */
  const playing = (stdout: string, exitCode = 0, stderr = '') => {
    const calls: string[][] = []
    const tool = new Bpftool({
      run: (_tool, args) => (calls.push([...args]), Promise.resolve({stdout, stderr, exitCode})),
      runStreaming: (_tool, args, onStdout) => (calls.push([...args]), onStdout(stdout), Promise.resolve()),
    })
    return {tool, calls}
  }

  it('reads recorded 7.x output into checked objects', async () => {
    const prog =
      '{"id":41,"type":"cgroup_sock_addr","name":"mb_connect4","tag":"ab","gpl_compatible":true,"loaded_at":1764259200,"uid":0,"bytes_xlated":1200,"jited":true,"map_ids":[3,4],"btf_id":9}'
    assert.deepEqual(await playing(prog).tool.progShowPinned('/p'), {
      id: 41,
      type: 'cgroup_sock_addr',
      name: 'mb_connect4',
      loaded_at: 1764259200,
      run_cnt: undefined,
      run_time_ns: undefined,
      map_ids: [3, 4],
    })
    const tree =
      '[{"cgroup":"/sys/fs/cgroup/unified/x","programs":[{"id":41,"attach_type":"cgroup_inet4_connect","attach_flags":"multi","name":"mb_connect4"}]}]'
    assert.deepEqual(await playing(tree).tool.cgroupTree(), [
      {
        cgroup: '/sys/fs/cgroup/unified/x',
        programs: [{id: 41, attach_type: 'cgroup_inet4_connect', attach_flags: 'multi', name: 'mb_connect4'}],
      },
    ])
    const counters =
      '[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x02","0x00"]},{"cpu":1,"value":["0x03","0x00"]}]}]'
    assert.equal((await playing(counters).tool.mapDump('/m'))[0]?.values?.length, 2)
    // -f: every program with where it is pinned; only those under the folder are kept
    const all = playing(
      '[{"id":41,"type":"sock_ops","name":"mb_sockops","run_time_ns":9000,"run_cnt":30,"pinned":["/sys/fs/bpf/x/progs/mb_sockops"]},{"id":42,"type":"sock_ops","name":"other","pinned":["/sys/fs/bpf/xy/p"]},{"id":43,"type":"xdp","name":"loose"}]',
    )
    assert.deepEqual(await all.tool.progsPinnedUnder('/sys/fs/bpf/x'), [
      {id: 41, type: 'sock_ops', name: 'mb_sockops', loaded_at: undefined, run_cnt: 30, run_time_ns: 9000, map_ids: undefined},
    ])
    assert.deepEqual(all.calls, [['-f', 'prog', 'show', '-j']])
  })

  it('says a missing pin is missing, and fails on any other error', async () => {
    const missing = playing('', 255, 'Error: bpf obj get (/p): No such file or directory')
    assert.equal(await missing.tool.mapShowPinned('/p'), undefined)
    assert.deepEqual(missing.calls, [['map', 'show', 'pinned', '/p', '-j']])
    await assert.rejects(playing('', 255, 'Error: bpf obj get (/p): Operation not permitted').tool.mapShowPinned('/p'), /bpftool map show/)
  })

  it('fails loudly when the output drifts from the shape it knows', async () => {
    const drifted = /not what merbridge understands/
    await assert.rejects(playing('{"id":"41","type":"x"}').tool.progShowPinned('/p'), drifted) // id not a number
    await assert.rejects(playing('{"type":"hash","name":"m"}').tool.mapShowPinned('/p'), drifted) // no id
    await assert.rejects(playing('[{"id":1,"attach_type":7}]').tool.cgroupShow('/cg'), drifted)
    await assert.rejects(playing('{"programs":[]}').tool.cgroupTree(), drifted)
    await assert.rejects(playing('[{"key":[1,2]}]').tool.mapDump('/m'), drifted)
    await assert.rejects(playing('key: 01 00  value: 0a ff').tool.mapDumpBytes('/m'), drifted) // plain text, not -j
    await assert.rejects(playing('[{"key":["0x01"],"value":["0x02"]},{"key":["0x02"],"val').tool.mapDumpBytes('/m'), drifted) // cut short
    await assert.rejects(playing('[{"key":[1],"value":[2]}]').tool.mapDumpBytes('/m'), drifted) // decimal bytes
    await assert.rejects(
      playing('[{"output":{}}]').tool.batchJson([
        ['prog', 'show'],
        ['map', 'show'],
      ]),
      drifted,
    )
    await assert.rejects(playing('not json').tool.featureProbe(), drifted)
  })

  it("takes a batch whose only error is bpftool 7.1's end-of-file complaint after a cgroup show, and no other failure", async () => {
    const answers =
      '[{"command":["map","show","id","7"],"output":{"id":7,"type":"hash","name":"m","bytes_key":4,"bytes_value":4,"max_entries":8}},{"command":["cgroup","show","/cg"],"output":[]},{"error":"reading batch file failed: Invalid argument"}]'
    const out = await playing(answers, 255).tool.batchJson([
      ['map', 'show', 'id', '7'],
      ['cgroup', 'show', '/cg'],
    ])
    assert.deepEqual(out[1], [])
    const stopped = '[{"command":["prog","show","pinned","/p"],"output":{"error":"bpf obj get (/p): No such file or directory"}}]'
    await assert.rejects(
      playing(stopped, 255).tool.batchJson([
        ['prog', 'show', 'pinned', '/p'],
        ['cgroup', 'show', '/cg'],
      ]),
      /bpftool prog show failed: bpf obj get \(\/p\): No such file or directory/,
    )
    const failedInside =
      '[{"command":["prog","show","pinned","/p"],"output":{"error":"bpf obj get (/p): No such file or directory"}},{"command":["cgroup","show","/cg"],"output":[]},{"error":"reading batch file failed: Invalid argument"}]'
    await assert.rejects(
      playing(failedInside, 255).tool.batchJson([
        ['prog', 'show', 'pinned', '/p'],
        ['cgroup', 'show', '/cg'],
      ]),
      /No such file/,
    )
  })

  it('reads an empty map as empty', async () => {
    assert.deepEqual(await playing('[]').tool.mapDumpBytes('/m'), [])
    assert.deepEqual(await playing('').tool.mapDumpBytes('/m'), [])
  })
})

describe('optional kernel features', () => {
  it('MERBRIDGE_WITHOUT turns off the features it names, blanks and all', () => {
    assert.deepEqual([...featuresTurnedOff(undefined)], [])
    assert.deepEqual([...featuresTurnedOff(' ')], [])
    assert.deepEqual([...featuresTurnedOff('sockmap-iterator, map-element-count')].sort(), ['map-element-count', 'sockmap-iterator'])
  })

  it('refuses a name it does not know, in one line with the names it does', () => {
    assert.throws(
      () => featuresTurnedOff('sockmap-iterator,sockmap-iterators'),
      (e: unknown) =>
        e instanceof MerbridgeError &&
        e.exitCode === 2 &&
        e.message === 'MERBRIDGE_WITHOUT names unknown feature(s): sockmap-iterators' &&
        (e.suggestion ?? '').includes('map-element-count, sockhash-size, sockmap-iterator'),
    )
  })

  it("says why a load failed in the kernel's words where libbpf quotes them", () => {
    const stderr =
      "libbpf: prog 'mb_sockhash_count': BPF program load failed: Operation not permitted\nlibbpf: failed to load object 'x.bpf.o'\nError: can't load objfile x.bpf.o\n"
    assert.equal(
      loadFailure(new ToolFailedError('bpftool iter pin x.bpf.o', "Error: can't load objfile x.bpf.o", stderr)),
      'the kernel refused mb_sockhash_count: Operation not permitted',
    )
    // as Debian 12's 6.1 answers map-counts.bpf.o (bpf_map_sum_elem_count is 6.6+)
    const noKfunc =
      "libbpf: extern (func ksym) 'bpf_map_sum_elem_count': not found in kernel or module BTFs\nlibbpf: failed to load object 'x.bpf.o'\nError: can't load objfile x.bpf.o\n"
    assert.equal(
      loadFailure(new ToolFailedError('bpftool iter pin x.bpf.o', "Error: can't load objfile x.bpf.o", noKfunc)),
      'the kernel lacks bpf_map_sum_elem_count',
    )
    assert.equal(
      loadFailure(new ToolFailedError('bpftool iter pin x.bpf.o', 'exit code 255', '')),
      'bpftool iter pin x.bpf.o failed: exit code 255',
    )
  })
})
