// mb_tc_inbound's decisions, packet by packet, with BPF_PROG_RUN (bpftool prog run): the object
// loaded into a pin folder of the test's own and nothing attached, no namespace, no lab. Each
// packet is built here (Ethernet, IPv4 or IPv6 with extension headers, TCP) and the program's
// verdict read back: TC_ACT_OK (0) lets the kernel deliver it, TC_ACT_SHOT (2) drops it. The
// program looks sockets up in the test's own namespace, where nothing listens on the addresses
// used here unless a test opens a listener on loopback.
import assert from 'node:assert/strict'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {connect, createServer, type Server} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import {bpftool} from '../../src/bpf/bpftool.js'
import {ipToSlot} from '../../src/bpf/ip.js'
import {encodePodRules, type PodRules, type Settings} from '../../src/bpf/layout.js'
import {readMaps} from '../../src/bpf/maps.js'
import {buildObjects} from '../../src/bpf/objects.js'
import {Installation} from '../../src/datapath/installation.js'
import {writeSettings} from '../../src/datapath/settings.js'
import {ensureBpffs, eventually, kernelSkipReason, suiteTimeout, uniqueInstall} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang'])
const OK = 0
const SHOT = 2
const POD = '127.0.0.9' // on loopback: a test may listen there as the pod's inbound sidecar
const POD6 = 'fd98::9'
const APP = 8080
const EXCLUDED = 15020
const SETTINGS: Settings = {
  sidecarUid: 1337,
  sidecarGid: 1337,
  outboundPort: 15001,
  inboundPort: 15006,
  draining: false,
  inboundRewrite: false,
  cni: false,
  hostNetns: 1n,
  dnsPort: 0,
}
const RULES: PodRules = {
  outAllCidrs: true,
  inAllPorts: true,
  outIncludePorts: [],
  outExcludePorts: [],
  inIncludePorts: [],
  inExcludePorts: [EXCLUDED],
  outIncludeCidrs: [],
  outExcludeCidrs: [],
  proxyUid: 1337,
  proxyGid: 1337,
}

const TCP = {syn: 0x02, ack: 0x10}

function checksum(b: Buffer): number {
  let sum = 0
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i)
  if (b.length % 2) sum += (b[b.length - 1] ?? 0) << 8
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return ~sum & 0xffff
}

function tcpHeader(dport: number, flags: number, sport = 40_000): Buffer {
  const t = Buffer.alloc(20)
  t.writeUInt16BE(sport, 0)
  t.writeUInt16BE(dport, 2)
  t.writeUInt32BE(1, 4)
  t[12] = 5 << 4
  t[13] = flags
  t.writeUInt16BE(65_535, 14)
  return t
}

const ethernet = (type: number) => Buffer.concat([Buffer.alloc(6, 2), Buffer.alloc(6, 4), Buffer.from([type >> 8, type & 0xff])])

/** An IPv4 packet with a TCP header; `fragment`: the more-fragments bit set. */
function ipv4(dst: string, dport: number, flags: number, opts: {fragment?: boolean; src?: string; sport?: number} = {}): Buffer {
  const h = Buffer.alloc(20)
  h[0] = 0x45
  h.writeUInt16BE(40, 2)
  h.writeUInt16BE(1, 4)
  h.writeUInt16BE(opts.fragment ? 0x2000 : 0, 6)
  h[8] = 64
  h[9] = 6
  Buffer.from((opts.src ?? '10.99.0.1').split('.').map(Number)).copy(h, 12)
  Buffer.from(dst.split('.').map(Number)).copy(h, 16)
  h.writeUInt16BE(checksum(h), 10)
  return Buffer.concat([ethernet(0x0800), h, tcpHeader(dport, flags, opts.sport)])
}

/** An IPv6 packet whose TCP header comes after the extension headers named (0 hop-by-hop, 60 destination options, 44 fragment). */
function ipv6(dst: string, dport: number, flags: number, extensions: number[]): Buffer {
  const chain = [...extensions, 6]
  const ext = extensions.map((type, i) => {
    const e = Buffer.alloc(8)
    e[0] = chain[i + 1]!
    // a fragment header's offset and more-fragments bit: the first of several
    if (type === 44) e.writeUInt16BE(1, 2)
    return e
  })
  const h = Buffer.alloc(40)
  h[0] = 0x60
  h.writeUInt16BE(8 * ext.length + 20, 4)
  h[6] = chain[0]!
  h[7] = 64
  ipToSlot('fd98::1').copy(h, 8)
  ipToSlot(dst).copy(h, 24)
  return Buffer.concat([ethernet(0x86dd), h, ...ext, tcpHeader(dport, flags)])
}

describe("tc inbound's decisions (BPF_PROG_RUN)", {skip, timeout: suiteTimeout(120_000)}, () => {
  const {bpffs, cleanup} = uniqueInstall()
  const tmp = mkdtempSync(join(tmpdir(), 'mb-progrun-'))
  let inst: Installation
  let ctx = ''
  let unmount: () => Promise<void> = () => Promise.resolve()
  let n = 0

  /** The program's verdict on one packet arriving at interface 1 (ingress), and the packet as it left the program. */
  const run = async (packet: Buffer): Promise<{verdict: number; out: Buffer}> => {
    const file = join(tmp, `packet-${n++}`)
    writeFileSync(file, packet)
    const r = await execa('bpftool', [
      'prog',
      'run',
      'pinned',
      inst.prog('mb_tc_inbound'),
      'data_in',
      file,
      'data_out',
      `${file}.out`,
      'ctx_in',
      ctx,
      'repeat',
      '1',
    ])
    const m = /Return value: (\d+)/.exec(r.stdout + r.stderr)
    assert.ok(m, r.stdout + r.stderr)
    return {verdict: Number(m[1]), out: readFileSync(`${file}.out`)}
  }
  const verdict = async (packet: Buffer) => (await run(packet)).verdict
  const noListener = async () => (await readMaps.counters(inst)).inboundNoListener

  before(async () => {
    const objects = await buildObjects()
    unmount = await ensureBpffs()
    inst = new Installation(bpffs)
    mkdirSync(inst.dir)
    await bpftool.loadAll(objects.datapath, inst.progDir, inst.mapDir)
    // struct __sk_buff as the object's BTF lays it out: arrived at and handled on interface 1
    const types = (
      JSON.parse((await execa('bpftool', ['btf', 'dump', 'file', objects.datapath, '-j'])).stdout) as {
        types: {kind: string; name?: string; size?: number; members?: {name: string; bits_offset: number}[]}[]
      }
    ).types
    const skb = types.find((t) => t.kind === 'STRUCT' && t.name === '__sk_buff')
    assert.ok(skb?.size && skb.members)
    const at = (name: string) => skb.members!.find((m) => m.name === name)!.bits_offset / 8
    const c = Buffer.alloc(skb.size)
    c.writeUInt32LE(1, at('ingress_ifindex'))
    c.writeUInt32LE(1, at('ifindex'))
    ctx = join(tmp, 'ctx')
    writeFileSync(ctx, c)
  })

  after(async () => {
    rmSync(bpffs, {recursive: true, force: true})
    rmSync(tmp, {recursive: true, force: true})
    await unmount()
    cleanup()
  })

  it('stays out of the way until the settings are written', async () => {
    assert.equal(await verdict(ipv4(POD, APP, TCP.syn)), OK)
    await writeSettings(inst, SETTINGS)
    await bpftool.batch([
      bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot(POD), encodePodRules(RULES)),
      bpftool.mapUpdateLine(inst.map('local_pod_ips'), ipToSlot(POD6), encodePodRules(RULES)),
    ])
  })

  it('drops a SYN to a captured port while no inbound listener is there (fail closed), and counts it', async () => {
    const before = await noListener()
    assert.equal(await verdict(ipv4(POD, APP, TCP.syn)), SHOT)
    assert.equal(await noListener(), before + 1)
  })

  it('passes a SYN to a port the pod excludes, and one to an address of no pod', async () => {
    assert.equal(await verdict(ipv4(POD, EXCLUDED, TCP.syn)), OK)
    assert.equal(await verdict(ipv4('10.98.0.1', APP, TCP.syn)), OK)
  })

  it('leaves a fragment to the kernel, which reassembles it before any socket sees it', async () => {
    const before = await noListener()
    assert.equal(await verdict(ipv4(POD, APP, TCP.syn, {fragment: true})), OK)
    assert.equal(await verdict(ipv6(POD6, APP, TCP.syn, [44])), OK)
    assert.equal(await noListener(), before)
  })

  it('finds the TCP header of IPv6 behind hop-by-hop and destination options', async () => {
    assert.equal(await verdict(ipv6(POD6, APP, TCP.syn, [])), SHOT)
    assert.equal(await verdict(ipv6(POD6, APP, TCP.syn, [0, 60])), SHOT)
    assert.equal(await verdict(ipv6(POD6, EXCLUDED, TCP.syn, [0, 60])), OK)
  })

  it("sends a SYN to the pod's inbound listener where one listens, and lets a bare ACK pass", async () => {
    const server: Server = createServer()
    await new Promise<void>((resolve) => server.listen(SETTINGS.inboundPort, POD, resolve))
    try {
      // handing the packet to the listener (bpf_sk_assign) needs a real ingress, which BPF_PROG_RUN
      // is not; the kernels that cannot hand it over get the port rewritten, as REDIRECT would
      await writeSettings(inst, {...SETTINGS, inboundRewrite: true})
      const {verdict: v, out} = await run(ipv4(POD, APP, TCP.syn))
      assert.equal(v, OK)
      assert.equal(out.readUInt16BE(14 + 20 + 2), SETTINGS.inboundPort, "the SYN's port is now the inbound listener's")
      assert.equal(checksum(out.subarray(14, 34)), 0, 'the IPv4 header is still valid')
      // no connection of its own and no cookie the listener sent: left to the kernel
      assert.equal(await verdict(ipv4(POD, APP, TCP.ack)), OK)
    } finally {
      await writeSettings(inst, SETTINGS)
      await new Promise((resolve) => server.close(resolve))
    }
  })

  it('sends a SYN that reopens a connection still in TIME_WAIT by rewriting its port', async () => {
    // the server closes first, so its end of the connection stays in TIME_WAIT; a client that
    // reuses the port sends a SYN on the same four addresses. Handed to the listener, its request
    // would collide with that socket in the kernel's table and be dropped until the TIME_WAIT ends
    const app: Server = createServer((c) => c.end())
    const listener: Server = createServer()
    await new Promise<void>((resolve) => app.listen(APP, POD, resolve))
    await new Promise<void>((resolve) => listener.listen(SETTINGS.inboundPort, POD, resolve))
    try {
      const client = connect({host: POD, port: APP, localAddress: '127.0.0.1'})
      const port = await new Promise<number>((resolve) => client.on('connect', () => resolve(client.localPort ?? 0)))
      await new Promise((resolve) => client.on('end', resolve))
      client.end()
      await eventually('the server end in TIME_WAIT', async () =>
        (await execa('ss', ['-Htn', 'state', 'time-wait', 'src', `${POD}:${APP}`])).stdout.includes(`127.0.0.1:${port}`),
      )
      const before = (await readMaps.counters(inst)).inboundReopened
      const {verdict: v, out} = await run(ipv4(POD, APP, TCP.syn, {src: '127.0.0.1', sport: port}))
      assert.equal(v, OK)
      assert.equal(out.readUInt16BE(14 + 20 + 2), SETTINGS.inboundPort)
      assert.equal((await readMaps.counters(inst)).inboundReopened, before + 1)
    } finally {
      await new Promise((resolve) => app.close(resolve))
      await new Promise((resolve) => listener.close(resolve))
    }
  })

  it('passes everything while a disable drains', async () => {
    await writeSettings(inst, {...SETTINGS, draining: true})
    assert.equal(await verdict(ipv4(POD, APP, TCP.syn)), OK)
  })
})
