// Interception equivalence: every case of the matrix is run under Istio's own iptables rules
// (istio-init's, generated from the same annotations and spec merbridge reads), under merbridge
// with no iptables rules in the pods, and under both. For each connection the matrix records which
// sidecars it passed (by the sessions each haproxy listener accepted), what SO_ORIGINAL_DST they
// were told, and whose address the destination app saw. The columns must be identical.
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {execa} from 'execa'
import type {DnsFamily, DnsMode} from '../../src/lab/dns.js'
import {
  APP_PORT,
  DNS_ANSWERS,
  Lab,
  type LabPodSpec,
  type RawGetMode,
  NODE,
  NODE_IP,
  NODE_IP6,
  REMOTE,
  REMOTE_IP,
  REMOTE_IP6,
  REMOTE_IP_OTHER,
  SUBNET,
} from '../../src/lab/lab.js'
import type {LabProcess} from '../../src/lab/process.js'
import {parseSidecarLog} from '../../src/lab/sidecar.js'
import {SYSTEM_PYTHON} from '../../src/lab/sidecar6.js'
import {PROFILES} from '../../src/mesh/profiles.js'
import {cli, kernelSkipReason, MATRIX_QUICK, uniqueInstall, suiteTimeout, removeLab} from '../helpers.js'

const skip = kernelSkipReason(['bpftool', 'clang', 'ip', 'haproxy', 'iptables-restore', 'ip6tables-restore', 'setpriv'], [SYSTEM_PYTHON])

const ip = (i: number) => `${SUBNET}.${i + 2}`
// pod order fixes the addresses: a .2, b .3, c .4, e .5, i .6, g .7, n .8, l .9 (s: fd77::a only), r .11, m .12, k .13, v .14,
// o .15, x .16, h .17, p .18, q .19, z .20
// a excludes outbound port 8081 and c's address, and its proxy captures DNS; b excludes inbound
// port 8082; i sends to its sidecar only b's address and port 8081, and never c's address
const PODS: LabPodSpec[] = [
  {
    name: 'a',
    meshed: true,
    dnsCapture: true,
    istioInit: {},
    annotations: {
      'traffic.sidecar.istio.io/excludeOutboundPorts': '8081',
      'traffic.sidecar.istio.io/excludeOutboundIPRanges': `${ip(2)}/32`,
    },
  },
  {name: 'b', meshed: true, annotations: {'traffic.sidecar.istio.io/excludeInboundPorts': '8082'}},
  {name: 'c', meshed: false},
  {name: 'e', meshed: true, proxy: {uid: 1500, gid: 1500}},
  {
    name: 'i',
    meshed: true,
    annotations: {
      'traffic.sidecar.istio.io/includeOutboundIPRanges': `${ip(1)}/32`,
      'traffic.sidecar.istio.io/includeOutboundPorts': '8081',
      'traffic.sidecar.istio.io/excludeOutboundIPRanges': `${ip(2)}/32`,
    },
  },
  {name: 'g', meshed: true, gateway: true},
  {name: 'n', meshed: true, annotations: {'sidecar.istio.io/interceptionMode': 'NONE'}},
  // a loopback include range: Istio then drops its "an app's traffic over lo goes direct" rules
  {name: 'l', meshed: true, annotations: {'traffic.sidecar.istio.io/includeOutboundIPRanges': '127.1.2.3/32'}},
  // s has an IPv6 address only
  {name: 's', meshed: true, ipv6Only: true},
  // r's proxy runs as root in group 1337, as the injector runs it for sidecar.istio.io/capNetBindService
  {name: 'r', meshed: true, proxy: {uid: 0, gid: 1337}},
  // m was injected without Istio's CNI: the mesh-wide include range (b's address) reached only
  // its istio-init's arguments, not its annotations
  {name: 'm', meshed: true, istioInit: {meshDefaults: {'traffic.sidecar.istio.io/includeOutboundIPRanges': `${ip(1)}/32`}}},
  // k's proxy captures DNS, and Istio's CNI set it up: port 53 to any address
  {name: 'k', meshed: true, dnsCapture: true},
  // v's proxy lacks ISTIO_DUAL_STACK (every other one has it): no ip6tables rules, no IPv6 listeners
  {name: 'v', meshed: true, noDualStack: true},
  // istio-init's environment-only settings: o captures only group 2000's outbound, x all but group
  // 2001's (and captures DNS), h leaves 127/8 alone as localhost and includes 127.1.2.3 as l does
  {name: 'o', meshed: true, istioInit: {env: {ISTIO_OUTBOUND_OWNER_GROUPS: '2000'}}},
  {name: 'x', meshed: true, dnsCapture: true, istioInit: {env: {ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: '2001'}}},
  {
    name: 'h',
    meshed: true,
    istioInit: {env: {ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: '127.0.0.1/8'}},
    annotations: {'traffic.sidecar.istio.io/includeOutboundIPRanges': '127.1.2.3/32'},
  },
  // p lists the inbound ports it captures, and excludes one of them too (Istio reads the
  // exclusions only with '*')
  {
    name: 'p',
    meshed: true,
    annotations: {'traffic.sidecar.istio.io/includeInboundPorts': '8080,8081', 'traffic.sidecar.istio.io/excludeInboundPorts': '8081'},
  },
  // q answers every SYN with a SYN cookie (net.ipv4.tcp_syncookies=2 in its namespace), as any
  // listener does while a SYN flood fills its queue: the handshake's last ACK finds no socket
  {name: 'q', meshed: true},
  // z is enrolled in Istio's ambient mode, as Istio's CNI marks it: no sidecar, and in every column
  // ztunnel's in-pod listeners on 15001 and 15006 (the lab's proxy, as uid 1600, not the mesh's
  // proxy user) and its redirection rules (modelled by istio-iptables' for that uid). merbridge
  // must leave it to them, and not take ztunnel's listener for a sidecar
  {name: 'z', meshed: false, proxy: {uid: 1600, gid: 1600}, annotations: {'ambient.istio.io/redirection': 'enabled'}},
]
const SIDECARS = ['a', 'b', 'e', 'i', 'l', 's', 'r', 'm', 'k', 'v', 'o', 'x', 'h', 'p', 'q', 'z']
const APPS: [string, number][] = [
  ['a', 8080],
  ['a', 8081],
  ['b', 8080],
  ['b', 8081],
  ['b', 8082],
  ['c', 8080],
  ['c', 8081],
  ['e', 8080],
  ['l', 8080],
  ['s', 8080],
  ['r', 8080],
  ['v', 8080],
  ['o', 8080],
  ['h', 8080],
  ['p', 8080],
  ['p', 8081],
  ['p', 8082],
  ['q', 8080],
  ['z', 8080],
]
const PROXY = {uid: 1337, gid: 1337}
const E_PROXY = {uid: 1500, gid: 1500}
const ZTUNNEL = {uid: 1600, gid: 1600}
const R_PROXY = {uid: 0, gid: 1337}
const GROUP_2000 = {uid: 3000, gid: 2000}
const GROUP_2001 = {uid: 3000, gid: 2001}

interface Case {
  name: string
  from: string
  to: string
  port?: number
  as?: {uid: number; gid: number}
  /** connect from an AF_INET6 socket to the v4-mapped address */
  mapped?: boolean
  /** to the destination pod's IPv6 address (`to` '::1' for IPv6 loopback) */
  v6?: boolean
  /** a DNS query to the address `to` instead of an HTTP request */
  dns?: {mode: DnsMode; family: DnsFamily}
  /** a connection opened another way (rawGet): an IPv6 destination options header, MPTCP, TCP Fast Open */
  raw?: RawGetMode
  /** to the destination pod's IPv6 link-local address on eth0 (with raw) */
  linkLocal?: boolean
  /** the client's socket is bound to its own pod's address (IPv6 with v6) before it connects */
  bind?: boolean
  /** a port-based NetworkPolicy on the node's bridge admits TCP to `to` only on port 8080 */
  policy?: boolean
  /**
   * Istio's rules break this connection (why): there is no behaviour of theirs to match but the
   * failure, so every column must fail, whichever sidecar the connection reached first
   */
  istioBreaks?: string
}
const DNS_PROXY_PODS = ['a', 'b', 'k', 'x']

const CASES: Case[] = [
  {name: 'app -> other meshed pod', from: 'a', to: 'b'},
  {name: 'app -> other meshed pod, port excluded outbound by the source', from: 'a', to: 'b', port: 8081},
  {name: 'app -> other meshed pod, port excluded inbound by the destination', from: 'a', to: 'b', port: 8082},
  // what the wire carries between pods of one node: the app's port, as Istio's REDIRECT in the destination leaves it
  {name: 'app -> other meshed pod, a NetworkPolicy admitting only that port', from: 'a', to: 'b', policy: true},
  {
    name: 'app -> other meshed pod, a port the NetworkPolicy does not admit',
    from: 'a',
    to: 'b',
    port: 8082,
    policy: true,
    istioBreaks: "the policy drops the sidecar's SYN on the bridge",
  },
  {name: 'app -> other meshed pod, a NetworkPolicy admitting only that port, IPv6', from: 'a', to: 'b', v6: true, policy: true},
  {name: 'app -> unmeshed pod', from: 'b', to: 'c'},
  {name: 'app -> unmeshed pod in a range excluded outbound', from: 'a', to: 'c'},
  {name: 'app -> own pod IP', from: 'a', to: 'a'},
  {name: 'app -> 127.0.0.1', from: 'a', to: '127.0.0.1'},
  {name: 'app, AF_INET6 -> ::ffff:other meshed pod', from: 'a', to: 'b', mapped: true},
  {name: 'app, AF_INET6 -> ::ffff:own pod IP', from: 'a', to: 'a', mapped: true},
  {name: 'sidecar -> other meshed pod', from: 'a', to: 'b', as: PROXY},
  {name: 'sidecar -> other meshed pod, port excluded inbound by the destination', from: 'a', to: 'b', port: 8082, as: PROXY},
  {name: 'sidecar -> own pod IP', from: 'a', to: 'a', as: PROXY},
  {name: 'sidecar -> own pod IP, port excluded outbound', from: 'a', to: 'a', port: 8081, as: PROXY},
  {name: 'sidecar -> 127.0.0.1', from: 'a', to: '127.0.0.1', as: PROXY},
  {name: 'sidecar, AF_INET6 -> ::ffff:other meshed pod', from: 'a', to: 'b', as: PROXY, mapped: true},
  // connect() to the unspecified address reaches this host: 127.0.0.1 (::1), or the address the
  // socket is bound to (IPv4); Istio's rules see the packet the kernel sends
  {name: 'app -> 0.0.0.0', from: 'a', to: '0.0.0.0'},
  {name: 'app, AF_INET6 -> ::ffff:0.0.0.0', from: 'a', to: '0.0.0.0', mapped: true},
  {name: 'app bound to its pod IP -> 0.0.0.0', from: 'a', to: '0.0.0.0', bind: true},
  {name: 'sidecar -> 0.0.0.0', from: 'a', to: '0.0.0.0', as: PROXY},
  {name: 'sidecar bound to its pod IP -> 0.0.0.0', from: 'a', to: '0.0.0.0', as: PROXY, bind: true},
  {name: 'loopback include range: app -> 0.0.0.0', from: 'l', to: '0.0.0.0'},
  // destinations the kernel refuses a TCP connect to (no packet leaves, so Istio's rules see none)
  {name: 'app -> a multicast address', from: 'a', to: '224.0.0.1'},
  {name: 'app -> the limited broadcast address', from: 'a', to: '255.255.255.255'},
  {name: 'app -> an address in 0.0.0.0/8', from: 'a', to: '0.1.2.3'},
  {name: 'IPv6: app -> a multicast address', from: 'a', to: 'ff02::1', v6: true},
  {name: 'process in the proxy group only -> other meshed pod', from: 'a', to: 'b', as: {uid: 0, gid: 1337}},
  {name: 'process in the proxy group only -> own pod IP', from: 'a', to: 'a', as: {uid: 0, gid: 1337}},
  {name: 'unmeshed pod -> meshed pod', from: 'c', to: 'b'},
  {name: 'unmeshed pod -> meshed pod, port excluded inbound', from: 'c', to: 'b', port: 8082},
  {name: 'node process -> meshed pod', from: NODE, to: 'b'},
  {name: 'remote node -> meshed pod', from: REMOTE, to: 'b'},
  {name: 'remote node -> meshed pod, port excluded inbound', from: REMOTE, to: 'b', port: 8082},
  {name: 'remote node -> unmeshed pod', from: REMOTE, to: 'c'},
  {name: 'meshed pod -> meshed pod, the other way', from: 'b', to: 'a'},
  {name: 'proxy uid 1500 pod: app -> other meshed pod', from: 'e', to: 'b'},
  {name: 'proxy uid 1500 pod: its sidecar -> other meshed pod', from: 'e', to: 'b', as: E_PROXY},
  {name: 'proxy uid 1500 pod: a uid 1337 process -> other meshed pod', from: 'e', to: 'b', as: PROXY},
  {name: 'proxy uid 1500 pod: its sidecar -> own pod IP', from: 'e', to: 'e', as: E_PROXY},
  {name: 'remote node -> proxy uid 1500 pod', from: REMOTE, to: 'e'},
  // the lab's clients run as root: in r, as its proxy's user but not in its group
  {name: 'proxy running as root: app (root) -> other meshed pod', from: 'r', to: 'b'},
  {name: 'proxy running as root: app (root) -> own pod IP', from: 'r', to: 'r'},
  {name: 'proxy running as root: its sidecar -> other meshed pod', from: 'r', to: 'b', as: R_PROXY},
  {name: 'proxy running as root: its sidecar -> own pod IP', from: 'r', to: 'r', as: R_PROXY},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: app -> other meshed pod', from: 'v', to: 'b'},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: app -> other meshed pod, IPv6', from: 'v', to: 'b', v6: true},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: app -> own pod IP, IPv6', from: 'v', to: 'v', v6: true},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: its sidecar -> own pod IP, IPv6', from: 'v', to: 'v', as: PROXY, v6: true},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: meshed pod -> it, IPv6', from: 'a', to: 'v', v6: true},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: remote node -> it, IPv6', from: REMOTE, to: 'v', v6: true},
  {name: 'dual-stack pod without ISTIO_DUAL_STACK: remote node -> it', from: REMOTE, to: 'v'},
  {name: 'mesh-wide include range in istio-init only: app -> meshed pod in it', from: 'm', to: 'b'},
  {name: 'mesh-wide include range in istio-init only: app -> meshed pod outside it', from: 'm', to: 'e'},
  {name: 'mesh-wide include range in istio-init only: app -> unmeshed pod outside it', from: 'm', to: 'c'},
  {name: 'include-ranges pod: app -> pod in its ranges', from: 'i', to: 'b'},
  {name: 'include-ranges pod: app -> meshed pod outside its ranges', from: 'i', to: 'a'},
  {name: 'include-ranges pod: app -> included port outside its ranges', from: 'i', to: 'a', port: 8081},
  {name: 'include-ranges pod: app -> included port in a range it excludes', from: 'i', to: 'c', port: 8081},
  {name: 'gateway: its process -> meshed pod', from: 'g', to: 'b'},
  {name: 'interceptionMode NONE: app -> meshed pod', from: 'n', to: 'b'},
  {name: 'IPv6: app -> other meshed pod', from: 'a', to: 'b', v6: true},
  {name: 'IPv6: app -> other meshed pod, port excluded outbound by the source', from: 'a', to: 'b', port: 8081, v6: true},
  {name: 'IPv6: app -> own pod IP', from: 'a', to: 'a', v6: true},
  {name: 'IPv6: app -> ::1', from: 'a', to: '::1', v6: true},
  {name: 'IPv6: app -> unmeshed pod (its IPv4 range excluded, not its IPv6)', from: 'a', to: 'c', v6: true},
  {name: 'IPv6: sidecar -> other meshed pod', from: 'a', to: 'b', as: PROXY, v6: true},
  {name: 'IPv6: sidecar -> own pod IP', from: 'a', to: 'a', as: PROXY, v6: true},
  {name: 'IPv6: sidecar -> ::1', from: 'a', to: '::1', as: PROXY, v6: true},
  {name: 'IPv6: app -> ::', from: 'a', to: '::', v6: true},
  {name: 'IPv6: sidecar -> ::', from: 'a', to: '::', as: PROXY, v6: true},
  {name: 'IPv6: sidecar bound to its pod IP -> ::', from: 'a', to: '::', as: PROXY, v6: true, bind: true},
  {name: 'IPv6: unmeshed pod -> meshed pod', from: 'c', to: 'b', v6: true},
  {name: 'IPv6: node process -> meshed pod', from: NODE, to: 'b', v6: true},
  {name: 'IPv6: remote node -> meshed pod', from: REMOTE, to: 'b', v6: true},
  {name: 'IPv6: remote node -> meshed pod, port excluded inbound', from: REMOTE, to: 'b', port: 8082, v6: true},
  {name: 'IPv6: proxy uid 1500 pod: its sidecar -> own pod IP', from: 'e', to: 'e', as: E_PROXY, v6: true},
  {name: 'IPv6: include-ranges pod (IPv4 ranges only): app -> meshed pod', from: 'i', to: 'b', v6: true},
  {name: 'IPv6-only pod: app -> other meshed pod', from: 's', to: 'b', v6: true},
  {name: 'IPv6-only pod: app -> own pod IP', from: 's', to: 's', v6: true},
  {name: 'IPv6-only pod: its sidecar -> own pod IP', from: 's', to: 's', as: PROXY, v6: true},
  {name: 'IPv6-only pod: remote node -> it', from: REMOTE, to: 's', v6: true},
  {name: 'IPv6-only pod: meshed pod -> it', from: 'a', to: 's', v6: true},
  {name: 'IPv6 with a destination options header: remote node -> meshed pod', from: REMOTE, to: 'b', v6: true, raw: 'dstopts'},
  {name: 'IPv6 with a destination options header: unmeshed pod -> meshed pod', from: 'c', to: 'b', v6: true, raw: 'dstopts'},
  {name: 'DNS capture on: app -> resolver, UDP connected (glibc)', from: 'a', to: REMOTE_IP, dns: {mode: 'udp-connect', family: '4'}},
  {name: 'DNS capture on: app -> resolver, UDP sendto', from: 'a', to: REMOTE_IP, dns: {mode: 'udp-sendto', family: '4'}},
  {name: 'DNS capture on: app -> resolver, TCP', from: 'a', to: REMOTE_IP, dns: {mode: 'tcp', family: '4'}},
  {name: 'DNS capture on: app, AF_INET6 -> ::ffff:resolver, UDP', from: 'a', to: REMOTE_IP, dns: {mode: 'udp-connect', family: 'mapped'}},
  {name: 'DNS capture on: app -> IPv6 resolver, UDP sendto', from: 'a', to: REMOTE_IP6, dns: {mode: 'udp-sendto', family: '6'}},
  {name: 'DNS capture on: app -> IPv6 resolver, TCP', from: 'a', to: REMOTE_IP6, dns: {mode: 'tcp', family: '6'}},
  {
    name: 'DNS capture on: app -> DNS server not in resolv.conf, UDP',
    from: 'a',
    to: REMOTE_IP_OTHER,
    dns: {mode: 'udp-connect', family: '4'},
  },
  {name: 'DNS capture on: app -> DNS server not in resolv.conf, TCP', from: 'a', to: REMOTE_IP_OTHER, dns: {mode: 'tcp', family: '4'}},
  {name: 'DNS capture on: sidecar -> resolver, UDP', from: 'a', to: REMOTE_IP, as: PROXY, dns: {mode: 'udp-connect', family: '4'}},
  {name: 'DNS capture on: sidecar -> resolver, TCP', from: 'a', to: REMOTE_IP, as: PROXY, dns: {mode: 'tcp', family: '4'}},
  {
    name: 'DNS capture on: process in the proxy group only -> resolver, UDP',
    from: 'a',
    to: REMOTE_IP,
    as: {uid: 0, gid: 1337},
    dns: {mode: 'udp-sendto', family: '4'},
  },
  {name: "DNS capture by Istio's CNI: app -> resolver, UDP", from: 'k', to: REMOTE_IP, dns: {mode: 'udp-connect', family: '4'}},
  {
    name: "DNS capture by Istio's CNI: app -> DNS server not in resolv.conf, UDP",
    from: 'k',
    to: REMOTE_IP_OTHER,
    dns: {mode: 'udp-sendto', family: '4'},
  },
  {
    name: "DNS capture by Istio's CNI: app -> DNS server not in resolv.conf, TCP",
    from: 'k',
    to: REMOTE_IP_OTHER,
    dns: {mode: 'tcp', family: '4'},
  },
  {name: "DNS capture by Istio's CNI: app -> own pod IP, UDP", from: 'k', to: ip(11), dns: {mode: 'udp-connect', family: '4'}},
  {
    name: "DNS capture by Istio's CNI: app -> IPv6 DNS server not in resolv.conf, UDP",
    from: 'k',
    to: 'fd78::3',
    dns: {mode: 'udp-connect', family: '6'},
  },
  {name: "DNS capture by Istio's CNI: app -> 127.0.0.1, UDP", from: 'k', to: '127.0.0.1', dns: {mode: 'udp-connect', family: '4'}},
  {name: "DNS capture by Istio's CNI: app -> 127.0.0.1, TCP", from: 'k', to: '127.0.0.1', dns: {mode: 'tcp', family: '4'}},
  {name: "DNS capture by Istio's CNI: app -> 0.0.0.0, UDP", from: 'k', to: '0.0.0.0', dns: {mode: 'udp-connect', family: '4'}},
  {name: "DNS capture by Istio's CNI: app -> ::, UDP sendto", from: 'k', to: '::', dns: {mode: 'udp-sendto', family: '6'}},
  {
    name: "DNS capture by Istio's CNI: sidecar -> DNS server not in resolv.conf, UDP",
    from: 'k',
    to: REMOTE_IP_OTHER,
    as: PROXY,
    dns: {mode: 'udp-connect', family: '4'},
  },
  {name: 'DNS capture off: app -> resolver, UDP', from: 'b', to: REMOTE_IP, dns: {mode: 'udp-connect', family: '4'}},
  {name: 'DNS capture off: app -> resolver, TCP', from: 'b', to: REMOTE_IP, dns: {mode: 'tcp', family: '4'}},
  {name: 'DNS capture on: app -> own pod IP, UDP', from: 'a', to: ip(0), dns: {mode: 'udp-connect', family: '4'}},
  {name: 'DNS capture on: app -> own pod IP, TCP', from: 'a', to: ip(0), dns: {mode: 'tcp', family: '4'}},
  {name: 'DNS capture on: sidecar -> own pod IP, TCP', from: 'a', to: ip(0), as: PROXY, dns: {mode: 'tcp', family: '4'}},
  {
    name: 'DNS capture on: process in the proxy group only -> own pod IP, TCP',
    from: 'a',
    to: ip(0),
    as: {uid: 0, gid: 1337},
    dns: {mode: 'tcp', family: '4'},
  },
  {name: 'DNS capture off: sidecar -> own pod IP, TCP', from: 'b', to: ip(1), as: PROXY, dns: {mode: 'tcp', family: '4'}},
  {name: 'loopback include range: app -> 127.1.2.3 (in its ranges)', from: 'l', to: '127.1.2.3'},
  {name: 'loopback include range: app -> 127.0.0.1', from: 'l', to: '127.0.0.1'},
  {name: 'loopback include range: app -> own pod IP', from: 'l', to: 'l'},
  {name: 'loopback include range: process in the proxy group only -> own pod IP', from: 'l', to: 'l', as: {uid: 0, gid: 1337}},
  {name: 'sidecar -> 127.1.2.3', from: 'a', to: '127.1.2.3', as: PROXY},
  {name: 'app -> other meshed pod, Multipath TCP', from: 'a', to: 'b', raw: 'mptcp'},
  {name: 'app -> other meshed pod, Multipath TCP, IPv6', from: 'a', to: 'b', v6: true, raw: 'mptcp'},
  {name: 'app -> other meshed pod, TCP Fast Open', from: 'a', to: 'b', raw: 'fastopen'},
  {name: 'app -> other meshed pod, TCP Fast Open, IPv6', from: 'a', to: 'b', v6: true, raw: 'fastopen'},
  {name: 'remote node -> meshed pod, Multipath TCP', from: REMOTE, to: 'b', raw: 'mptcp'},
  {name: 'remote node -> meshed pod, TCP Fast Open', from: REMOTE, to: 'b', raw: 'fastopen'},
  {name: 'listed inbound ports: remote node -> a listed port', from: REMOTE, to: 'p'},
  {name: 'listed inbound ports: remote node -> a listed port it also excludes', from: REMOTE, to: 'p', port: 8081},
  {name: 'listed inbound ports: remote node -> a port not listed', from: REMOTE, to: 'p', port: 8082},
  {name: 'listed inbound ports: meshed pod -> a listed port it also excludes', from: 'b', to: 'p', port: 8081},
  {name: 'listed inbound ports: meshed pod -> a port not listed', from: 'b', to: 'p', port: 8082},
  {name: 'SYN cookies: remote node -> meshed pod', from: REMOTE, to: 'q'},
  {name: 'SYN cookies: remote node -> meshed pod, IPv6', from: REMOTE, to: 'q', v6: true},
  {name: 'SYN cookies: unmeshed pod -> meshed pod', from: 'c', to: 'q'},
  {name: 'SYN cookies: meshed pod -> meshed pod', from: 'a', to: 'q'},
  // on the pods' link: Istio's ip6tables capture it, and the sidecar cannot reach an address
  // without its scope (both sidecars fail alike)
  {name: 'unmeshed pod -> meshed pod at its IPv6 link-local address', from: 'c', to: 'b', v6: true, linkLocal: true, raw: 'plain'},
  {
    name: 'unmeshed pod -> pod without ISTIO_DUAL_STACK at its IPv6 link-local address',
    from: 'c',
    to: 'v',
    v6: true,
    linkLocal: true,
    raw: 'plain',
  },
  // a connect to a link-local address binds the socket to the scope's interface, so REDIRECT's
  // ::1 cannot be routed: Istio's rules leave such a connection hanging
  {
    name: 'app -> other meshed pod at its IPv6 link-local address',
    from: 'a',
    to: 'b',
    v6: true,
    linkLocal: true,
    raw: 'plain',
    istioBreaks: 'REDIRECT to ::1 on a socket bound to eth0',
  },
  {
    name: 'sidecar -> other meshed pod at its IPv6 link-local address',
    from: 'a',
    to: 'b',
    as: PROXY,
    v6: true,
    linkLocal: true,
    raw: 'plain',
  },
  {name: 'app -> own IPv6 link-local address', from: 'a', to: 'a', v6: true, linkLocal: true, raw: 'plain'},
  {
    name: 'sidecar -> own IPv6 link-local address',
    from: 'a',
    to: 'a',
    as: PROXY,
    v6: true,
    linkLocal: true,
    raw: 'plain',
    istioBreaks: 'REDIRECT to ::1 on a socket bound to eth0',
  },
  {name: 'owner groups 2000 only: app in group 2000 -> other meshed pod', from: 'o', to: 'b', as: GROUP_2000},
  {name: 'owner groups 2000 only: app in another group -> other meshed pod', from: 'o', to: 'b'},
  {name: 'owner groups 2000 only: app in another group -> other meshed pod, IPv6', from: 'o', to: 'b', v6: true},
  {name: 'owner groups 2000 only: its sidecar -> own pod IP', from: 'o', to: 'o', as: PROXY},
  {name: 'owner group 2001 excluded: app in it -> other meshed pod', from: 'x', to: 'b', as: GROUP_2001},
  {name: 'owner group 2001 excluded: app in it, AF_INET6 -> ::ffff:other meshed pod', from: 'x', to: 'b', as: GROUP_2001, mapped: true},
  {name: 'owner group 2001 excluded: app in another group -> other meshed pod', from: 'x', to: 'b'},
  {
    name: 'owner group 2001 excluded: app in it -> resolver, UDP connected',
    from: 'x',
    to: REMOTE_IP,
    as: GROUP_2001,
    dns: {mode: 'udp-connect', family: '4'},
  },
  {
    name: 'owner group 2001 excluded: app in it -> resolver, UDP sendto',
    from: 'x',
    to: REMOTE_IP,
    as: GROUP_2001,
    dns: {mode: 'udp-sendto', family: '4'},
  },
  {
    name: 'owner group 2001 excluded: app in it -> resolver, TCP',
    from: 'x',
    to: REMOTE_IP,
    as: GROUP_2001,
    dns: {mode: 'tcp', family: '4'},
  },
  {
    name: 'owner group 2001 excluded: app in another group -> resolver, UDP',
    from: 'x',
    to: REMOTE_IP,
    dns: {mode: 'udp-connect', family: '4'},
  },
  {name: 'loopback CIDR 127.0.0.1/8: app -> 127.1.2.3 (in its ranges)', from: 'h', to: '127.1.2.3'},
  {name: 'loopback CIDR 127.0.0.1/8: app -> own pod IP', from: 'h', to: 'h'},
  {name: 'loopback CIDR 127.0.0.1/8: its sidecar -> 127.1.2.3', from: 'h', to: '127.1.2.3', as: PROXY},
  {name: 'loopback CIDR 127.0.0.1/8: its sidecar -> own pod IP', from: 'h', to: 'h', as: PROXY},
  {name: 'ambient pod: app -> meshed pod', from: 'z', to: 'b'},
  {name: 'ambient pod: app -> unmeshed pod', from: 'z', to: 'c'},
  {name: 'ambient pod: ztunnel -> meshed pod', from: 'z', to: 'b', as: ZTUNNEL},
  {name: 'ambient pod: app -> own pod IP', from: 'z', to: 'z'},
  {name: 'meshed pod -> ambient pod', from: 'a', to: 'z'},
  {name: 'remote node -> ambient pod', from: REMOTE, to: 'z'},
  {name: 'IPv6: ambient pod: app -> meshed pod', from: 'z', to: 'b', v6: true},
]

/**
 * The kernel matrix's part of it (MERBRIDGE_MATRIX=quick, as scripts/kernels.ts runs it on each
 * kernel, emulated ones included): local hops over IPv4 and IPv6, and inbound from outside the cgroup.
 */
const QUICK = [
  'app -> other meshed pod',
  'app -> other meshed pod, a NetworkPolicy admitting only that port',
  'app -> other meshed pod, port excluded inbound by the destination',
  'app -> own pod IP',
  'app, AF_INET6 -> ::ffff:other meshed pod',
  'sidecar -> own pod IP',
  'unmeshed pod -> meshed pod',
  'node process -> meshed pod',
  'remote node -> meshed pod',
  'remote node -> meshed pod, port excluded inbound',
  'IPv6: app -> other meshed pod',
  'IPv6: unmeshed pod -> meshed pod',
  'IPv6: remote node -> meshed pod',
  'IPv6-only pod: remote node -> it',
  'DNS capture on: app -> resolver, UDP connected (glibc)',
  'DNS capture off: app -> resolver, UDP',
  'remote node -> meshed pod, Multipath TCP',
  'remote node -> meshed pod, TCP Fast Open',
  'SYN cookies: remote node -> meshed pod',
  'ambient pod: app -> meshed pod',
]
const SELECTED = MATRIX_QUICK ? CASES.filter((c) => QUICK.includes(c.name)) : CASES
if (MATRIX_QUICK && SELECTED.length !== QUICK.length)
  throw new Error(`QUICK names a case the matrix lacks: ${QUICK.filter((n) => !CASES.some((c) => c.name === n)).join(', ')}`)

const ALL_CONFIGS = ['iptables', 'merbridge', 'both'] as const
type Config = (typeof ALL_CONFIGS)[number]
/**
 * The quick part leaves out "both" (under emulation it alone took five minutes): the datapath suite
 * covers local hops with Istio's rules in place on every kernel, and `npm test` the whole column.
 */
const CONFIGS: readonly Config[] = MATRIX_QUICK ? ['iptables', 'merbridge'] : ALL_CONFIGS

describe('interception equivalence with Istio iptables', {skip, timeout: suiteTimeout(600_000)}, () => {
  const lab = skip ? (undefined as unknown as Lab) : new Lab(PROFILES.istio!, true)
  const install = uniqueInstall()
  const sidecars = new Map<string, LabProcess>()
  const matrix = new Map<string, Partial<Record<Config, string>>>()
  /** link-local address -> pod, for naming them */
  const linkLocals = new Map<string, string>()

  /** A name for an address: the pod, node or remote node that has it. */
  const who = (addr: string) => {
    if (addr === '127.0.0.6' || addr === '::6') return `${addr} (inbound sidecar)`
    if (addr === NODE_IP || addr === NODE_IP6) return 'node'
    if (addr === REMOTE_IP || addr === REMOTE_IP6) return 'remote'
    if (addr === `::ffff:${REMOTE_IP}`) return 'remote (v4-mapped)'
    if (addr === REMOTE_IP_OTHER) return 'remote (its other address)'
    const pod = [...lab.pods.values()].find((p) => p.ip === addr || p.ip6 === addr)
    if (pod) return `${pod.name}${pod.ip6 === addr ? ' (IPv6)' : ''}`
    const link = linkLocals.get(addr.replace(/%.*$/, ''))
    return link ? `${link} (link-local)` : addr
  }
  /** The address of an ip:port, named (the port of a client is whatever the kernel picked). */
  const host = (hostPort: string) => who(/^\[?([^\]]*?)\]?:\d+$/.exec(hostPort)?.[1] ?? hostPort)
  const named = (hostPort: string) => {
    const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(hostPort)
    return m ? `${who(m[1] ?? '')}:${m[2] ?? ''}` : hostPort
  }

  /** Who answered a DNS query, by the address in its answer. */
  const answeredBy = (answer: string | undefined) => {
    if (answer === DNS_ANSWERS.resolver) return 'the resolver'
    if (answer === DNS_ANSWERS.other) return 'the other DNS server'
    const proxy = DNS_PROXY_PODS.find((p) => DNS_ANSWERS.proxy(p) === answer)
    if (proxy) return `${proxy}'s DNS proxy`
    const app = DNS_PROXY_PODS.find((p) => DNS_ANSWERS.app(p) === answer)
    return app ? `${app}'s own DNS server` : `? (${answer ?? 'nothing'})`
  }

  /** What the client of a case got: the app's view of an HTTP request, or of a DNS reply. */
  const ask = async (c: Case): Promise<string> => {
    if (c.dns) {
      const r = await lab.dns.query(c.from, c.dns.mode, c.dns.family, c.to, c.as)
      if (r.error) return `query failed: ${r.error}`
      return [
        `answered by ${answeredBy(r.answer)}`,
        ...(r.from ? [`reply from ${named(r.from)}`] : []),
        ...(r.peer ? [`peer name ${who(r.peer)}`] : []),
      ].join(', ')
    }
    const port = c.port ?? APP_PORT
    // an address as written (a pod is named by a letter)
    const literal = /[.:]/.test(c.to)
    const host = c.linkLocal ? `${await lab.linkLocal(c.to)}%eth0` : literal ? c.to : c.v6 ? lab.pod(c.to).ip6! : lab.pod(c.to).ip
    const url = `http://${c.mapped ? `[::ffff:${host}]` : c.v6 ? `[${host}]` : host}:${port}/whoami`
    const bind = c.bind ? (c.v6 ? lab.pod(c.from).ip6 : lab.pod(c.from).ip) : undefined
    const r =
      c.raw || bind
        ? await lab.clients.rawGet(c.from, c.raw ?? 'plain', host, port, '/whoami', {bind, as: c.as})
        : await lab.clients.get(c.from, url, undefined, c.as)
    return r.status === 200 && r.body
      ? `app saw ${who((JSON.parse(r.body) as {remoteAddress: string}).remoteAddress)}`
      : `failed: ${r.error ?? String(r.status)}`
  }

  /** One connection of a case, as the sidecars and the client saw it. */
  const observe = async (c: Case): Promise<string> => {
    const marks = new Map(SIDECARS.map((p) => [p, sidecars.get(p)!.stdout.length]))
    const marks6 = new Map(SIDECARS.map((p) => [p, lab.sidecars.sidecar6Lines(p).length]))
    const before = new Map(await Promise.all(SIDECARS.map(async (p) => [p, await lab.sidecars.sessions(p)] as const)))
    const lift = c.policy ? await lab.iptables.admitOnly(c.to, APP_PORT) : undefined
    const seen = await ask(c).finally(() => lift?.())
    const passed: string[] = []
    for (const p of SIDECARS) {
      const now = await lab.sidecars.sessions(p)
      const was = before.get(p)!
      for (const dir of ['outbound', 'inbound'] as const) {
        const n = now[dir] - was[dir]
        if (n === 0) continue
        // the session was accepted before the response came back; haproxy logs it once its upstream is connected
        const proc = sidecars.get(p)!
        // whom the sidecar saw as its client (the source address REDIRECT leaves), and what it was told
        const lines = () => [
          ...parseSidecarLog(proc.stdout.slice(marks.get(p)))
            .filter((l) => l.backend === `${dir}_passthrough`)
            .map((l) => `from ${host(l.client)}, told ${named(l.originalDst)}`),
          ...lab.sidecars
            .sidecar6Lines(p)
            .slice(marks6.get(p))
            .filter((l) => l.direction === dir)
            .map((l) => `from ${host(l.client)}, told ${l.originalDst ? named(l.originalDst) : `nothing (${l.error ?? ''})`}`),
        ]
        await proc
          .waitFor(() => lines().length >= n, `${n} ${dir} log line(s) from ${p}'s sidecar`)
          .catch(async (error: unknown) => {
            // a session accepted and never logged: its sockets, and whether the sidecar dropped log lines
            throw new Error(
              `${String(error)}\nsockets in ${p}:\n${await lab.sockets(p)}\nlog lines ${p}'s sidecar dropped: ${await lab.sidecars.droppedLogs(p).catch(() => Number.NaN)}`,
              {cause: error},
            )
          })
        passed.push(`${p} ${dir} (${lines().join('; ')})`)
      }
    }
    return `${passed.join(' + ') || 'no sidecar'}; ${seen}`
  }

  const fill = async (config: Config) => {
    for (const c of SELECTED) {
      const row = matrix.get(c.name) ?? {}
      row[config] = await observe(c)
      matrix.set(c.name, row)
    }
  }
  const meshedWithRules = PODS.filter((p) => p.meshed && !p.gateway && p.annotations?.['sidecar.istio.io/interceptionMode'] !== 'NONE').map(
    (p) => p.name,
  )
  const iptables = async (on: boolean) => {
    for (const p of meshedWithRules) {
      await lab.iptables.remove(p)
      if (on) await lab.iptables.install(p)
    }
  }

  before(async () => {
    lab.useRemoteResolver()
    await lab.create(PODS)
    await execa('ip', ['netns', 'exec', lab.pod('q').netns, 'sysctl', '-q', '-w', 'net.ipv4.tcp_syncookies=2'])
    await lab.links.addRemote()
    await lab.dns.startRemote()
    for (const p of SIDECARS) sidecars.set(p, await lab.sidecars.start(p))
    await lab.iptables.install('z') // ztunnel's in-pod redirection, in every column
    // b's proxy listens too, though its pod does not capture DNS: a query it answers is a wrong capture
    for (const p of DNS_PROXY_PODS) {
      await lab.dns.startProxy(p)
      await lab.dns.startApp(p)
    }
    for (const [p, port] of APPS) await lab.clients.startApp(p, port)
    for (const p of ['a', 'b', 'c', 'v']) linkLocals.set(await lab.linkLocal(p), p)
  })

  after(() => removeLab(lab, install))

  it("fills the matrix under Istio's iptables rules", async () => {
    await iptables(true)
    await fill('iptables')
    // the lab itself works: without these, three identical columns would prove nothing
    const cell = (name: string) => matrix.get(name)?.iptables ?? ''
    assert.equal(
      cell('app -> other meshed pod'),
      'a outbound (from a, told b:8080) + b inbound (from a, told b:8080); app saw 127.0.0.6 (inbound sidecar)',
    )
    assert.equal(cell('remote node -> meshed pod'), 'b inbound (from remote, told b:8080); app saw 127.0.0.6 (inbound sidecar)')
    assert.equal(cell('app -> other meshed pod, port excluded inbound by the destination'), 'a outbound (from a, told b:8082); app saw a')
    assert.equal(
      cell('DNS capture on: app -> resolver, UDP connected (glibc)'),
      "no sidecar; answered by a's DNS proxy, reply from remote:53, peer name remote",
    )
    assert.equal(
      cell('DNS capture off: app -> resolver, UDP'),
      'no sidecar; answered by the resolver, reply from remote:53, peer name remote',
    )
  })

  it('fills it under merbridge alone, with no iptables rules in the pods', async () => {
    await iptables(false)
    const r = await cli(
      ['enable', '--cgroup', lab.cgroup, '--bpffs', install.bpffs, '--pods-file', lab.writePodList(), '--json'],
      install.env,
    )
    assert.equal(r.code, 0, r.stderr + r.stdout)
    await fill('merbridge')
  })

  if (CONFIGS.includes('both'))
    it("fills it under merbridge with Istio's rules also in place", async () => {
      await iptables(true)
      await fill('both')
      await iptables(false)
    })

  it('finds the columns identical, cell for cell', (t) => {
    const width = Math.max(...SELECTED.map((c) => c.name.length))
    const heads: Record<Config, string> = {iptables: 'Istio iptables', merbridge: 'merbridge', both: 'both'}
    const lines = ['case'.padEnd(width) + CONFIGS.map((k) => ` | ${heads[k]}`).join('')]
    const differences: string[] = []
    for (const c of SELECTED) {
      const row = matrix.get(c.name) ?? {}
      const same = CONFIGS.every((k) => row[k] === row.iptables)
      // a connection Istio's rules break: a failure in every column, the app never reached
      const failed = (cell?: string) => /; failed: [^;]*$/.test(cell ?? '')
      const ok = c.istioBreaks ? CONFIGS.every((k) => failed(row[k])) : same
      lines.push(c.name.padEnd(width) + CONFIGS.map((k, i) => ` | ${i > 0 && same ? 'same' : (row[k] ?? '?')}`).join(''))
      if (!ok)
        differences.push(
          `${c.name}${c.istioBreaks ? ` (Istio's rules break it: ${c.istioBreaks}; every column must fail)` : ''}:` +
            CONFIGS.map((k) => `\n  ${`${k}:`.padEnd(11)}${row[k]}`).join(''),
        )
    }
    for (const l of lines) t.diagnostic(l)
    t.diagnostic(`${SELECTED.length} cases x ${CONFIGS.length} configurations = ${SELECTED.length * CONFIGS.length} cells`)
    // what the lab's own processes complained about, should a difference be the lab's doing
    if (differences.length > 0) for (const l of lab.stderrTails()) t.diagnostic(l)
    assert.equal(matrix.size, SELECTED.length)
    assert.deepEqual(differences, [], `cells that differ from Istio's:\n${differences.join('\n')}`)
  })
})
