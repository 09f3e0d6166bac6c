#!/usr/bin/env node
// A stand-in "other datapath" for the bench's --baseline-up: merbridge itself, enabled on the
// lab's cgroup for the pod IPs given, through the interface of the original Merbridge scripts
// (up CGROUP BPFFS_DIR POD_IP...). Lets a test drive the fourth mode without that code.
import {execFileSync} from 'node:child_process'
import {rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

const [cgroup, bpffs, ...ips] = process.argv.slice(2)
const items = ips.map((ip, i) => ({
  kind: 'Pod',
  metadata: {name: `baseline-${i}`, namespace: 'lab', annotations: {'sidecar.istio.io/status': '{"containers":["istio-proxy"]}'}},
  spec: {nodeName: hostname(), containers: [{name: 'app'}, {name: 'istio-proxy'}]},
  status: {phase: 'Running', podIP: ip, podIPs: [{ip}]},
}))
const pods = join(tmpdir(), `baseline-pods-${process.pid}.json`)
writeFileSync(pods, JSON.stringify({apiVersion: 'v1', kind: 'List', items}))
const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
try {
  execFileSync(process.execPath, [bin, 'enable', '--cgroup', cgroup, '--bpffs', bpffs, '--pods-file', pods], {stdio: 'inherit'})
} finally {
  rmSync(pods, {force: true})
}
