"""Backend selection shared by every op.

Order of precedence: the op's ``backend=`` argument, then the ``ADAPTKERN_BACKEND``
environment variable, then the default: CUDA tensors -> the op's preferred GPU backend,
CPU tensors -> ``"cpu"`` (PyTorch's optimised CPU kernels, composed), anything else (meta)
-> ``"reference"``. Triton on CPU tensors runs only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the kernels are imported).

Traceable: ``torch.compile(fullgraph=True)`` traces :func:`resolve_backend`. What it asks of
the environment (is Triton importable, is its interpreter on, does it work with this NumPy)
is computed once, outside the graph, by functions marked
``torch.compiler.assume_constant_result``; their caches are plain dicts, because Dynamo
traces through an ``lru_cache`` wrapper (and so into ``importlib``).
"""

import importlib
import os
import re

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "triton", "cuda")
# Device types the "cpu" backend takes: meta tensors only ever reach the fake impls.
_CPU_DEVICE_TYPES = ("cpu", "meta")
ENV_VAR = "ADAPTKERN_BACKEND"


_ENVIRONMENT = {}


# torch.amp.is_autocast_available per device type. Torch 2.11's Dynamo cannot trace it (an
# op calling it under torch.compile(fullgraph=True) failed there), so the device types a
# traced op meets are asked once, here, outside any trace.
_AUTOCAST_AVAILABLE = {kind: torch.amp.is_autocast_available(kind) for kind in ("cpu", "cuda", "meta")}


def autocast_available(device_type: str) -> bool:
    """Whether autocast exists for ``device_type`` (meta: no), remembered per type."""
    known = _AUTOCAST_AVAILABLE.get(device_type)
    if known is None:
        known = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return known


@torch.compiler.assume_constant_result
def _triton_state():
    """(importable, interpreting, reason) for Triton, computed once."""
    if "triton" not in _ENVIRONMENT:
        try:
            utils = importlib.import_module("adaptkern.kernels._utils")
            _ENVIRONMENT["triton"] = (True, utils.INTERPRET, "")
        except ImportError as err:
            _ENVIRONMENT["triton"] = (False, False, f"triton is not importable ({err})")
    return _ENVIRONMENT["triton"]


def _major_minor(version: str) -> tuple:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def find_interpreter_problem() -> str:
    """Why the Triton interpreter cannot run here, or "" if it can (uncached). Known case:
    Triton 3.6's interpreter calls int() on 1-element arrays (``range(tl.program_id(0), ...)``),
    which NumPy 2.4 made an error; Triton 3.7 fixed it."""
    numpy, triton = importlib.import_module("numpy"), importlib.import_module("triton")
    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter does not work with NumPy {numpy.__version__} "
                "(it converts 1-element arrays with int(), an error since NumPy 2.4): install 'numpy<2.4' "
                "or Triton >= 3.7 to run Triton kernels on the CPU")
    return ""


@torch.compiler.assume_constant_result
def interpreter_problem() -> str:
    """:func:`find_interpreter_problem`, computed once."""
    if "interpreter" not in _ENVIRONMENT:
        _ENVIRONMENT["interpreter"] = find_interpreter_problem()
    return _ENVIRONMENT["interpreter"]


def triton_available() -> bool:
    return _triton_state()[0]


def triton_interpreting() -> bool:
    return _triton_state()[1]


def kernels(name: str):
    """Import ``adaptkern.kernels.<name>`` on first use (keeps ``import adaptkern`` light)."""
    return importlib.import_module(f"adaptkern.kernels.{name}")


def available_backends(device) -> list:
    """Backends that can run on ``device`` in this process."""
    device = torch.device(device)
    names = ["reference"]
    if device.type in _CPU_DEVICE_TYPES:
        names.append("cpu")
    importable, interpreting, _ = _triton_state()
    if importable and (device.type == "cuda" or interpreting):
        names.append("triton")
    if device.type == "cuda" and _ext.cuda_extension_built():
        names.append("cuda")
    return names


def resolve_backend(backend, device, *, op: str, gpu_preference=("triton",), cuda_supported=False) -> str:
    """Pick and check the backend for one call of ``op`` on tensors living on ``device``.

    ``gpu_preference`` orders the default on CUDA tensors; ``cuda_supported`` says whether
    the op has a csrc implementation at all.
    """
    device = torch.device(device)
    chosen = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    source = "backend" if backend is not None else ENV_VAR
    if chosen is None:
        if device.type == "cpu":
            return "cpu"
        if device.type != "cuda":
            return "reference"
        for name in gpu_preference:
            if name in available_backends(device) and (name != "cuda" or cuda_supported):
                return name
        return "reference"
    if chosen not in BACKENDS:
        raise ValueError(f"{op}: {source} must be one of {BACKENDS} or None, got {chosen!r}")
    if chosen == "cpu":
        if device.type not in _CPU_DEVICE_TYPES:
            raise RuntimeError(f"{op}: backend='cpu' needs CPU tensors, got tensors on {device}; use "
                               "backend='triton', 'cuda' or 'reference'")
    elif chosen == "triton":
        importable, interpreting, reason = _triton_state()
        if not importable:
            raise RuntimeError(f"{op}: backend='triton' is unavailable: {reason}")
        if device.type != "cuda" and not interpreting:
            raise RuntimeError(
                f"{op}: backend='triton' got {device.type} tensors; Triton runs them only under its "
                "interpreter: set TRITON_INTERPRET=1 before importing adaptkern, or move the tensors to CUDA"
            )
        if device.type != "cuda" and interpreter_problem():
            raise RuntimeError(f"{op}: backend='triton' on {device.type} tensors: {interpreter_problem()}")
    elif chosen == "cuda":
        if not cuda_supported:
            raise ValueError(f"{op}: has no 'cuda' backend; use 'triton', 'cpu' or 'reference'")
        _ext.cuda_extension()  # raises with the reason when not built
        if device.type != "cuda":
            raise RuntimeError(f"{op}: backend='cuda' needs CUDA tensors, got tensors on {device}")
    return chosen
