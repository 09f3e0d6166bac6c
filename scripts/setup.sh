#!/usr/bin/env bash
# Installs what merbridge needs on a Debian/Ubuntu node (as root), then builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  clang llvm libbpf-dev linux-libc-dev libc6-dev bpftool iproute2 iptables nftables haproxy util-linux python3 >/dev/null
npm ci --no-audit --no-fund
npm run build
