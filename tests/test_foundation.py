"""Package layout, CUDA extension build, dispatch defaults and the CLI."""

import importlib
import json
import shutil
import subprocess
import sys

import pytest
import torch

import adaptkern as ak
from adaptkern import _backend, _checks, _ext


def test_kernels_subpackage_is_importable():
    module = importlib.import_module("adaptkern.kernels.pack")
    assert hasattr(module, "pack_rows")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the extension is optional")
def test_cuda_extension_built_and_imports():
    # With nvcc present the dev/CI install forces the build (ADAPTKERN_BUILD_CUDA=1).
    assert _ext.cuda_extension_built(), f"adaptkern._C missing: {_ext._IMPORT_ERROR}"
    module = _ext.cuda_extension()
    assert module.cuda_runtime_version() >= 11080
    for name in ("pack_rows", "unpack_rows"):
        assert callable(getattr(module, name))
    if not torch.cuda.is_available():
        assert module.device_count() == 0


def test_default_backend_is_cpu_on_cpu(monkeypatch):
    monkeypatch.delenv("ADAPTKERN_BACKEND", raising=False)
    assert _backend.resolve_backend(None, "cpu", op="t") == "cpu"
    assert _backend.resolve_backend(None, "meta", op="t") == "reference"
    assert "cpu" in _backend.available_backends("cpu") and "cpu" not in _backend.available_backends("cuda")
    with pytest.raises(RuntimeError, match="backend='cpu' needs CPU tensors"):
        _backend.resolve_backend("cpu", "cuda", op="t")
    monkeypatch.setenv("ADAPTKERN_BACKEND", "triton")
    if _backend.triton_interpreting():
        assert _backend.resolve_backend(None, "cpu", op="t") == "triton"
    assert _backend.resolve_backend("reference", "cpu", op="t") == "reference"


@pytest.mark.parametrize("triton_version,numpy_version,broken", [
    ("3.6.0", "2.4.6", True), ("3.6.1", "2.3.5", False), ("3.7.0", "2.4.0", False), ("3.9.0+git1a2b", "2.5.0", False),
])
def test_interpreter_problem_names_the_triton_numpy_clash(monkeypatch, triton_version, numpy_version, broken):
    import numpy
    import triton

    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    problem = _backend.find_interpreter_problem()
    assert bool(problem) == broken
    if broken:
        assert "numpy<2.4" in problem and triton_version in problem


def test_cli_info_reports_backends_and_extension():
    proc = subprocess.run([sys.executable, "-m", "adaptkern", "info", "--json"], capture_output=True, text=True,
                          check=True)
    info = json.loads(proc.stdout)
    assert info["torch"] == torch.__version__
    assert info["cuda_extension_built"] == ak.cuda_extension_built()
    assert "reference" in info["backends"]["cpu"]
    from adaptkern.cpu import native
    assert info["cpu_attention_kernel"] == native.build_status()
    help_text = subprocess.run([sys.executable, "-m", "adaptkern", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "info" in help_text


def test_validation_context_turns_value_checks_off_and_restores_the_setting(monkeypatch):
    from adaptkern._checks import validation

    monkeypatch.delenv("ADAPTKERN_VALIDATE", raising=False)
    bad = torch.tensor([0, 3, 2], dtype=torch.int32)  # decreasing: only a value check sees it
    with pytest.raises(ValueError, match="non-decreasing"):
        ak.varlen_attention(*(torch.zeros(2, 1, 8) for _ in range(3)), bad, bad, 3, 3)
    for outer in (None, True, False):
        ak.set_validation(outer)
        try:
            with validation(False):
                assert not _checks.value_checks_enabled(bad)
                with validation(True):
                    assert _checks.value_checks_enabled(bad)
                assert not _checks.value_checks_enabled(bad)
            assert _checks._validate_override is outer
            with pytest.raises(RuntimeError), validation(False):
                raise RuntimeError("restored on errors too")
            assert _checks._validate_override is outer
        finally:
            ak.set_validation(None)
