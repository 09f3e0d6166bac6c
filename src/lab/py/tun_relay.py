"""python3 tun_relay.py DEV NETNS_PATH PEER_DEV: copies IP packets between tun DEV here and tun
PEER_DEV in NETNS_PATH (a pod reached over a link without Ethernet headers).
"""
import ctypes
import fcntl
import os
import select
import struct
import sys
TUNSETIFF, IFF_TUN, IFF_NO_PI, CLONE_NEWNET = 0x400454ca, 0x1, 0x1000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def attach(name):
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


here = attach(sys.argv[1])
ns = os.open(sys.argv[2], os.O_RDONLY)
if libc.setns(ns, CLONE_NEWNET) != 0:
    raise OSError(ctypes.get_errno(), 'setns')
there = attach(sys.argv[3])
print('relaying', flush=True)
while True:
    for fd in select.select([here, there], [], [])[0]:
        packet = os.read(fd, 65536)
        try:
            os.write(there if fd == here else here, packet)
        except OSError:
            pass  # the other side is down (EIO): dropped, as a link would
