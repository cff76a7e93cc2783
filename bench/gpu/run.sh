#!/usr/bin/env bash
# Runs the bench on this machine's GPU through Dawn's Vulkan backend, from the unpacked archive of
# pack.sh (no network, no installed Node needed). Prints the kernel table, the end-to-end figures and
# the decode speed of a Llama-3.2-1B-shaped random bf16 model against the memory-bandwidth limit
# (weight bytes per token / the streaming ceiling, the best read kernel, measured in the same run), and writes the JSON results
# (and, with --sweep, the tuned matmul variants) into the output folder.
#
# Usage: ./run.sh [--out DIR] [--model llama-1b|smollm2-135m|tiny] [--adapter hardware|lavapipe|swiftshader]
#                 [--quick] [--sweep] [--no-kernels] [-- extra bench options]
# Dry run on a machine without a GPU: ./run.sh --adapter lavapipe --model tiny --quick
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/results
model=llama-1b
adapter=${ABLITERATE_ADAPTER:-hardware}
sections=kernels,e2e
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --adapter) adapter=$2; shift 2 ;;
    --quick) extra+=(--quick); shift ;;
    --sweep) extra+=(--sweep); shift ;;
    --no-kernels) sections=e2e; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

export PATH="$here/bin:$PATH"
export LD_LIBRARY_PATH="$here/vulkan/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ABLITERATE_COMMIT=$(cat "$here/project/COMMIT" 2>/dev/null || echo unknown)
# The NVIDIA driver's Vulkan manifest, where the loader's default search paths may miss it (containers).
if [ "$adapter" = hardware ] && [ -z "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ]; then
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    if [ -f "$icd" ]; then export VK_ICD_FILENAMES=$icd; break; fi
  done
fi
echo "node $(node --version); adapter $adapter; model $model; VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-(loader default)}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

cd "$here/project"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
set -o pipefail
node node_modules/tsx/dist/cli.mjs bench/main.ts --adapter "$adapter" --sections "$sections" --e2e-model "$model" \
  --json "$out/bench-$stamp.json" "${extra[@]}" 2>&1 | tee "$out/bench-$stamp.log"
cp src/kernels/tuning/*.json "$out/" 2>/dev/null || true
echo "results in $out"
