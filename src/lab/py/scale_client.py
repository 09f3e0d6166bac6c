"""python3 scale_client.py HOST PORT N: opens N connections to HOST:PORT, echoes a message on each,
holds them; prints what it got.
"""
import resource
import socket
import sys
import time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, failed, t0 = [], 0, time.monotonic()
for i in range(n):
    msg = b"%08d" % i
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                break
            got += chunk
        if got == msg:
            held.append(s)
        else:
            failed += 1
            s.close()
    except OSError:
        failed += 1
print("held %d failed %d seconds %.3f" % (len(held), failed, time.monotonic() - t0), flush=True)
time.sleep(3600)
