// A stream arrives in the order it was written, whichever way its first bytes went. sk_msg puts
// what it moves in front of what the peer has yet to read from TCP, so a socket whose first bytes
// took TCP (its peer not tracked yet, Fast Open data, a send that began during the handshake)
// must stay on TCP. Numbered writes from the first instant of each connection, checked by a
// reader that lets them pile up first; and many connections through both sidecars under load.
import assert from 'node:assert/strict'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {readMaps} from '../../src/bpf/maps.js'
import {Lab, NODE} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {SYSTEM_PYTHON} from '../../src/lab/sidecar6.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {ROOT, cli, kernelSkipReason, uniqueInstall, suiteTimeout, removeLab} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'iptables'], [SYSTEM_PYTHON])
const SCRIPT = join(ROOT, 'test', 'fixtures', 'numbered.py')
const PORT = 9090 // b's, through both sidecars
const LOCAL_PORT = 9191 // a's own, over loopback: a pair sk_msg moves between directly

describe('stream order', {skip, timeout: suiteTimeout(600_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!)
  const install = uniqueInstall()
  const inst = install.installation()

  const send = async (pod: string, host: string, port: number, n: number, records: number, threads: number, how = 'connect') => {
    const r = await lab.exec(pod, SYSTEM_PYTHON, [SCRIPT, 'send', host, String(port), String(n), String(records), String(threads), how], {
      timeoutMs: 300_000,
    })
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as Record<string, number>
  }

  before(async () => {
    await lab.create([
      {name: 'a', meshed: true},
      {name: 'b', meshed: true},
    ])
    for (const p of ['a', 'b']) await lab.sidecars.start(p)
    await lab.spawn('b', 'numbered reader', SYSTEM_PYTHON, [SCRIPT, 'serve', '0.0.0.0', String(PORT)]).waitFor(/listening/)
    // a reader that waits a second before its first read: whatever TCP and sk_msg delivered is there by then
    await lab
      .spawn('a', 'slow numbered reader', SYSTEM_PYTHON, [SCRIPT, 'serve', '127.0.0.1', String(LOCAL_PORT), '1'])
      .waitFor(/listening/)
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
  })

  after(() => removeLab(lab, install))

  it('keeps a connection on TCP when its first bytes went before its peer was tracked (the handshake ACK lost)', async () => {
    // a lost ACK: the server's socket exists only once the first data segment completes the handshake
    const rule = [
      'INPUT',
      '-i',
      'lo',
      '-p',
      'tcp',
      '--dport',
      String(LOCAL_PORT),
      '--tcp-flags',
      'ALL',
      'ACK',
      '-m',
      'length',
      '--length',
      '0:52',
      '-j',
      'DROP',
    ]
    assert.equal((await lab.exec('a', 'iptables', ['-w', '-A', ...rule])).code, 0)
    try {
      const before = await readMaps.counters(inst)
      assert.deepEqual(await send('a', '127.0.0.1', LOCAL_PORT, 10, 200, 5), {ok: 10})
      const after = await readMaps.counters(inst)
      // each client socket missed once and stayed on TCP; the readers' answers were still moved
      assert.equal(after.redirectMiss - before.redirectMiss, 10)
    } finally {
      await lab.exec('a', 'iptables', ['-w', '-D', ...rule])
    }
  })

  it('keeps a connection on TCP when its first bytes rode in the SYN (Fast Open)', async () => {
    // client and server Fast Open, and no cookie needed: the first record is in every SYN
    assert.equal((await lab.exec('a', 'sysctl', ['-qw', 'net.ipv4.tcp_fastopen=1031'])).code, 0)
    assert.deepEqual(await send('a', '127.0.0.1', LOCAL_PORT, 10, 200, 5, 'fastopen'), {ok: 10})
  })

  it('keeps a connection on TCP when its first send began during the handshake', async () => {
    // every other SYN lost: one connection at a time, each waits for its SYN to be sent again
    const rule = [
      'INPUT',
      '-i',
      'lo',
      '-p',
      'tcp',
      '--dport',
      String(LOCAL_PORT),
      '--syn',
      '-m',
      'statistic',
      '--mode',
      'nth',
      '--every',
      '2',
      '--packet',
      '0',
      '-j',
      'DROP',
    ]
    assert.equal((await lab.exec('a', 'iptables', ['-w', '-A', ...rule])).code, 0)
    try {
      assert.deepEqual(await send('a', '127.0.0.1', LOCAL_PORT, 4, 200, 1, 'waiting'), {ok: 4})
    } finally {
      await lab.exec('a', 'iptables', ['-w', '-D', ...rule])
    }
  })

  it('moves the rest: numbered writes through both sidecars from the first instant, on a loaded machine', async () => {
    // a busy loop on every CPU: the handshake's last ACK may wait for a CPU as the app writes
    const hogs: LabProcess[] = []
    for (let i = 0; i < 4; i++) hogs.push(lab.spawn(NODE, `busy loop ${i}`, 'sh', ['-c', 'while :; do :; done']))
    try {
      const before = await readMaps.counters(inst)
      assert.deepEqual(await send('a', lab.pod('b').ip, PORT, 400, 100, 16), {ok: 400})
      const after = await readMaps.counters(inst)
      // most of it moved socket to socket: at least one message per connection and hop
      assert.ok(after.msgRedirected - before.msgRedirected >= 400 * 3, `${after.msgRedirected - before.msgRedirected} messages moved`)
    } finally {
      for (const h of hogs) await h.stop()
    }
  })
})
