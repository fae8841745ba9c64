#!/usr/bin/env bash
# Install PyTorch into the given Python environment, CPU build unless a GPU is present.
# A bare `pip install torch` on Linux pulls a multi-GB CUDA build even on machines without a GPU.
set -euo pipefail
PY="${1:?usage: install_torch.sh PYTHON}"
TORCH_CPU_VERSION="${TORCH_CPU_VERSION:-2.13.0}"
if "$PY" -c "import torch" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$PY" -m pip install "torch>=2.4"
fi
# No GPU: a CPU wheel from local wheel folders (pip's find-links) if the machine has one (its
# dependencies then come from the usual index), else PyTorch's CPU index.
if "$PY" -m pip install -q --no-index --no-deps "torch==${TORCH_CPU_VERSION}" 2>/dev/null; then
  exec "$PY" -m pip install -q "torch==${TORCH_CPU_VERSION}"
fi
exec "$PY" -m pip install "torch==${TORCH_CPU_VERSION}" --index-url https://download.pytorch.org/whl/cpu
