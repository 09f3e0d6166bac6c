"""python3 hold_loopback.py N: N connections over loopback to a listener of its own, both ends held
(2N sockets); prints "holding N" once they are all open.
"""
import resource
import socket
import sys
import time

hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4096)
held = []
for i in range(n):
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    held += [c, s]
print("holding", n, flush=True)
time.sleep(3600)
