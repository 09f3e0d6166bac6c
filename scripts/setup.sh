#!/usr/bin/env bash
# Installs what merbridge, its demo, its bench and its tests need on a Debian/Ubuntu node (as root),
# then builds it. Safe to run again: apt and npm ci skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=(
  # build and load the datapath; clang-format checks bpf/'s layout (npm run lint)
  clang llvm libbpf-dev linux-libc-dev libc6-dev bpftool clang-format
  # node plumbing: ip/ss, nsenter/setpriv/mount, iptables baseline (nft and legacy), sysctl
  iproute2 iptables nftables util-linux mount procps
  # the lab: haproxy sidecars, nginx server, wrk client (demo, bench), python3 (the lab's programs
  # in its pods, src/lab/py), openssl (test API server); flake8 lints that Python (npm run lint)
  haproxy nginx wrk python3 openssl ca-certificates flake8
  # the kernel matrix (npm run test:kernels): Debian's kernel booted in QEMU from an initramfs of
  # busybox and the modules it needs (kmod's depmod indexes them; the guest's modprobe loads more)
  qemu-system-x86 busybox-static cpio kmod
  # the image (scripts/image.sh) and the DaemonSet run in a real container runtime: podman with
  # crun, its base made from Debian's packages by mmdebstrap (no registry is needed); CNI mode's
  # tests: the reference plugins (bridge, host-local) and catatonit, the pods' infra process
  podman crun mmdebstrap uidmap fuse-overlayfs slirp4netns containernetworking-plugins catatonit
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # Services are not started by the lab's packages: the lab runs its own nginx and haproxy in pods.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# crun refuses to start containers on a hybrid cgroup host whose v2 hierarchy holds a controller
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"). Where v2 holds
# one that no v2 cgroup uses and v1 lacks (hugetlb on some of these machines), it is mounted in
# v1 beside the others, as systemd's hybrid layout has it.
unified=/sys/fs/cgroup/unified
if [ -f "$unified/cgroup.controllers" ] && [ -z "$(cat "$unified/cgroup.subtree_control")" ]; then
  for controller in $(cat "$unified/cgroup.controllers"); do
    [ -e "/sys/fs/cgroup/$controller" ] && continue
    echo "setup: mounting the $controller cgroup controller in v1 (for crun on this hybrid host)"
    mkdir "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" "$controller" "/sys/fs/cgroup/$controller"
  done
fi
npm ci --no-audit --no-fund
npm run build
