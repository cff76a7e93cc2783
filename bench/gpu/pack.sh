#!/usr/bin/env bash
# Packs what the bench needs on a Linux x86-64 GPU server with no network into one archive:
#   bin/node                 this machine's Node binary ($(command -v node))
#   project/                 the repository's sources, shaders, bench and node_modules (runtime
#                            packages only: no TypeScript, linters, test runners, browsers, and only
#                            the linux-x64 build of Dawn)
#   vulkan/                  libvulkan.so.1 from Debian's libvulkan1 (apt-get download + dpkg -x)
#   run.sh, README.md
# Usage: bench/gpu/pack.sh [output.tar.gz]     (default bench/gpu/dist/abliterate-bench.tar.gz)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/bench/gpu/dist/abliterate-bench.tar.gz}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
if [ "$(uname -m)" != x86_64 ]; then
  echo "pack.sh: this machine is $(uname -m); the server needs x86-64 builds of node and Dawn" >&2
  exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/project" "$stage/vulkan" "$(dirname "$out")"

echo "node: $(command -v node) ($(node --version))"
cp "$(readlink -f "$(command -v node)")" "$stage/bin/node"

echo "project: $root"
(cd "$root" && node scripts/embed-shaders.js)
# Sources the bench runs (tracked and new files alike), without build outputs and results.
(cd "$root" && tar cf - --exclude='bench/results' --exclude='bench/gpu/dist' --exclude='bench/scratch' \
  package.json tsconfig.json src shaders scripts bench $( [ -d models ] && echo models ) $( [ -d data ] && echo data )) | tar xf - -C "$stage/project"
# node_modules without what only development needs.
(cd "$root" && tar cf - \
  --exclude='node_modules/typescript' --exclude='node_modules/playwright-core' --exclude='node_modules/eslint*' \
  --exclude='node_modules/@eslint*' --exclude='node_modules/@typescript-eslint' --exclude='node_modules/typescript-eslint' \
  --exclude='node_modules/vite' --exclude='node_modules/vitest' --exclude='node_modules/@vitest' --exclude='node_modules/rollup' \
  --exclude='node_modules/@rollup' --exclude='node_modules/fast-check' --exclude='node_modules/@types' \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' --exclude='node_modules/webgpu/dist/linux-arm64' \
  node_modules) | tar xf - -C "$stage/project"

echo "vulkan loader: Debian libvulkan1"
debs=$(mktemp -d)
trap 'rm -rf "$stage" "$debs"' EXIT
if ! (cd "$debs" && apt-get download libvulkan1 >/dev/null 2>&1); then
  apt-get update >/dev/null
  (cd "$debs" && apt-get download libvulkan1 >/dev/null)
fi
dpkg -x "$debs"/libvulkan1_*.deb "$stage/vulkan"
ls "$stage"/vulkan/usr/lib/x86_64-linux-gnu/libvulkan.so.1 >/dev/null

cp "$root/bench/gpu/run.sh" "$root/bench/gpu/README.md" "$stage/"
chmod +x "$stage/run.sh" "$stage/bin/node"
git -C "$root" rev-parse --short HEAD > "$stage/project/COMMIT" 2>/dev/null || echo unknown > "$stage/project/COMMIT"
tar czf "$out" -C "$stage" .
echo "wrote $out ($(du -h "$out" | cut -f1))"
