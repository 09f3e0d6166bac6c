#!/usr/bin/env bash
# Build the merbridge image with podman where no container registry is reachable: its base is made
# from Debian's packages (mmdebstrap) with this machine's Node.js 20 copied in, then Containerfile
# is built on it (BASE). With a registry, `podman build -f Containerfile .` alone does it.
#
#   scripts/image.sh [TAG]        TAG defaults to merbridge:<package version>
#   scripts/image.sh --base       only the base, whose name it prints (the CNI tests' pods run on it)
#
# The base is made once and kept (localhost/merbridge-base:bookworm-node20); the image build
# reuses podman's layer cache, so a second run rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-merbridge:$(node -p 'require("./package.json").version')}
base=localhost/merbridge-base:bookworm-node20

if ! podman image exists "$base"; then
  node_bin=$(command -v node)
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  [ -f "$npm_dir/bin/npm-cli.js" ] || { echo "image.sh: npm not found beside $node_bin" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "image.sh: making $base from Debian 12 packages and $node_bin ($(node --version))"
  # minbase: apt and dpkg, for the Containerfile's own apt-get; Node.js runs on its libstdc++
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,libstdc++6 \
    --customize-hook="copy-in $node_bin /usr/bin" \
    --customize-hook="mkdir -p \"\$1/usr/lib/node_modules\"" \
    --customize-hook="copy-in $npm_dir /usr/lib/node_modules" \
    --customize-hook="ln -s ../lib/node_modules/npm/bin/npm-cli.js \"\$1/usr/bin/npm\"" \
    --customize-hook="ln -s ../lib/node_modules/npm/bin/npx-cli.js \"\$1/usr/bin/npx\"" \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
  podman import --change 'CMD ["node"]' "$work/rootfs.tar" "$base" >/dev/null
fi
if [ "$tag" = --base ]; then
  echo "$base"
  exit 0
fi

# chroot isolation: the RUN steps need no OCI runtime (crun refuses hybrid cgroup hosts whose v2
# hierarchy holds a controller) and use the host's network
# npm's CA file (an egress proxy's CA beside the public ones) lent to the build stage, not kept
ca=()
cafile=$(npm config get cafile 2>/dev/null || true)
if [ -n "$cafile" ] && [ "$cafile" != null ] && [ -f "$cafile" ]; then
  ca=(--volume "$cafile:/run/merbridge-build-ca.crt:ro" --build-arg NPM_CONFIG_CAFILE=/run/merbridge-build-ca.crt)
fi
podman build --isolation chroot "${ca[@]}" --build-arg BASE="$base" -t "$tag" -f Containerfile .
size=$(podman image inspect "$tag" --format '{{.Size}}')
echo "image.sh: built $tag ($((size / 1024 / 1024)) MiB)"
