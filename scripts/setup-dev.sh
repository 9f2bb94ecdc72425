#!/usr/bin/env bash
# Creates the dev/CI virtual environment (default .venv) and installs adaptkern into it
# with its test extras. CPU torch is pinned here (2.13.0, the CPU wheel on our machines;
# set TORCH_SPEC/TORCH_INDEX_URL to change it); users installing adaptkern bring their own.
# The CUDA extension is built whenever nvcc is found (ADAPTKERN_BUILD_CUDA overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TRITON_SPEC=${TRITON_SPEC:-triton>=3.6,<3.10}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip setuptools wheel pybind11 ninja

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing $TORCH_SPEC"
    pip install -q "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
pip install -q "$TRITON_SPEC"

if [ -z "${ADAPTKERN_BUILD_CUDA:-}" ]; then
    if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
        export ADAPTKERN_BUILD_CUDA=1
    else
        export ADAPTKERN_BUILD_CUDA=0
        echo "nvcc not found: skipping the optional CUDA extension"
    fi
fi
# No build isolation: the build needs only setuptools + pybind11, installed above.
pip install -q --no-build-isolation -e ".[test]"

# The integrations' extras, so their tests run here and in CI. The installed torch is pinned
# while they install (nothing may replace it). timm is installed without torchvision: the only
# torchvision for torch 2.13 in the registry (0.28.0) is built against torch's CUDA libraries
# and fails to import beside the CPU torch ("operator torchvision::nms does not exist"), and
# timm needs it only for data transforms; the tests stand a stub in for it
# (tests/_torchvision_stub.py, used only when no working torchvision imports).
TORCH_NOW=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
pip install -q "transformers>=4.53" "torch==$TORCH_NOW"
pip install -q --no-deps "timm>=1.0"
pip install -q pyyaml huggingface_hub safetensors "torch==$TORCH_NOW"
"$VENV/bin/adaptkern" info
