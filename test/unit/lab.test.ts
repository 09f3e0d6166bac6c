import assert from 'node:assert/strict'
import {describe, it} from 'node:test'
import {defaultCaptureOptions, type IstioCaptureOptions, istioNatRules, redirectCounters} from '../../src/lab/istio-iptables.js'
import {parseSessionTotals, parseSidecarLog} from '../../src/lab/sidecar.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {istioInitSettings} from '../../src/kube/istio-init.js'
import {istioInitArgs} from '../../src/lab/lab.js'

describe('istio iptables baseline', () => {
  it('redirects inbound to 15006 and outbound to 15001, sparing the sidecar and loopback', () => {
    const rules = istioNatRules(PROFILES.istio!)
    assert.match(rules, /-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006/)
    assert.match(rules, /-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001/)
    assert.match(rules, /-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN/)
    for (const p of [15008, 15090, 15021, 15020]) assert.match(rules, new RegExp(`--dport ${p} -j RETURN`))
  })

  /** Each chain's rules in order, per table, from iptables-restore input or iptables-save text. */
  const chains = (text: string) => {
    const out = new Map<string, string[]>()
    let table = ''
    for (const line of text.split('\n')) {
      const t = /^\*\s*(\w+)$/.exec(line)
      if (t) table = t[1] ?? ''
      const chain = /^-A (\S+) /.exec(line)?.[1]
      if (chain) out.set(`${table} ${chain}`, [...(out.get(`${table} ${chain}`) ?? []), line])
      // `-I CHAIN 1 rule` puts the rule at the top of the chain as it stands
      const top = /^-I (\S+) 1 (.*)$/.exec(line)
      if (top) out.set(`${table} ${top[1]}`, [`-A ${top[1]} ${top[2]}`, ...(out.get(`${table} ${top[1]}`) ?? [])])
    }
    return out
  }
  const options = (o: Partial<IstioCaptureOptions>): IstioCaptureOptions => ({
    ...defaultCaptureOptions(PROFILES.istio!),
    inboundPorts: [],
    excludeInboundPorts: [],
    ...o,
  })

  // Istio's own testdata (tools/istio-iptables/pkg/capture/testdata/*.golden at istio/istio
  // 86c9f01, 2026-08): the rules its istio-iptables writes for an option set, transcribed for the
  // option sets the lab's matrix uses. The lab's baseline must write the same rules, chain by chain.
  const OWNER_DEFAULT = (lo: string) => `-A ISTIO_OUTPUT -o lo -s ${lo === '127.0.0.1' ? '127.0.0.6/32' : '::6/128'} -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo}/${lo === '127.0.0.1' ? 32 : 128} -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo}/${lo === '127.0.0.1' ? 32 : 128} -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d ${lo}/${lo === '127.0.0.1' ? 32 : 128} -j RETURN`
  const HEAD = `* nat
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006`
  const OWNER_3_4_1_2_DNS = (lo: string, six: string) => `-A ISTIO_OUTPUT -o lo -s ${six}/${lo.includes(':') ? 128 : 32} -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo} -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo} -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo} -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ${lo} -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN`
  const RAW_3_4_1_2 = (server: string) => `* raw
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 3 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 3 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 4 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 4 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 2 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 2 -j CT --zone 2
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d ${server} -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s ${server} -j CT --zone 1`
  const DNS_JUMP = (server: string) => `-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d ${server} -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d ${server} -j REDIRECT --to-port 15053`
  const ids = {proxyUids: [3, 4], proxyGids: [1, 2]}

  const GOLDEN: {name: string; options: IstioCaptureOptions; v4: string; v6?: string}[] = [
    {
      name: 'inbound-ports-wildcard',
      options: options({inboundPorts: '*', outboundCidrs: []}),
      v4: `${HEAD}\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}`,
    },
    {
      name: 'inbound-ports-include',
      options: options({inboundPorts: [32000, 31000], outboundCidrs: []}),
      v4: `${HEAD}\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT\n-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}`,
    },
    {
      name: 'ipv6-outbound-ports',
      options: options({outboundCidrs: [], includeOutboundPorts: [32000, 31000]}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}\n-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT`,
      v6: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('::1')}\n-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT`,
    },
    {
      name: 'ipnets',
      options: options({outboundCidrs: ['10.0.0.0/8']}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}\n-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT`,
    },
    {
      name: 'ip-range',
      options: options({...ids, excludeOutboundCidrs: ['1.1.0.0/16'], outboundCidrs: ['9.9.0.0/16'], dnsServers: ['127.0.0.53']}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_3_4_1_2_DNS('127.0.0.1/32', '127.0.0.6')}\n${DNS_JUMP('127.0.0.53/32')}\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN\n-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT\n${RAW_3_4_1_2('127.0.0.53/32')}`,
    },
    {
      name: 'dns-uid-gid',
      options: options({...ids, outboundCidrs: [], dnsServers: ['127.0.0.53', '::127.0.0.53']}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_3_4_1_2_DNS('127.0.0.1/32', '127.0.0.6')}\n${DNS_JUMP('127.0.0.53/32')}\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n${RAW_3_4_1_2('127.0.0.53/32')}`,
      v6: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_3_4_1_2_DNS('::1/128', '::6')}\n${DNS_JUMP('::127.0.0.53/128')}\n-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n${RAW_3_4_1_2('::127.0.0.53/128')}`,
    },
    {
      // a loopback include range drops the "-o lo ! --uid-owner ... RETURN" rules
      name: 'loopback-outbound-iprange',
      options: options({...ids, outboundCidrs: ['127.1.2.3/32'], dnsServers: ['127.0.0.53']}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_3_4_1_2_DNS('127.0.0.1/32', '127.0.0.6')
        .split('\n')
        .filter((l) => !l.includes('! --uid-owner') && !l.includes('! --gid-owner'))
        .join(
          '\n',
        )}\n${DNS_JUMP('127.0.0.53/32')}\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT\n${RAW_3_4_1_2('127.0.0.53/32')}`,
    },
    {
      // Istio's CNI plugin (cni/pkg/plugin/testdata/dns.txt.golden): DNS capture means port 53 to
      // any address, and its default excluded outbound port is the status port
      name: 'CNI dns.txt',
      options: {
        ...defaultCaptureOptions(PROFILES.istio!),
        excludeInboundPorts: [15020, 15021, 15090],
        excludeOutboundPorts: [15020],
        dnsServers: [],
        captureAllDns: true,
      },
      v4: `${HEAD}
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 15020 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 15020 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
* raw
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1`,
    },
    {
      // a group name stays a name: iptables looks it up in istio-init's image
      name: 'outbound-owner-groups',
      options: options({outboundCidrs: [], ownerGroups: {include: 'java,202', exclude: ''}}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1').replace('\n-A ISTIO_OUTPUT -d', '\n-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN\n-A ISTIO_OUTPUT -d')}`,
    },
    {
      name: 'outbound-owner-groups-exclude',
      options: options({outboundCidrs: [], ownerGroups: {include: '*', exclude: '888,ftp'}}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1').replace('\n-A ISTIO_OUTPUT -d', '\n-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN\n-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN\n-A ISTIO_OUTPUT -d')}`,
    },
    {
      // DNS capture with no resolver writes no DNS rules; the group rule is the same in both families
      name: 'ipv6-dns-outbound-owner-groups',
      options: options({outboundCidrs: [], dnsServers: [], ownerGroups: {include: 'java,202', exclude: ''}}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1').replace('\n-A ISTIO_OUTPUT -d', '\n-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN\n-A ISTIO_OUTPUT -d')}`,
      v6: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('::1').replace('\n-A ISTIO_OUTPUT -d', '\n-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN\n-A ISTIO_OUTPUT -d')}`,
    },
    {
      name: 'host-ipv4-loopback-cidr',
      options: options({outboundCidrs: [], loopbackCidr: '127.0.0.1/8'}),
      v4: `${HEAD}\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1').replaceAll('127.0.0.1/32', '127.0.0.1/8')}`,
    },
    {
      name: 'basic-exclude-nic',
      options: options({outboundCidrs: [], excludeInterfaces: ['not-istio-nic']}),
      v4: `${HEAD}\n-A PREROUTING -i not-istio-nic -j RETURN\n-A OUTPUT -o not-istio-nic -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}`,
    },
    {
      // the RETURNs are inserted first, the redirects later above them
      name: 'kube-virt-interfaces',
      options: options({outboundCidrs: '*', virtualInterfaces: ['eth1', 'eth2']}),
      v4: `${HEAD}\n-I PREROUTING 1 -i eth1 -j RETURN\n-I PREROUTING 1 -i eth2 -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-I PREROUTING 1 -i eth1 -j ISTIO_REDIRECT\n-I PREROUTING 1 -i eth2 -j ISTIO_REDIRECT`,
    },
    {
      name: 'ipnets-with-kube-virt-interfaces',
      options: options({outboundCidrs: ['10.0.0.0/8'], virtualInterfaces: ['eth1', 'eth2']}),
      v4: `${HEAD}\n-I PREROUTING 1 -i eth1 -j RETURN\n-I PREROUTING 1 -i eth2 -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n${OWNER_DEFAULT('127.0.0.1')}\n-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT\n-I PREROUTING 1 -i eth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT`,
    },
  ]

  for (const g of GOLDEN) {
    it(`writes the rules of Istio's ${g.name} testdata`, () => {
      assert.deepEqual(chains(istioNatRules(PROFILES.istio!, g.options, 4)), chains(g.v4))
      if (g.v6) assert.deepEqual(chains(istioNatRules(PROFILES.istio!, g.options, 6)), chains(g.v6))
    })
  }

  it("writes an istio-init container's arguments that read back as the same settings", () => {
    const o = {
      ...defaultCaptureOptions(PROFILES.istio!),
      proxyUids: [1500],
      proxyGids: [1501],
      outboundCidrs: ['10.0.0.0/8'],
      excludeOutboundPorts: [22],
      excludeInterfaces: ['net1'],
    }
    const told = istioInitSettings({args: istioInitArgs(PROFILES.istio!, o)}, {uid: 1337})
    assert.ok(told && !('error' in told))
    assert.deepEqual(told.annotations, {
      'traffic.sidecar.istio.io/includeOutboundIPRanges': '10.0.0.0/8',
      'traffic.sidecar.istio.io/excludeOutboundIPRanges': '',
      'traffic.sidecar.istio.io/includeInboundPorts': '*',
      'traffic.sidecar.istio.io/excludeInboundPorts': '15090,15021,15020',
      'traffic.sidecar.istio.io/excludeOutboundPorts': '22',
      'traffic.sidecar.istio.io/excludeInterfaces': 'net1',
    })
    assert.deepEqual([told.proxyUid, told.proxyGid, told.interceptionMode], [1500, 1501, 'REDIRECT'])
  })

  it('excludes outbound ports for TCP and UDP first in the chain, one rule each, as istio-iptables does', () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), excludeOutboundPorts: [22, 53]})
    assert.deepEqual(chains(rules).get('nat ISTIO_OUTPUT')?.slice(0, 5), [
      '-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN',
      '-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN',
      '-A ISTIO_OUTPUT -p tcp --dport 53 -j RETURN',
      '-A ISTIO_OUTPUT -p udp --dport 53 -j RETURN',
      '-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN',
    ])
  })

  it("writes istio-iptables' inbound rules for every port but the excluded ones", () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), excludeInboundPorts: [15090]})
    assert.deepEqual(chains(rules).get('nat ISTIO_INBOUND'), [
      '-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN',
      '-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN',
      '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT',
    ])
  })

  it('turns DNS capture off when resolv.conf names no server, as istio-iptables does', () => {
    const rules = istioNatRules(PROFILES.istio!, {...defaultCaptureOptions(PROFILES.istio!), dnsServers: []})
    assert.doesNotMatch(rules, /15053|ISTIO_OUTPUT_DNS|\*raw/)
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
    assert.deepEqual(lines, [
      {client: '127.0.0.1:5000', originalDst: '10.0.0.3:8080', backend: 'outbound_passthrough', server: '10.0.0.3:8080'},
    ])
  })

  it("reads each frontend's accepted sessions from haproxy's show stat", () => {
    const csv =
      '# pxname,svname,qcur,qmax,scur,smax,slim,stot\noutbound,FRONTEND,,,0,1,4096,7\ninbound,FRONTEND,,,0,2,4096,3\ninbound_passthrough,original,0,0,0,1,,3\n'
    assert.deepEqual(parseSessionTotals(csv), {outbound: 7, inbound: 3})
    assert.ok(Number.isNaN(parseSessionTotals('# pxname,svname,stot\n').outbound))
  })
})
