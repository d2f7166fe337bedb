#!/usr/bin/env bash
# The GPU check of the SAM backends (issue 3), as one short run on a machine with a GPU:
# build, encode (fp32 and bf16), batched decoding per point, and CoP's similarity on the device.
# Random weights (timings do not depend on them); nothing is downloaded.
#
#   scripts/device_check.sh [DEVICE] [OUT_DIR]      DEVICE defaults to cuda; OUT_DIR to ./device_check
#
# Needs python3 with PyTorch, numpy, scipy, scikit-image, threadpoolctl and tqdm, plus sam3 and
# segment-anything and their pure-Python needs (einops ftfy iopath regex timm pycocotools
# portalocker huggingface-hub). On a machine that cannot reach PyPI, carry them as wheels and
# install them with --no-deps into a folder on PYTHONPATH before running this script.
set -euo pipefail
device="${1:-cuda}"
out="${2:-device_check}"
models="${MODELS:-sam3 sam1-vit-b}"
here="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$here/python_server${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
{
  date -u
  python3 - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
  # shellcheck disable=SC2086
  python3 -m cop_server.models._torch_bench --models $models --device "$device" --batch-sizes 1 16 64 256
  python3 -c "from cop_server.speed import bench_device_index; bench_device_index(print)"
} 2>&1 | tee "$out/device_check.txt"
