import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {defaultCaptureOptions, istioNatRules, redirectCounters} from '../../src/lab/istio-iptables.js'
import {parseSessionTotals, parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'

describe('istio iptables baseline', () => {
  it('redirects inbound to 15006 and outbound to 15001, sparing the sidecar and loopback', () => {
    const rules = istioNatRules(PROFILES.istio!)
    assert.match(rules, /-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006/)
    assert.match(rules, /-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001/)
    assert.match(rules, /-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN/)
    for (const p of [15008, 15090, 15021, 15020]) assert.match(rules, new RegExp(`--dport ${p} -j RETURN`))
  })

  // The rule sequences Istio's istio-iptables writes for these option sets (its capture testdata:
  // ipnets, outbound-ports-exclude, inbound-ports-wildcard), as the lab must reproduce them.
  const chain = (rules: string, name: string) => rules.split('\n').filter((l) => l.startsWith(`-A ${name} `))
  const OWNER_1337 = [
    '-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN',
    '-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT',
    '-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN',
    '-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN',
    '-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT',
    '-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN',
    '-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN',
    '-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN',
  ]

  it("writes istio-iptables' OUTPUT rules for an include range", () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), outboundCidrs: ['10.0.0.0/8']})
    assert.deepEqual(chain(rules, 'ISTIO_OUTPUT'), [...OWNER_1337, '-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT'])
  })

  it("writes istio-iptables' OUTPUT rules for excluded outbound ports, first in the chain", () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), excludeOutboundPorts: [22, 80, 443]})
    assert.deepEqual(chain(rules, 'ISTIO_OUTPUT').slice(0, 2), ['-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,80,443 -j RETURN', OWNER_1337[0]])
  })

  it('puts included outbound ports after excluded ranges and before included ranges, as istio-iptables does', () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), outboundCidrs: ['10.0.0.0/8'], excludeOutboundCidrs: ['10.96.0.0/12'], includeOutboundPorts: [8081]})
    assert.deepEqual(chain(rules, 'ISTIO_OUTPUT').slice(OWNER_1337.length), ['-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN', '-A ISTIO_OUTPUT -p tcp --dport 8081 -j ISTIO_REDIRECT', '-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT'])
  })

  it("writes istio-iptables' inbound rules for every port", () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), excludeInboundPorts: []})
    assert.deepEqual(chain(rules, 'ISTIO_INBOUND'), ['-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN', '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT'])
    assert.deepEqual(chain(rules, 'PREROUTING'), ['-A PREROUTING -p tcp -j ISTIO_INBOUND'])
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

  it("reads each frontend's accepted sessions from haproxy's show stat", () => {
    const csv = '# pxname,svname,qcur,qmax,scur,smax,slim,stot\noutbound,FRONTEND,,,0,1,4096,7\ninbound,FRONTEND,,,0,2,4096,3\ninbound_passthrough,original,0,0,0,1,,3\n'
    assert.deepEqual(parseSessionTotals(csv), {outbound: 7, inbound: 3})
    assert.ok(Number.isNaN(parseSessionTotals('# pxname,svname,stot\n').outbound))
  })
})
