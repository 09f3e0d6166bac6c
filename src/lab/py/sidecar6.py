"""python3 sidecar6.py OUTBOUND_PORT INBOUND_PORT LOG: the lab's IPv6 sidecar (src/lab/sidecar6.ts says
what it does and why).
"""
import socket
import struct
import sys
import threading
outbound, inbound, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass


def handle(conn, direction):
    try:
        forward(conn, direction)
    finally:
        conn.close()


def forward(conn, direction):
    client = conn.getpeername()
    try:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
    except OSError as e:
        with lock, open(log, 'a') as f:
            f.write('%s client=[%s]:%d error=%s\n' % (direction, client[0], client[1], e.strerror))
        return
    port = struct.unpack('!H', raw[2:4])[0]
    addr = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    with lock, open(log, 'a') as f:
        f.write('%s client=[%s]:%d dst=[%s]:%d\n' % (direction, client[0], client[1], addr, port))
    up = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        if direction == 'inbound':
            up.bind(('::6', 0))
        up.connect((addr, port))
    except OSError:
        up.close()
        return
    a = threading.Thread(target=pump, args=(conn, up), daemon=True)
    b = threading.Thread(target=pump, args=(up, conn), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    up.close()


def serve(port, direction):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port))
    s.listen(128)
    while True:
        try:
            conn, _ = s.accept()
        except OSError:
            continue  # a connection reset before it was accepted: keep serving, as a proxy does
        threading.Thread(target=handle, args=(conn, direction), daemon=True).start()


for port, direction in ((outbound, 'outbound'), (inbound, 'inbound')):
    threading.Thread(target=serve, args=(port, direction), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
