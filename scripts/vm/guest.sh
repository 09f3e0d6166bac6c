#!/bin/bash
# PID 1 of the kernel matrix's VM after switch_root (scripts/kernels.ts): the host's files under a
# writable overlay. Mount what a node has, run the selected tests, leave their output and exit code
# in the output share, power off.
set -u
out=/run/merbridge-vm
arg() { sed -n "s/.*mb\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
# /tmp stays the overlay's (the checkout may be below it, as a CI clone may)
# a unified cgroup v2 host, as Debian 12 boots
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# the kernel's modules (netfilter for Istio's rules), loaded on demand by the host's modprobe
mkdir -p "/lib/modules/$(uname -r)" && mount --bind "$(arg modules)" "/lib/modules/$(uname -r)"
ip link set lo up
hostname merbridge-vm
sysctl -qw kernel.panic=-1
checkout=$(arg checkout)
selection=$(arg tests | tr ',' ' ')
echo "vm: $(uname -r) up; running: $selection"
[ -f "$out/exec.sh" ] && selection="$out/exec.sh"
cd "$checkout" && env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true TERM=dumb MERBRIDGE_MATRIX=quick MERBRIDGE_TEST_TIME_SCALE=8 \
  $([ -f "$out/exec.sh" ] && echo bash || echo node scripts/test.js) $selection >"$out/test.log" 2>&1
echo $? >"$out/rc"
sync
echo "vm: tests done (exit $(cat "$out/rc"))"
echo o >/proc/sysrq-trigger
sleep 30
