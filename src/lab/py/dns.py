"""python3 dns.py serve ANSWER HOST:PORT... (UDP and TCP on each), or
python3 dns.py query MODE FAMILY SERVER PORT: the lab's DNS servers and clients (src/lab/dns.ts).
"""
import json
import socket
import struct
import sys
import threading


def answer_for(query, answer_ip):
    qid = query[:2]
    i = 12
    while query[i] != 0:
        i += 1 + query[i]
    question = query[12:i + 5]
    header = qid + struct.pack('!HHHHH', 0x8180, 1, 1, 0, 0)
    record = struct.pack('!HHHIH', 0xc00c, 1, 1, 5, 4) + socket.inet_aton(answer_ip)
    return header + question + record


def bound(family, kind, host, port):
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s


def serve_udp(s, answer_ip):
    while True:
        q, addr = s.recvfrom(512)
        s.sendto(answer_for(q, answer_ip), addr)


def serve_tcp(s, answer_ip):
    s.listen(64)
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            continue
        try:
            n = struct.unpack('!H', recv_all(c, 2))[0]
            r = answer_for(recv_all(c, n), answer_ip)
            c.sendall(struct.pack('!H', len(r)) + r)
        except OSError:
            pass
        c.close()


def recv_all(s, n):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError('short read')
        data += chunk
    return data


def query_packet():
    name = b''.join(bytes([len(p)]) + p for p in b'lab.example'.split(b'.')) + b'\0'
    return struct.pack('!HHHHHH', 0x4d42, 0x0100, 1, 0, 0, 0) + name + struct.pack('!HH', 1, 1)


def parse_answer(r):
    return socket.inet_ntoa(r[-4:]) if len(r) >= 16 and r[7] == 1 else 'no answer'


def query(mode, family, server, port):
    fam = socket.AF_INET if family == '4' else socket.AF_INET6
    target = '::ffff:' + server if family == 'mapped' else server
    out = {}
    if mode == 'tcp':
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((target, port))
        q = query_packet()
        s.sendall(struct.pack('!H', len(q)) + q)
        n = struct.unpack('!H', recv_all(s, 2))[0]
        out['answer'] = parse_answer(recv_all(s, n))
        out['peer'] = s.getpeername()[0]
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(5)
        if mode == 'udp-connect':
            s.connect((target, port))
            s.send(query_packet())
            out['peer'] = s.getpeername()[0]
        else:
            s.sendto(query_packet(), (target, port))
        r, addr = s.recvfrom(512)
        out['answer'] = parse_answer(r)
        out['from'] = '%s:%d' % (addr[0], addr[1])
    print(json.dumps(out), flush=True)


if sys.argv[1] == 'serve':
    answer_ip = sys.argv[2]
    for hp in sys.argv[3:]:
        host, port = hp.rsplit(':', 1)
        host = host.strip('[]')
        fam = socket.AF_INET6 if ':' in host else socket.AF_INET
        # bound here, before 'listening' is printed: a port in use fails the start
        for kind, fn in ((socket.SOCK_DGRAM, serve_udp), (socket.SOCK_STREAM, serve_tcp)):
            threading.Thread(target=fn, args=(bound(fam, kind, host, int(port)), answer_ip), daemon=True).start()
    print('listening', flush=True)
    threading.Event().wait()
else:
    try:
        query(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    except OSError as e:
        print(json.dumps({'error': e.strerror or str(e)}), flush=True)
