import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {missingCaps, parseCapEff} from '../../src/node/caps.js'
import {kernelAtLeast, parseKernelRelease} from '../../src/node/kernel.js'
import {findCgroup2, isBpffs, mountOf, parseMounts} from '../../src/node/mounts.js'
import {parseFibTrieLocal} from '../../src/node/netns.js'
import {checkBpffs, checkBtf, checkCgroup, checkKernel, checkPrivileges, checkProbes} from '../../src/datapath/doctor.js'

const HYBRID = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0`
const UNIFIED = `cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
proc /proc proc rw 0 0`
const LEGACY = `tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0`

describe('kernel release', () => {
  it('parses distribution and custom release strings', () => {
    assert.deepEqual(parseKernelRelease('6.18.44-fc-v657'), {major: 6, minor: 18, patch: 44, raw: '6.18.44-fc-v657'})
    assert.deepEqual(parseKernelRelease('5.15.0-91-generic\n'), {major: 5, minor: 15, patch: 0, raw: '5.15.0-91-generic'})
    assert.deepEqual(parseKernelRelease('6.1'), {major: 6, minor: 1, patch: 0, raw: '6.1'})
    assert.equal(parseKernelRelease('linux'), undefined)
  })

  it('says a release below 5.15 lacks features but leaves the verdict to the feature checks', () => {
    const old = checkKernel(parseKernelRelease('5.14.21'))
    assert.equal(old.status, 'warn')
    assert.equal(old.required, false)
    assert.equal(
      old.detail,
      '5.14.21 is older than 5.15, the oldest release with every feature the datapath uses; judged by its features below',
    )
    assert.equal(checkKernel(parseKernelRelease('4.19.0')).required, false)
    assert.equal(checkKernel(parseKernelRelease('5.15.0')).status, 'pass')
    assert.equal(checkKernel(parseKernelRelease('6.18.44')).status, 'pass')
    assert.equal(checkKernel(undefined).status, 'warn')
    assert.ok(kernelAtLeast({major: 6, minor: 0, patch: 0, raw: ''}, 5, 15))
    assert.ok(!kernelAtLeast({major: 5, minor: 9, patch: 9, raw: ''}, 5, 10))
  })

  it('judges the kernel by its probe loads: the datapath and cookies are required, optional features a warning with their cost', () => {
    const good = checkProbes({unavailable: {}})
    assert.deepEqual(
      good.map((c) => [c.id, c.status, c.required, c.optional === true]),
      [
        ['datapath-load', 'pass', true, false],
        ['netns-cookie', 'pass', true, false],
        ['map-element-count', 'pass', false, true],
        ['sockhash-size', 'pass', false, true],
        ['sockmap-iterator', 'pass', false, true],
        ['reuseport-assign', 'pass', false, true],
      ],
    )
    assert.match(good[5]?.detail ?? '', /^found out per connection by the datapath/)
    const bad = checkProbes({
      datapath: 'the kernel refused mb_sockops: Invalid argument',
      netnsCookie: 'the kernel does not answer SO_NETNS_COOKIE (Linux 5.14+)',
      unavailable: {'map-element-count': 'the kernel refused mb_map_counts: Invalid argument'},
    })
    assert.deepEqual(
      bad.map((c) => [c.id, c.status]),
      [
        ['datapath-load', 'fail'],
        ['netns-cookie', 'fail'],
        ['map-element-count', 'warn'],
        ['sockhash-size', 'pass'],
        ['sockmap-iterator', 'pass'],
        ['reuseport-assign', 'pass'],
      ],
    )
    assert.equal(bad[0]?.detail, 'the kernel refused mb_sockops: Invalid argument')
    assert.match(bad[2]?.remedy ?? '', /^merbridge works without it: status counts entries by dumping each hash map/)
  })

  it('requires kernel BTF, saying what reads it', () => {
    const missing = checkBtf(false)
    assert.deepEqual([missing.status, missing.required], ['fail', true])
    assert.match(missing.detail, /inbound guard/)
    assert.match(missing.remedy ?? '', /CONFIG_DEBUG_INFO_BTF=y/)
    assert.equal(checkBtf(true).status, 'pass')
  })
})

describe('mount table', () => {
  it('finds cgroup v2 on unified and hybrid hosts and reports v1-only hosts', () => {
    assert.deepEqual(findCgroup2(parseMounts(UNIFIED)), {layout: 'unified', path: '/sys/fs/cgroup'})
    assert.deepEqual(findCgroup2(parseMounts(HYBRID)), {layout: 'hybrid', path: '/sys/fs/cgroup/unified'})
    assert.deepEqual(findCgroup2(parseMounts(LEGACY)), {layout: 'legacy'})
    assert.deepEqual(findCgroup2([]), {layout: 'none'})
  })

  it('decodes escaped mount points and finds the mount of a path', () => {
    const m = parseMounts('bpf /sys/fs/my\\040bpf bpf rw 0 0\n' + HYBRID)
    assert.equal(m[0]?.target, '/sys/fs/my bpf')
    assert.equal(mountOf(m, '/sys/fs/cgroup/unified/kubepods')?.fstype, 'cgroup2')
    assert.equal(mountOf(m, '/sys/fs/cgroup/cpu/x')?.fstype, 'cgroup')
    assert.ok(isBpffs(m, '/sys/fs/bpf/merbridge'))
    assert.ok(!isBpffs(parseMounts(UNIFIED), '/sys/fs/bpf/merbridge'))
  })

  it('fails a v1-only host with a remedy', () => {
    const c = checkCgroup(parseMounts(LEGACY))
    assert.equal(c.status, 'fail')
    assert.match(c.detail, /v1-only/)
    assert.match(c.remedy ?? '', /cgroup2/)
  })

  it('fails a --cgroup that is not cgroup v2 and names the right one', () => {
    const c = checkCgroup(parseMounts(HYBRID), '/proc')
    assert.equal(c.status, 'fail')
    assert.match(c.remedy ?? '', /--cgroup \/sys\/fs\/cgroup\/unified/)
    const missing = checkCgroup(parseMounts(HYBRID), '/no/such/cgroup')
    assert.equal(missing.status, 'fail')
    assert.match(missing.detail, /does not exist/)
    const file = checkCgroup(parseMounts(HYBRID), '/etc/hostname')
    assert.equal(file.status, 'fail')
    assert.equal(file.detail, '/etc/hostname is a file, not a cgroup folder')
  })

  it("takes a hybrid host's cgroup root, given whole, for the cgroup v2 mount inside it", () => {
    const c = checkCgroup(parseMounts(HYBRID.replaceAll('/sys/fs/cgroup', '/tmp')), '/tmp')
    assert.equal(c.status, 'pass', c.detail)
    assert.equal(c.path, '/tmp/unified')
    assert.match(c.detail, /hybrid host's cgroup root \/tmp/)
  })

  it('warns when bpffs is not mounted (enable mounts it) and fails elsewhere', () => {
    assert.equal(checkBpffs(parseMounts(HYBRID), '/sys/fs/bpf/merbridge').status, 'pass')
    const unmounted = checkBpffs(parseMounts(UNIFIED), '/sys/fs/bpf/merbridge')
    assert.equal(unmounted.status, 'warn')
    assert.equal(unmounted.remedy, 'mount -t bpf bpf /sys/fs/bpf')
    assert.equal(checkBpffs(parseMounts(UNIFIED), '/tmp/pins').status, 'fail')
  })
})

describe('privileges', () => {
  it('reads the effective capability set', () => {
    const all = parseCapEff('Name:\tx\nCapEff:\t000001ffffffffff\n')!
    assert.deepEqual(missingCaps(all), [])
    const none = parseCapEff('CapEff:\t0000000000000000')!
    assert.deepEqual(missingCaps(none), ['CAP_NET_ADMIN', 'CAP_SYS_ADMIN', 'CAP_BPF'])
    // CAP_NET_ADMIN (12) and CAP_BPF (39) only
    assert.deepEqual(missingCaps((1n << 12n) | (1n << 39n)), ['CAP_SYS_ADMIN'])
  })

  it('passes root, passes capable non-root, fails the rest', () => {
    assert.equal(checkPrivileges(0, []).status, 'pass')
    assert.equal(checkPrivileges(1000, []).status, 'pass')
    const c = checkPrivileges(1000, ['CAP_BPF'])
    assert.equal(c.status, 'fail')
    assert.match(c.detail, /CAP_BPF/)
  })
})

describe('fib_trie', () => {
  it('lists the local addresses of a namespace', () => {
    const text = `Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.77.0.0/24 2 0 2
        |-- 10.77.0.0
           /24 link UNICAST
        |-- 10.77.0.3
           /32 host LOCAL
        |-- 10.77.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 10.77.0.3
           /32 host LOCAL`
    assert.deepEqual(parseFibTrieLocal(text).sort(), ['10.77.0.3', '127.0.0.1'])
  })
})
