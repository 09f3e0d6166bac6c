import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {istioNatRules, redirectCounters} from '../../src/lab/istio-iptables.js'
import {parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'

describe('istio iptables baseline', () => {
  it('redirects inbound to 15006 and outbound to 15001, sparing the sidecar and loopback', () => {
    const rules = istioNatRules(PROFILES.istio!)
    assert.match(rules, /-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006/)
    assert.match(rules, /-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001/)
    assert.match(rules, /-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN/)
    for (const p of [15008, 15090, 15021, 15020]) assert.match(rules, new RegExp(`--dport ${p} -j RETURN`))
  })

  it('reads REDIRECT packet counters from iptables-save -c', () => {
    const save = `*nat
[12:720] -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
[0:0] -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
[3:180] -A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT`
    assert.deepEqual(redirectCounters(save), {ISTIO_IN_REDIRECT: 12, ISTIO_REDIRECT: 0})
  })
})

describe('sidecar log', () => {
  it('parses the connections the sidecar forwarded', () => {
    const lines = parseSidecarLog('conn 127.0.0.1:5000 dst=10.0.0.3:8080 via=outbound_passthrough server=10.0.0.3:8080 bytes=90\nnoise\n')
    assert.deepEqual(lines, [{client: '127.0.0.1:5000', originalDst: '10.0.0.3:8080', backend: 'outbound_passthrough', server: '10.0.0.3:8080'}])
  })
})
