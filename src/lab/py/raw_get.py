"""python3 raw_get.py MODE HOST PORT PATH [BIND]: an HTTP/1.0 GET over a connection opened as some
clients open them, which an interception must not miss: `plain`, connect() (to a link-local
address too, HOST naming its interface); `dstopts`, IPv6 with a destination options header (PadN)
on every packet; `mptcp`, a Multipath TCP socket; `fastopen`, TCP Fast Open (sendto with
MSG_FASTOPEN, no connect()). Prints one JSON line: status and body, or error.
"""
import json
import socket
import struct
import sys
mode, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
family = socket.AF_INET6 if ':' in host else socket.AF_INET
# a link-local address names its interface (fe80::1%eth0): getaddrinfo gives its scope
address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
s = socket.socket(family, socket.SOCK_STREAM, 262 if mode == 'mptcp' else 0)
# a blocking socket with the kernel's timeouts: a non-blocking Fast Open sendto without a cookie
# only starts the handshake (EINPROGRESS); a blocking one sends the request once connected
for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
    s.setsockopt(socket.SOL_SOCKET, option, struct.pack('ll', 10, 0))
if mode == 'dstopts':
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
if len(sys.argv) > 5:
    s.bind((sys.argv[5], 0))
request = ('GET %s HTTP/1.0\r\nHost: lab\r\n\r\n' % path).encode()
try:
    if mode == 'fastopen':
        s.sendto(request, socket.MSG_FASTOPEN, address)
    else:
        s.connect(address)
        s.sendall(request)
    data = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    if not data:
        raise ConnectionResetError()
    head, _, body = data.partition(b'\r\n\r\n')
    print(json.dumps({'status': int(head.split(b' ')[1]), 'body': body.decode()}))
except ConnectionResetError:
    # a peer that gives up closes with FIN or RST depending on whether it had read the request yet
    print(json.dumps({'error': 'closed without a reply'}))
except OSError as e:
    print(json.dumps({'error': e.strerror or str(e)}))
