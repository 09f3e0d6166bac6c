import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, it} from 'node:test'
import {CAPTURE_ALL} from '../../src/bpf/layout.js'
import {podRulesWithDns} from '../../src/datapath/sync-maps.js'
import {ANNOTATIONS, rulesFromAnnotations} from '../../src/kube/annotations.js'
import {parseFlags} from '../../src/kube/istio-init.js'
import {type MeshedPod, type PodJson, parsePodList, selectMeshedPods} from '../../src/kube/pods.js'
import {afterRound} from '../../src/kube/watch.js'
import {namespaceResolvers, normalIp, parseIfInet6, parseResolvConf} from '../../src/node/netns.js'
import {readPodFile, resolveInRoot} from '../../src/node/pod-files.js'
import {printable} from '../../src/text.js'
import {PROFILES} from '../../src/mesh/profiles.js'

const istio = PROFILES.istio!
const RESERVED = [15008, 15090, 15021, 15020]

describe('istio annotations', () => {
  const cases: {name: string; annotations: Record<string, string>; expect: Record<string, unknown>; warnings?: RegExp[]}[] = [
    {
      name: 'no annotations capture everything',
      annotations: {},
      expect: {outAllCidrs: true, inAllPorts: true, outIncludeCidrs: [], inExcludePorts: RESERVED},
    },
    {name: "'*' ranges capture everything", annotations: {[ANNOTATIONS.includeOutboundIPRanges]: '*'}, expect: {outAllCidrs: true}},
    {
      name: 'empty include ranges capture nothing',
      annotations: {[ANNOTATIONS.includeOutboundIPRanges]: ''},
      expect: {outAllCidrs: false, outIncludeCidrs: []},
    },
    {
      name: 'include ranges are listed',
      annotations: {[ANNOTATIONS.includeOutboundIPRanges]: '10.0.0.0/8, 172.16.0.0/12'},
      expect: {
        outAllCidrs: false,
        outIncludeCidrs: [
          {ip: '10.0.0.0', prefix: 8},
          {ip: '172.16.0.0', prefix: 12},
        ],
      },
    },
    {
      name: 'a bad include range captures everything (fail closed)',
      annotations: {[ANNOTATIONS.includeOutboundIPRanges]: '10.0.0.0/8,nonsense'},
      expect: {outAllCidrs: true, outIncludeCidrs: []},
      warnings: [/includeOutboundIPRanges: 1 entry is not a CIDR \('nonsense'\); capturing all of it instead \(fail closed\)/],
    },
    {
      name: 'more include ranges than fit capture everything',
      annotations: {[ANNOTATIONS.includeOutboundIPRanges]: Array.from({length: 9}, (_, i) => `10.${i}.0.0/16`).join(',')},
      expect: {outAllCidrs: true, outIncludeCidrs: []},
      warnings: [/9 entries, the datapath holds 8; capturing all/],
    },
    {
      name: 'more include ports than fit capture every address',
      annotations: {
        [ANNOTATIONS.includeOutboundIPRanges]: '10.0.0.0/8',
        [ANNOTATIONS.includeOutboundPorts]: Array.from({length: 17}, (_, i) => 2000 + i).join(','),
      },
      expect: {outAllCidrs: true},
      warnings: [/17 entries, the datapath holds 16; capturing all/],
    },
    {
      name: 'a bad include inbound port captures every inbound port',
      annotations: {[ANNOTATIONS.includeInboundPorts]: '8080,http'},
      expect: {inAllPorts: true, inIncludePorts: []},
      warnings: [/includeInboundPorts: 1 entry is not a port .*fail closed/],
    },
    {
      name: 'exclude ranges',
      annotations: {[ANNOTATIONS.excludeOutboundIPRanges]: '10.96.0.1/32,bad/99'},
      expect: {outExcludeCidrs: [{ip: '10.96.0.1', prefix: 32}]},
      warnings: [/1 entry is not a CIDR \('bad\/99'\); ignored, so more is captured/],
    },
    {
      name: 'outbound ports',
      annotations: {[ANNOTATIONS.includeOutboundPorts]: '443', [ANNOTATIONS.excludeOutboundPorts]: '22,3306,0,70000,abc'},
      expect: {outIncludePorts: [443], outExcludePorts: [22, 3306]},
      warnings: [/excludeOutboundPorts: 3 entries are not a port \(1-65535\) \('0', '70000', 'abc'\)/],
    },
    {
      name: 'empty include inbound ports capture no inbound',
      annotations: {[ANNOTATIONS.includeInboundPorts]: ''},
      expect: {inAllPorts: false, inIncludePorts: []},
    },
    {
      name: 'listed inbound ports',
      annotations: {[ANNOTATIONS.includeInboundPorts]: '8080, 9090'},
      expect: {inAllPorts: false, inIncludePorts: [8080, 9090]},
    },
    // istio-iptables reads -d only with '*': a listed port is captured though also excluded, the tunnel port never
    {
      name: 'listed inbound ports ignore the excluded ones',
      annotations: {[ANNOTATIONS.includeInboundPorts]: '8080,15020,15008', [ANNOTATIONS.excludeInboundPorts]: '8080'},
      expect: {inAllPorts: false, inIncludePorts: [8080, 15020, 15008], inExcludePorts: [15008]},
    },
    {
      name: 'excluded inbound ports join the reserved ones',
      annotations: {[ANNOTATIONS.excludeInboundPorts]: '9000,15020'},
      expect: {inExcludePorts: [...RESERVED, 9000]},
    },
    {
      // istio-init's -d lists the mesh's own ports too: they take no slot of the pod's
      name: "the mesh's own ports in the excluded inbound list take no slot",
      annotations: {[ANNOTATIONS.excludeInboundPorts]: ['15090,15021,15020', ...Array.from({length: 12}, (_, i) => 9000 + i)].join(',')},
      expect: {inExcludePorts: [...RESERVED, ...Array.from({length: 12}, (_, i) => 9000 + i)]},
    },
    {
      name: 'the status port is excluded inbound',
      annotations: {[ANNOTATIONS.statusPort]: '15999'},
      expect: {inExcludePorts: [...RESERVED, 15999]},
    },
    {
      name: 'a bad status port is ignored',
      annotations: {[ANNOTATIONS.statusPort]: 'x'},
      expect: {inExcludePorts: RESERVED},
      warnings: [/status.sidecar.istio.io\/port: 'x' is not a port/],
    },
    {
      name: 'too many ports are cut',
      annotations: {[ANNOTATIONS.excludeOutboundPorts]: Array.from({length: 20}, (_, i) => 1000 + i).join(',')},
      expect: {outExcludePorts: Array.from({length: 16}, (_, i) => 1000 + i)},
      warnings: [/20 entries, the datapath holds 16; the rest are ignored, so more is captured/],
    },
    {
      name: 'too many ranges are cut',
      annotations: {[ANNOTATIONS.excludeOutboundIPRanges]: Array.from({length: 9}, (_, i) => `10.${i}.0.0/16`).join(',')},
      expect: {outExcludeCidrs: Array.from({length: 8}, (_, i) => ({ip: `10.${i}.0.0`, prefix: 16}))},
      warnings: [/9 entries, the datapath holds 8; the rest are ignored/],
    },
  ]
  for (const c of cases) {
    it(c.name, () => {
      const {rules, warnings} = rulesFromAnnotations(c.annotations, istio)
      for (const [k, v] of Object.entries(c.expect)) assert.deepEqual((rules as unknown as Record<string, unknown>)[k], v, k)
      assert.equal(warnings.length, c.warnings?.length ?? 0, warnings.join('; '))
      c.warnings?.forEach((re, i) => assert.match(warnings[i]!, re))
    })
  }
})

/** A meshed pod on node1; each gets its own address unless told one (one IP names one pod). */
let lastHost = 0
function pod(
  name: string,
  over: {metadata?: PodJson['metadata']; spec?: PodJson['spec']; status?: PodJson['status']} = {},
): PodJson & {kind: string} {
  lastHost = (lastHost % 250) + 1
  return {
    kind: 'Pod',
    metadata: {name, namespace: 'ns', annotations: {'sidecar.istio.io/status': '{}'}, ...over.metadata},
    spec: {nodeName: 'node1', containers: [{name: 'app'}, {name: 'istio-proxy'}], ...over.spec},
    status: {phase: 'Running', podIP: `10.0.0.${lastHost}`, ...over.status},
  }
}

describe('pod selection', () => {
  it('keeps meshed pods of this node and says why the others were skipped', () => {
    const pods = [
      pod('meshed'),
      pod('native', {spec: {containers: [{name: 'app'}], initContainers: [{name: 'istio-proxy', restartPolicy: 'Always'}]}}),
      pod('plain-init', {spec: {containers: [{name: 'app'}], initContainers: [{name: 'istio-proxy'}]}}),
      pod('no-annotation', {metadata: {annotations: {}}}),
      pod('hostnet', {spec: {hostNetwork: true, containers: [{name: 'istio-proxy'}]}}),
      pod('done', {status: {phase: 'Succeeded'}}),
      pod('pending', {status: {podIP: undefined}}),
      pod('v6only', {status: {podIP: 'fd00::1', podIPs: [{ip: 'fd00::1'}]}}),
      pod('elsewhere', {spec: {nodeName: 'node2', containers: [{name: 'istio-proxy'}]}}),
    ]
    const s = selectMeshedPods(pods, 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => p.name),
      ['meshed', 'native', 'v6only'],
    )
    // an IPv6-only pod is known by its IPv6 address
    assert.deepEqual(
      s.meshed.map((p) => [p.ip, p.ip6]),
      [
        [pods[0]!.status!.podIP, undefined],
        [pods[1]!.status!.podIP, undefined],
        ['fd00::1', undefined],
      ],
    )
    assert.equal(s.otherNodes, 1)
    const reasons = Object.fromEntries(s.skipped.map((p) => [p.name, p.reason]))
    assert.match(reasons['plain-init']!, /no injected istio-proxy/)
    assert.match(reasons['no-annotation']!, /no injected istio-proxy/)
    assert.match(reasons.hostnet!, /host network/)
    assert.match(reasons.done!, /finished/)
    assert.match(reasons.pending!, /no IP address yet/)
  })

  it("leaves Istio's ambient pods to ztunnel, and says so", () => {
    const enrolled = pod('enrolled', {metadata: {annotations: {'ambient.istio.io/redirection': 'enabled'}}})
    const labelled = pod('labelled', {
      metadata: {annotations: {}, labels: {'istio.io/dataplane-mode': 'ambient'}},
      spec: {containers: [{name: 'app'}]},
    })
    // a sidecar wins over the label: ztunnel leaves such a pod alone
    const sidecarToo = pod('sidecar-too', {
      metadata: {annotations: {'sidecar.istio.io/status': '{}'}, labels: {'istio.io/dataplane-mode': 'ambient'}},
    })
    const s = selectMeshedPods([enrolled, labelled, sidecarToo], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => p.name),
      ['sidecar-too'],
    )
    assert.deepEqual(
      s.skipped.map((p) => [p.name, p.code]),
      [
        ['enrolled', 'ambient'],
        ['labelled', 'ambient'],
      ],
    )
    assert.match(s.skipped[0]!.reason, /ztunnel captures it/)
  })

  it('warns per pod about shared IPs, two proxies and addresses that are not IPs', () => {
    const first = pod('first', {status: {podIP: '10.9.0.1'}})
    const twin = pod('twin', {status: {podIP: '10.9.0.1'}})
    const twoProxies = pod('two-proxies', {spec: {containers: [{name: 'istio-proxy'}, {name: 'istio-proxy'}]}})
    const notIp = pod('not-ip', {status: {podIP: 'not-an-ip'}})
    const mixed = pod('mixed', {status: {podIP: 'not-an-ip', podIPs: [{ip: 'not-an-ip'}, {ip: '10.9.0.7'}]}})
    const s = selectMeshedPods([first, twin, twoProxies, notIp, mixed], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => [p.name, p.ip]),
      [
        ['first', '10.9.0.1'],
        ['two-proxies', twoProxies.status!.podIP],
        ['mixed', '10.9.0.7'],
      ],
    )
    const reasons = Object.fromEntries(s.skipped.map((p) => [p.name, p.reason]))
    assert.equal(reasons.twin, 'has the IP 10.9.0.1 of ns/first, registered first')
    assert.equal(reasons['not-ip'], 'has no valid IP address (status gives "not-an-ip")')
    const warnings = Object.fromEntries(s.meshed.map((p) => [p.name, p.warnings]))
    assert.deepEqual(warnings.first, ['ns/first: ns/twin claims the same IP 10.9.0.1 (left unregistered)'])
    assert.deepEqual(warnings['two-proxies'], [
      "ns/two-proxies: has 2 istio-proxy containers; the first one's user, group and DNS setting are used",
    ])
    assert.deepEqual(warnings.mixed, ['ns/mixed: status lists addresses that are not IPs ("not-an-ip"); registered as 10.9.0.7'])
  })

  it("gives a terminating pod's address to the pod that has it now, meshed or not, whichever is listed first", () => {
    const leaving = pod('leaving', {
      metadata: {
        name: 'leaving',
        namespace: 'ns',
        deletionTimestamp: '2026-12-06T10:00:00Z',
        annotations: {'sidecar.istio.io/status': '{}'},
      },
      status: {podIP: '10.9.0.1'},
    })
    const arrived = pod('arrived', {status: {podIP: '10.9.0.1'}})
    const plain = pod('plain', {spec: {nodeName: 'node1', containers: [{name: 'app'}]}, status: {podIP: '10.9.0.2'}})
    const leavingToo = pod('leaving-too', {
      metadata: {
        name: 'leaving-too',
        namespace: 'ns',
        deletionTimestamp: '2026-12-06T10:00:00Z',
        annotations: {'sidecar.istio.io/status': '{}'},
      },
      status: {podIP: '10.9.0.2'},
    })
    const s = selectMeshedPods([leaving, arrived, leavingToo, plain], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => p.name),
      ['arrived'],
    )
    const reasons = Object.fromEntries(s.skipped.map((p) => [p.name, p.reason]))
    assert.equal(reasons.leaving, "terminating, and its IP 10.9.0.1 is now ns/arrived's")
    assert.equal(reasons['leaving-too'], "terminating, and its IP 10.9.0.2 is now ns/plain's")
    // terminating with its address still its own: still captured until it is gone
    assert.deepEqual(
      selectMeshedPods([leaving], 'node1', istio).meshed.map((p) => p.name),
      ['leaving'],
    )
  })

  it('takes an IPv4-mapped address for the IPv4 address it is, and refuses addresses no pod can have, naming the pod', () => {
    const plain = pod('plain', {status: {podIP: '10.99.0.2'}})
    const mapped = pod('mapped', {status: {podIP: '::ffff:10.99.0.2'}})
    const both = pod('both', {status: {podIP: '10.99.0.3', podIPs: [{ip: '10.99.0.3'}, {ip: '::ffff:a63:3'}]}})
    const odd = ['127.0.0.1', '0.0.0.0', '255.255.255.255', '::1', '::', '224.0.0.1', 'ff02::1', '169.254.1.1', 'fe80::1'].map((ip, i) =>
      pod(`odd${i}`, {status: {podIP: ip}}),
    )
    const s = selectMeshedPods([plain, mapped, both, ...odd], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => [p.name, p.ip, p.ip6]),
      [
        ['plain', '10.99.0.2', undefined],
        ['both', '10.99.0.3', undefined],
      ],
    )
    const reasons = Object.fromEntries(s.skipped.map((p) => [p.name, p.reason]))
    assert.equal(reasons.mapped, 'has the IP 10.99.0.2 of ns/plain, registered first')
    assert.equal(reasons.odd0, 'has no valid IP address (status gives "127.0.0.1": a loopback address)')
    assert.equal(reasons.odd1, 'has no valid IP address (status gives "0.0.0.0": an unspecified address)')
    assert.equal(reasons.odd2, 'has no valid IP address (status gives "255.255.255.255": the broadcast address)')
    assert.equal(reasons.odd3, 'has no valid IP address (status gives "::1": a loopback address)')
    assert.equal(reasons.odd4, 'has no valid IP address (status gives "::": an unspecified address)')
    for (const i of [5, 6]) assert.match(reasons[`odd${i}`]!, /: a multicast address\)$/)
    for (const i of [7, 8]) assert.match(reasons[`odd${i}`]!, /: a link-local address\)$/)
  })

  it('prefixes annotation warnings with the pod', () => {
    const s = selectMeshedPods(
      [pod('p', {metadata: {annotations: {'sidecar.istio.io/status': '{}', [ANNOTATIONS.excludeOutboundPorts]: 'x'}}})],
      'node1',
      istio,
    )
    assert.match(
      s.meshed[0]!.warnings[0]!,
      /^ns\/p: traffic.sidecar.istio.io\/excludeOutboundPorts: 1 entry is not a port \(1-65535\) \('x'\)/,
    )
  })

  it('keeps inbound capture off the interfaces Istio excludes, and says what it cannot match', () => {
    const withAnnotations = (name: string, a: Record<string, string>) =>
      pod(name, {metadata: {annotations: {'sidecar.istio.io/status': '{}', ...a}}})
    const s = selectMeshedPods(
      [
        withAnnotations('plain', {}),
        withAnnotations('excluded', {[ANNOTATIONS.excludeInterfaces]: ' net1, net2 ,net1'}),
        // the current name wins over the deprecated one, as Istio reads them
        withAnnotations('vm', {
          [ANNOTATIONS.rerouteVirtualInterfaces]: 'k6t-eth0',
          [ANNOTATIONS.kubevirtInterfaces]: 'tap0',
          [ANNOTATIONS.excludeInterfaces]: 'net1',
        }),
        withAnnotations('old-vm', {[ANNOTATIONS.kubevirtInterfaces]: 'tap0'}),
        withAnnotations('bad', {[ANNOTATIONS.excludeInterfaces]: 'net1,0bad,has space,much-too-long-name,a/b'}),
      ],
      'node1',
      istio,
    )
    const of = (name: string) => s.meshed.find((p) => p.name === name)!
    assert.deepEqual(of('plain').noInboundCapture, [])
    assert.deepEqual(of('plain').warnings, [])
    assert.deepEqual(of('excluded').noInboundCapture, ['net1', 'net2'])
    assert.match(
      of('excluded').warnings.join('\n'),
      /^ns\/excluded: traffic.sidecar.istio.io\/excludeInterfaces: inbound on net1, net2 is left alone, as Istio does; outbound connections routed through them still go to the sidecar/,
    )
    assert.deepEqual(of('vm').noInboundCapture, ['net1'])
    assert.match(
      of('vm').warnings.join('\n'),
      /istio.io\/reroute-virtual-interfaces: TCP the virtual machine sends through k6t-eth0 is captured only by istio-init's rules/,
    )
    assert.deepEqual(of('old-vm').noInboundCapture, [])
    assert.match(
      of('old-vm').warnings.join('\n'),
      /traffic.sidecar.istio.io\/kubevirtInterfaces: TCP the virtual machine sends through tap0/,
    )
    // names Istio would refuse keep the capture on (more is captured), one warning for all of them
    assert.deepEqual(of('bad').noInboundCapture, ['net1'])
    assert.match(
      of('bad').warnings[0]!,
      /excludeInterfaces: 4 entries are not an interface name \('0bad', 'has space', 'much-too-long-name', \.\.\.\); ignored, so more is captured/,
    )
  })

  it('skips gateways and pods that intercept nothing or by TPROXY, saying why', () => {
    const mode = (m: string) =>
      pod(`mode-${m}`, {metadata: {annotations: {'sidecar.istio.io/status': '{}', 'sidecar.istio.io/interceptionMode': m}}})
    const gateway = pod('gateway', {
      spec: {nodeName: 'node1', containers: [{name: 'istio-proxy', args: ['proxy', 'router', '--domain', 'x']}]},
    })
    const userns = pod('userns', {spec: {nodeName: 'node1', hostUsers: false, containers: [{name: 'istio-proxy'}]}})
    const s = selectMeshedPods([gateway, mode('NONE'), mode('TPROXY'), mode('REDIRECT'), mode('bogus'), userns], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => p.name),
      ['mode-REDIRECT'],
    )
    const reasons = Object.fromEntries(s.skipped.map((p) => [p.name, p.reason]))
    assert.match(reasons.gateway!, /a gateway \(the proxy runs as a router\)/)
    assert.match(reasons['mode-NONE']!, /interceptionMode NONE/)
    assert.match(reasons['mode-TPROXY']!, /TPROXY is not supported/)
    assert.match(reasons['mode-bogus']!, /interceptionMode "bogus" is unknown/)
    assert.match(reasons.userns!, /user namespace \(hostUsers: false\)/)
  })

  it("takes the proxy's user and group from its container as Istio's CNI does: root and the pod's own ids are never the proxy's", () => {
    const withIds = (name: string, container: object, podCtx: object = {}) =>
      pod(name, {spec: {nodeName: 'node1', securityContext: podCtx, containers: [{name: 'app'}, {name: 'istio-proxy', ...container}]}})
    const s = selectMeshedPods(
      [
        withIds('spec', {securityContext: {runAsUser: 1500, runAsGroup: 1501}}),
        // the app's ids, for every container without its own
        withIds('pod-level', {}, {runAsUser: 2000, runAsGroup: 2001}),
        // capNetBindService: the injector runs the proxy as root in group 1337
        withIds('root', {securityContext: {runAsUser: 0, runAsGroup: 1337}}, {runAsUser: 0, runAsGroup: 0}),
        withIds('default', {}),
        withIds('bad', {securityContext: {runAsUser: -1, runAsGroup: '7'}}),
      ],
      'node1',
      istio,
    )
    const ids = Object.fromEntries(s.meshed.map((p) => [p.name, [p.rules.proxyUid, p.rules.proxyGid]]))
    assert.deepEqual(ids, {spec: [1500, 1501], 'pod-level': [1337, 1337], root: [1337, 1337], default: [1337, 1337], bad: [1337, 1337]})
  })

  it("reads DNS capture from the proxy's ISTIO_META_DNS_CAPTURE or the pod's proxy config, as Istio parses booleans", () => {
    const env = (name: string, value: string) =>
      pod(name, {
        spec: {
          nodeName: 'node1',
          containers: [
            {name: 'app', env: [{name: 'ISTIO_META_DNS_CAPTURE', value: 'true'}]},
            {name: 'istio-proxy', env: [{name: 'ISTIO_META_DNS_CAPTURE', value}]},
          ],
        },
      })
    const config = (name: string, text: string, value = 'false') => {
      const p = env(name, value)
      p.metadata!.annotations!['proxy.istio.io/config'] = text
      return p
    }
    const s = selectMeshedPods(
      [
        env('on', 'true'),
        env('on-go-style', 'T'),
        env('off', 'false'),
        env('nonsense', 'yes please'),
        pod('none'),
        config('annotation', 'proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: "true"\n'),
        config('annotation-off', '{"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "false"}}', 'true'),
        config('broken', 'proxyMetadata: [ISTIO_META_DNS_CAPTURE', 'true'),
      ],
      'node1',
      istio,
    )
    const on = Object.fromEntries(s.meshed.map((p) => [p.name, p.dnsCapture]))
    // the app container's env is not the proxy's
    assert.deepEqual(on, {
      on: true,
      'on-go-style': true,
      off: false,
      nonsense: false,
      none: false,
      annotation: true,
      'annotation-off': false,
      broken: true,
    })
    const broken = s.meshed.find((p) => p.name === 'broken')!
    assert.equal(broken.warnings.length, 1)
    assert.match(
      broken.warnings[0]!,
      /^ns\/broken: proxy.istio.io\/config is not valid YAML; DNS capture taken from the proxy's ISTIO_META_DNS_CAPTURE alone/,
    )
  })

  it('accepts a PodList or a single Pod, as JSON or YAML, and rejects anything else in one line', async () => {
    assert.equal((await parsePodList(JSON.stringify({kind: 'PodList', items: [pod('a')]}), 'f')).length, 1)
    assert.equal((await parsePodList(JSON.stringify(pod('a')), 'f')).length, 1)
    const yaml = `apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: y, namespace: ns, annotations: {sidecar.istio.io/status: "{}"}}
  spec: {nodeName: node1, containers: [{name: app}, {name: istio-proxy}]}
  status: {phase: Running, podIP: 10.0.0.9}
`
    const fromYaml = await parsePodList(yaml, 'pods.yaml')
    assert.deepEqual(
      selectMeshedPods(fromYaml, 'node1', istio).meshed.map((p) => p.ip),
      ['10.0.0.9'],
    )
    await assert.rejects(parsePodList('{"items":', 'pods.json'), /pods.json is not valid JSON/)
    await assert.rejects(parsePodList('items: [unclosed', 'pods.yaml'), /pods.yaml is not valid JSON or YAML/)
    await assert.rejects(parsePodList('{"kind":"Service"}', 'pods.json'), /not a Kubernetes PodList/)
    await assert.rejects(parsePodList('just text', 'pods.txt'), /not a Kubernetes PodList/)
  })

  it('survives malformed items', () => {
    // malformed on purpose: what a broken pods file can hold
    const s = selectMeshedPods([null, 5, {spec: null}, pod('ok')], 'node1', istio)
    assert.deepEqual(
      s.meshed.map((p) => p.name),
      ['ok'],
    )
  })
})

describe('istio-init arguments', () => {
  // as the injector writes them without Istio's CNI
  const ARGS = [
    'istio-iptables',
    '-p',
    '15001',
    '-z',
    '15006',
    '-u',
    '1337',
    '-m',
    'REDIRECT',
    '-i',
    '10.0.0.0/8',
    '-x',
    '',
    '-b',
    '*',
    '-d',
    '15090,15021,15020',
    '--log_output_level=default:info',
  ]
  const withInit = (name: string, init: object, annotations: Record<string, string> = {}, proxy: object = {}) =>
    pod(name, {
      metadata: {annotations: {'sidecar.istio.io/status': '{}', ...annotations}},
      spec: {nodeName: 'node1', initContainers: [init], containers: [{name: 'app'}, {name: 'istio-proxy', ...proxy}]},
    })

  it("reads istio-iptables' flags as pflag does, and refuses what is not its grammar", () => {
    const flags = parseFlags([
      '/usr/local/bin/istio-iptables',
      '-p',
      '15001',
      '-u1500',
      '--proxy-gid=7',
      '--istio-service-cidr',
      '*',
      '-x',
      '',
      '--run-validation',
      '--skip-rule-apply',
      '-n',
    ])
    assert.ok(flags instanceof Map)
    assert.deepEqual(Object.fromEntries(flags), {
      'envoy-port': '15001',
      'proxy-uid': '1500',
      'proxy-gid': '7',
      'istio-service-cidr': '*',
      'istio-service-exclude-cidr': '',
      'run-validation': 'true',
      'skip-rule-apply': 'true',
      n: 'true',
    })
    assert.deepEqual(parseFlags(['/usr/local/bin/pilot-agent', 'istio-iptables', '-u', '7']), new Map([['proxy-uid', '7']]))
    assert.equal(parseFlags(['istio-iptables', '-u', '7', 'istio-iptables']), "unexpected argument 'istio-iptables'")
    assert.equal(parseFlags(['istio-iptables', '--bogus', 'x']), 'unknown flag --bogus')
    assert.equal(parseFlags(['istio-iptables', '-i', '*', 'stray']), "unexpected argument 'stray'")
    assert.equal(parseFlags(['istio-iptables', '-i']), '-i has no value')
  })

  it('takes the settings istio-init applied over the annotations, which hold only what the pod set', () => {
    const s = selectMeshedPods(
      [
        // the mesh-wide include range reached istio-init only
        withInit('global-range', {name: 'istio-init', args: ARGS}, {[ANNOTATIONS.excludeOutboundPorts]: '22'}),
        // the flags win over an annotation changed after the pod started
        withInit('changed', {name: 'istio-init', args: ARGS}, {[ANNOTATIONS.includeOutboundIPRanges]: '*'}),
        // istio-iptables reads a flag not given from its environment
        withInit('env', {name: 'istio-init', args: ARGS, env: [{name: 'ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE', value: '3306'}]}),
        // with Istio's CNI its annotations are the settings: the validation container's flags are not read
        withInit('cni', {name: 'istio-validation', args: [...ARGS, '--run-validation', '--skip-rule-apply']}),
        withInit('mesh-tproxy', {name: 'istio-init', args: ARGS.map((a) => (a === 'REDIRECT' ? 'TPROXY' : a))}),
        // a mesh config with other listener ports: merbridge would send every connection where nothing listens
        withInit('other-outbound', {name: 'istio-init', args: ARGS.map((a) => (a === '15001' ? '15002' : a))}),
        withInit('other-inbound', {
          name: 'istio-init',
          args: ['istio-iptables', '-i', '*'],
          env: [{name: 'INBOUND_CAPTURE_PORT', value: '15016'}],
        }),
        withInit('bad', {name: 'istio-init', args: [...ARGS, '--what', 'x']}, {[ANNOTATIONS.includeOutboundIPRanges]: '10.1.0.0/16'}),
      ],
      'node1',
      istio,
    )
    const of = (name: string) => s.meshed.find((p) => p.name === name)!
    assert.deepEqual(
      [of('global-range').rules.outAllCidrs, of('global-range').rules.outIncludeCidrs, of('global-range').rules.outExcludePorts],
      [false, [{ip: '10.0.0.0', prefix: 8}], [22]],
    )
    assert.deepEqual([of('changed').rules.outAllCidrs, of('changed').rules.outIncludeCidrs], [false, [{ip: '10.0.0.0', prefix: 8}]])
    assert.deepEqual(of('env').rules.outExcludePorts, [3306])
    assert.equal(of('cni').rules.outAllCidrs, true)
    assert.equal(s.skipped.find((p) => p.name === 'mesh-tproxy')?.code, 'tproxy')
    assert.equal(
      s.skipped.find((p) => p.name === 'other-outbound')?.reason,
      "istio-init sends to ports 15002/15006 (the mesh config's), merbridge to 15001/15006: left to istio-init",
    )
    assert.equal(s.skipped.find((p) => p.name === 'other-inbound')?.code, 'other-ports')
    assert.deepEqual(of('bad').rules.outIncludeCidrs, [{ip: '10.1.0.0', prefix: 16}])
    assert.match(
      of('bad').warnings.join('\n'),
      /ns\/bad: istio-init's arguments cannot be read \(unknown flag --what\); its annotations are used instead/,
    )
    for (const name of ['global-range', 'changed', 'env', 'cni']) assert.deepEqual(of(name).warnings, [], name)
  })

  it("captures DNS as the pod's installer does: Istio's CNI to any address, istio-init to resolv.conf's servers unless told otherwise", () => {
    const dnsEnv = [{name: 'ISTIO_META_DNS_CAPTURE', value: 'true'}]
    const proxy = {env: dnsEnv}
    const s = selectMeshedPods(
      [
        withInit('cni', {name: 'istio-validation', args: ARGS}, {}, proxy),
        withInit('init', {name: 'istio-init', args: ARGS, env: dnsEnv}, {}, proxy),
        withInit('init-all', {name: 'istio-init', args: [...ARGS, '--capture-all-dns'], env: dnsEnv}, {}, proxy),
        // istio-init's own environment is what istio-iptables read
        withInit('init-off', {name: 'istio-init', args: ARGS, env: [{name: 'ISTIO_META_DNS_CAPTURE', value: 'false'}]}, {}, proxy),
        withInit('init-flag', {name: 'istio-init', args: [...ARGS, '--redirect-dns=true']}),
        // arguments it cannot read: any address (fail closed)
        withInit('init-bad', {name: 'istio-init', args: [...ARGS, '--what'], env: dnsEnv}, {}, proxy),
      ],
      'node1',
      istio,
    )
    const dns = Object.fromEntries(s.meshed.map((p) => [p.name, [p.dnsCapture, p.dnsToAny]]))
    assert.deepEqual(dns, {
      cni: [true, true],
      init: [true, false],
      'init-all': [true, true],
      'init-off': [false, false],
      'init-flag': [true, false],
      'init-bad': [true, true],
    })
  })

  it("excludes outbound port 15020 where Istio's CNI does: a pod that names no excluded outbound port", () => {
    const s = selectMeshedPods(
      [
        withInit('cni', {name: 'istio-validation', args: ARGS}),
        withInit('cni-named', {name: 'istio-validation', args: ARGS}, {[ANNOTATIONS.excludeOutboundPorts]: '22'}),
        withInit('init', {name: 'istio-init', args: ARGS}),
      ],
      'node1',
      istio,
    )
    const ports = Object.fromEntries(s.meshed.map((p) => [p.name, p.rules.outExcludePorts]))
    assert.deepEqual(ports, {cni: [15020], 'cni-named': [22], init: []})
  })

  it('captures native IPv6 only where Istio writes ip6tables rules: an IPv6-only pod, or ISTIO_DUAL_STACK with an IPv6 address', () => {
    const dual = {podIP: '10.0.0.9', podIPs: [{ip: '10.0.0.9'}, {ip: 'fd00::9'}]}
    const withStatus = (name: string, status: object, proxy: object = {}, init?: object) =>
      pod(name, {
        status: {phase: 'Running', ...status},
        spec: {nodeName: 'node1', ...(init ? {initContainers: [init]} : {}), containers: [{name: 'app'}, {name: 'istio-proxy', ...proxy}]},
      })
    const on = {env: [{name: 'ISTIO_DUAL_STACK', value: 'true'}]}
    const s = selectMeshedPods(
      [
        withStatus('dual', {...dual, podIP: '10.0.0.9'}, on),
        withStatus('dual-off', {podIP: '10.0.0.10', podIPs: [{ip: '10.0.0.10'}, {ip: 'fd00::10'}]}),
        withStatus('v6only', {podIP: 'fd00::11', podIPs: [{ip: 'fd00::11'}]}),
        withStatus('v4only', {podIP: '10.0.0.12', podIPs: [{ip: '10.0.0.12'}]}, on),
        // istio-init's own environment is what it read
        withStatus('init-off', {podIP: '10.0.0.13', podIPs: [{ip: '10.0.0.13'}, {ip: 'fd00::13'}]}, on, {
          name: 'istio-init',
          args: ['istio-iptables', '-i', '*'],
          env: [{name: 'ISTIO_DUAL_STACK', value: 'false'}],
        }),
      ],
      'node1',
      istio,
    )
    const v6 = Object.fromEntries(s.meshed.map((p) => [p.name, [p.ip6 ?? null, p.rules.noIpv6 ?? false]]))
    assert.deepEqual(v6, {
      dual: ['fd00::9', false],
      'dual-off': [null, true],
      v6only: [null, false],
      v4only: [null, true],
      'init-off': [null, true],
    })
  })

  it("reads istio-iptables' environment-only settings: owner groups and the loopback range, failing closed", () => {
    const env = (...pairs: [string, string][]) => ({name: 'istio-init', args: ARGS, env: pairs.map(([name, value]) => ({name, value}))})
    const s = selectMeshedPods(
      [
        withInit('only', env(['ISTIO_OUTBOUND_OWNER_GROUPS', '202,2000,202'])),
        // '' is an include list of no group: nobody's outbound is captured
        withInit('nobody', env(['ISTIO_OUTBOUND_OWNER_GROUPS', ''])),
        // the exclude list is read only with '*' (the default)
        withInit('except', env(['ISTIO_OUTBOUND_OWNER_GROUPS', '*'], ['ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE', '888,,ftp'])),
        withInit('include-wins', env(['ISTIO_OUTBOUND_OWNER_GROUPS', '5'], ['ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE', '888'])),
        // a name is looked up in istio-init's image: every group captured
        withInit('named', env(['ISTIO_OUTBOUND_OWNER_GROUPS', 'java,202'])),
        withInit('too-many', env(['ISTIO_OUTBOUND_OWNER_GROUPS', Array.from({length: 17}, (_, i) => i + 1).join(',')])),
        withInit('from-elsewhere', {
          name: 'istio-init',
          args: ARGS,
          env: [{name: 'ISTIO_OUTBOUND_OWNER_GROUPS', valueFrom: {configMapKeyRef: {name: 'x', key: 'y'}}}],
        }),
        withInit('loopback', env(['ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR', '127.0.0.1/8'])),
        withInit('loopback-default', env(['ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR', '127.0.0.1/32'])),
        withInit('loopback-bad', env(['ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR', '10.0.0.0/8'])),
        withInit('loopback-wide', env(['ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR', '127.0.0.0/7'])),
        // Istio's CNI fills them from its own environment, not the pod's: annotations are not read for them
        withInit(
          'cni',
          {name: 'istio-validation', args: ARGS},
          {ISTIO_OUTBOUND_OWNER_GROUPS: '5', ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: '127.0.0.0/8'},
        ),
      ],
      'node1',
      istio,
    )
    const of = (name: string) => s.meshed.find((p) => p.name === name)!
    const rules = Object.fromEntries(s.meshed.map((p) => [p.name, [p.rules.ownerGroups ?? null, p.rules.loopback ?? null]]))
    assert.deepEqual(rules, {
      only: [{only: true, gids: [202, 2000]}, null],
      nobody: [{only: true, gids: []}, null],
      except: [{only: false, gids: [888]}, null],
      'include-wins': [{only: true, gids: [5]}, null],
      named: [null, null],
      'too-many': [null, null],
      'from-elsewhere': [null, null],
      loopback: [null, {ip: '127.0.0.1', prefix: 8}],
      'loopback-default': [null, null],
      'loopback-bad': [null, null],
      'loopback-wide': [null, null],
      cni: [null, null],
    })
    assert.match(
      of('except').warnings.join('\n'),
      /ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: 'ftp' is not a group id .*; ignored, so more is captured/,
    )
    assert.match(
      of('named').warnings.join('\n'),
      /ISTIO_OUTBOUND_OWNER_GROUPS: 'java' is not a group id .*every group's outbound is captured instead \(fail closed\)/,
    )
    assert.match(of('too-many').warnings.join('\n'), /17 groups, the datapath holds 16; every group's outbound is captured instead/)
    assert.match(of('from-elsewhere').warnings.join('\n'), /ISTIO_OUTBOUND_OWNER_GROUPS comes from elsewhere \(valueFrom\)/)
    assert.match(
      of('loopback-bad').warnings.join('\n'),
      /ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: '10.0.0.0\/8' is not an IPv4 loopback range .*127.0.0.1\/32 is used/,
    )
    assert.match(of('loopback-wide').warnings.join('\n'), /LOOPBACK_CIDR: '127.0.0.0\/7'/)
    for (const name of ['only', 'nobody', 'include-wins', 'loopback', 'loopback-default', 'cni'])
      assert.deepEqual(of(name).warnings, [], name)
  })

  it("takes the proxy's ids from -u and -g as istio-iptables does: -g defaults to -u, and the first of a list", () => {
    const args = (...ids: string[]) => ({name: 'istio-init', args: ['istio-iptables', '-i', '*', ...ids]})
    const s = selectMeshedPods(
      [
        // the injector tells istio-init its own uid whatever the container was given: 1337 for a proxy run as root
        withInit('root', args('-u', '1337'), {}, {securityContext: {runAsUser: 0, runAsGroup: 1337}}),
        withInit('uid-only', args('-u', '1500')),
        withInit('both', args('-u', '1500', '-g', '1600')),
        withInit('none', args()),
        withInit('lists', args('-u', '1500,1501', '-g', '1600')),
      ],
      'node1',
      istio,
    )
    const ids = Object.fromEntries(s.meshed.map((p) => [p.name, [p.rules.proxyUid, p.rules.proxyGid]]))
    assert.deepEqual(ids, {root: [1337, 1337], 'uid-only': [1500, 1500], both: [1500, 1600], none: [1337, 1337], lists: [1500, 1600]})
    assert.match(
      s.meshed.find((p) => p.name === 'lists')!.warnings.join('\n'),
      /istio-init lists several proxy ids \(-u 1500,1501, -g 1600\); only 1500\/1600 are the proxy's/,
    )
  })
})

describe("a pod's resolvers", () => {
  const meshed = (dnsCapture: boolean, dnsToAny = false): MeshedPod => ({
    namespace: 'ns',
    name: 'p',
    ip: '10.0.0.1',
    dnsCapture,
    dnsToAny,
    rules: {...CAPTURE_ALL},
    noInboundCapture: [],
    warnings: [],
  })

  it("captures DNS to any address where Istio's CNI set the pod up, reading no resolv.conf", () => {
    const ns = {inode: 1, path: '/proc/1/ns/net', addresses: [], linkLocal: [], pids: [1]}
    assert.deepEqual(
      podRulesWithDns(meshed(true, true), ns, () => assert.fail('resolv.conf read')),
      {rules: {...CAPTURE_ALL, dns: {all: true, servers: []}}},
    )
  })

  it('reads nameservers as a resolver does: addresses only, a zone index dropped, each once', () => {
    assert.deepEqual(
      parseResolvConf(
        '# comment\nsearch ns.svc.cluster.local\nnameserver 10.96.0.10\nnameserver  fe80::1%eth0\nnameserver bogus\nnameserver 10.96.0.10\noptions ndots:5\n',
      ),
      ['10.96.0.10', 'fe80::1'],
    )
  })

  it("captures DNS to the resolvers of the pod's resolv.conf", () => {
    const ns = {inode: 1, path: '/proc/1/ns/net', addresses: [], linkLocal: [], pids: [1]}
    assert.deepEqual(
      podRulesWithDns(meshed(true), ns, () => ({servers: ['10.96.0.10', 'fd00::a'], from: '/proc/1/root/etc/resolv.conf'})),
      {rules: {...CAPTURE_ALL, dns: {all: false, servers: ['10.96.0.10', 'fd00::a']}}},
    )
  })

  it('fails closed when the resolvers are unknown or too many, and follows Istio when there are none', () => {
    const ns = {inode: 1, path: '/proc/1/ns/net', addresses: [], linkLocal: [], pids: []}
    const unreadable = podRulesWithDns(meshed(true), ns, () => undefined)
    assert.deepEqual(unreadable.rules.dns, {all: true, servers: []})
    assert.match(
      unreadable.warning ?? '',
      /^ns\/p: DNS capture: its resolv.conf cannot be read; capturing port 53 to any address \(fail closed\)/,
    )
    const many = podRulesWithDns(meshed(true), ns, () => ({servers: ['1.1.1.1', '1.1.1.2', '1.1.1.3', '1.1.1.4', '1.1.1.5'], from: 'f'}))
    assert.deepEqual(many.rules.dns, {all: true, servers: []})
    assert.match(many.warning ?? '', /5 nameservers, the datapath holds 4/)
    const none = podRulesWithDns(meshed(true), ns, () => ({servers: [], from: 'f'}))
    assert.equal(none.rules.dns, undefined)
    assert.match(none.warning ?? '', /names no nameserver, so Istio captures no DNS either/)
    assert.deepEqual(
      podRulesWithDns(meshed(false), ns, () => undefined),
      {rules: CAPTURE_ALL},
    )
  })

  it("reads resolv.conf through the root of one of the namespace's processes", () => {
    const own = namespaceResolvers({inode: 1, path: '/proc/self/ns/net', addresses: [], linkLocal: [], pids: [process.pid]})
    assert.equal(own?.from, `/proc/${process.pid}/root/etc/resolv.conf`)
    assert.deepEqual(own.servers, parseResolvConf(readFileSync('/etc/resolv.conf', 'utf8')))
    assert.equal(namespaceResolvers({inode: 1, path: '/x', addresses: [], linkLocal: [], pids: [2 ** 30]}), undefined)
  })
})

describe('hostile input', () => {
  it('costs one bounded warning for 10,000 ports and a 256 KiB annotation, whatever they hold', () => {
    const many = Array.from({length: 10_000}, (_, i) => String(1 + (i % 60_000))).join(',')
    const huge = `\u001b[2J\u001b[31m${'x'.repeat(256 * 1024)}`
    const {rules, warnings} = rulesFromAnnotations(
      {[ANNOTATIONS.excludeOutboundPorts]: many, [ANNOTATIONS.statusPort]: huge, [ANNOTATIONS.excludeInboundPorts]: `${huge},${huge}`},
      istio,
    )
    assert.equal(rules.outExcludePorts.length, 16)
    assert.equal(warnings.length, 3, warnings.join('\n'))
    for (const w of warnings) {
      assert.ok(w.length < 400, `a warning of ${w.length} characters`)
      assert.ok(!w.includes('\u001b'), 'no terminal escape sequence is echoed')
    }
    assert.match(warnings.join('\n'), /\\x1b\[2J\\x1b\[31mx+\.\.\. \(262153 characters\)/)
    assert.match(warnings.join('\n'), /excludeInboundPorts: 2 entries are not a port/)
  })

  it('prints pod names from a pods file safely', () => {
    const s = selectMeshedPods([pod('evil\u001b]0;owned\u0007', {metadata: {namespace: 'x'.repeat(1000)}})], 'node1', istio)
    const p = s.meshed[0]!
    assert.equal(p.name, 'evil\\x1b]0;owned\\x07')
    assert.ok(p.namespace.length < 300)
  })
})

describe('printable', () => {
  it('escapes control characters and cuts long text, saying how long it was', () => {
    assert.equal(printable('a\tb\u001b[0m\u009b'), 'a\\x09b\\x1b[0m\\x9b')
    assert.equal(printable('x'.repeat(50), 10), 'xxxxxxxxxx... (50 characters)')
    assert.equal(printable('fine'), 'fine')
  })
})

describe('namespace addresses', () => {
  it('reads global IPv6 addresses from if_inet6, leaving out loopback and link-local ones, and link-local ones apart', () => {
    const text =
      'fd770000000000000000000000000009 02 40 00 80     eth0\nfe80000000000000b4d2fffffe0c0d0e 02 40 20 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n'
    assert.deepEqual(parseIfInet6(text), ['fd77::9'])
    assert.deepEqual(parseIfInet6(text, '20'), ['fe80::b4d2:ffff:fe0c:d0e'])
    assert.equal(normalIp('fd77:0:0::0009'), 'fd77::9')
    assert.equal(normalIp('10.0.0.1'), '10.0.0.1')
  })
})

describe('watch loop decisions', () => {
  const backoff = {initialMs: 500, maxMs: 4000}
  const fresh = {needList: false, delayMs: 500}

  it('lists again at once after 410 Gone, and says so', () => {
    const next = afterRound(fresh, {kind: 'gone'}, backoff)
    assert.deepEqual(next, {
      state: {needList: true, delayMs: 500},
      waitMs: 0,
      report: {message: 'the watch fell behind (410 Gone); listing again', retryInMs: 0},
    })
  })

  it('backs off on failures, doubling up to the maximum, and keeps a pending list pending', () => {
    let state = {needList: true, delayMs: 500}
    const waits: number[] = []
    for (let i = 0; i < 5; i++) {
      const next = afterRound(state, {kind: 'failed', message: 'connection refused'}, backoff)
      assert.equal(next.report?.message, 'connection refused')
      assert.equal(next.report.retryInMs, next.waitMs)
      waits.push(next.waitMs)
      state = next.state
    }
    assert.deepEqual(waits, [500, 1000, 2000, 4000, 4000])
    assert.equal(state.needList, true, 'the list that failed is tried again')
  })

  it('watches again at once after a stream the server closed, and backs off from streams that end at once', () => {
    const long = afterRound({needList: false, delayMs: 4000}, {kind: 'ended', lastedMs: 300_000}, backoff)
    assert.deepEqual(long, {state: {needList: false, delayMs: 500}, waitMs: 0})
    const short = afterRound(fresh, {kind: 'ended', lastedMs: 20}, backoff)
    assert.deepEqual(short, {state: {needList: false, delayMs: 1000}, waitMs: 500})
    assert.equal(short.report, undefined, 'a closed stream is not an error')
  })
})

describe("a pod's files, read as the pod sees them", () => {
  it('resolves links inside the root, never out of it, and reads only bounded regular files', () => {
    const root = mkdtempSync(join(tmpdir(), 'mb-root-'))
    try {
      mkdirSync(join(root, 'etc'))
      mkdirSync(join(root, 'run', 'resolve'), {recursive: true})
      writeFileSync(join(root, 'run', 'resolve', 'stub.conf'), 'nameserver 10.96.0.10\n')
      // an absolute link, as systemd-resolved makes: inside the root, not the node's /run
      symlinkSync('/run/resolve/stub.conf', join(root, 'etc', 'resolv.conf'))
      assert.equal(resolveInRoot(root, '/etc/resolv.conf'), join(root, 'run', 'resolve', 'stub.conf'))
      assert.equal(readPodFile(root, '/etc/resolv.conf', 1024), 'nameserver 10.96.0.10\n')
      // .. and links climbing out stay at the root
      symlinkSync('../../../../../run/resolve/stub.conf', join(root, 'etc', 'up'))
      assert.equal(resolveInRoot(root, '/etc/up'), join(root, 'run', 'resolve', 'stub.conf'))
      symlinkSync('/etc/hostname', join(root, 'etc', 'node-file'))
      assert.equal(readPodFile(root, '/etc/node-file', 1024), undefined, "the node's /etc/hostname is not the pod's")
      // a loop, a FIFO, a device, a folder, a file too large: unreadable, at once
      symlinkSync('/etc/loop', join(root, 'etc', 'loop'))
      assert.equal(readPodFile(root, '/etc/loop', 1024), undefined)
      execFileSync('mkfifo', [join(root, 'etc', 'fifo')])
      assert.equal(readPodFile(root, '/etc/fifo', 1024), undefined)
      symlinkSync('/dev/zero', join(root, 'etc', 'zero'))
      mkdirSync(join(root, 'dev'))
      assert.equal(readPodFile(root, '/etc/zero', 1024), undefined, 'no /dev/zero in this root')
      assert.equal(readPodFile('/', '/dev/zero', 1024), undefined, 'a device is not read')
      assert.equal(readPodFile(root, '/etc', 1024), undefined)
      writeFileSync(join(root, 'etc', 'big'), 'x'.repeat(2048))
      assert.equal(readPodFile(root, '/etc/big', 1024), undefined)
    } finally {
      rmSync(root, {recursive: true, force: true})
    }
  })
})
