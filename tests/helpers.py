"""Test helpers: error measures with tolerances that mean something, and GPU codegen
checks that compile Triton kernels for sm_80 / sm_90 without a GPU, exactly as a launch
would (:func:`compile_launches`, from adaptkern.bench.static: the same machinery as
`adaptkern bench --static`)."""

import torch

from adaptkern.bench.static import compile_launches  # noqa: F401  (re-exported for the tests)

# Relative (Frobenius) error a result in this dtype may show against a float64 reference.
REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}


def torch_opts(opts: dict) -> dict:
    """adaptkern's resize options (``interpolation=``) as F.interpolate and the reference's
    internal helpers spell them (``mode=``)."""
    return {("mode" if k == "interpolation" else k): v for k, v in opts.items()}


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (0 when both are all zero)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    if not torch.isfinite(value).all():
        return float("inf")
    diff = (value - reference).norm().item()
    scale = reference.norm().item()
    return diff / scale if scale > 0 else diff


def assert_rel_close(value, reference, dtype=None, *, name="value", tol=None):
    """value matches a float64 reference to the relative tolerance of ``dtype``."""
    tol = REL_TOL[dtype or value.dtype] if tol is None else tol
    assert value.shape == reference.shape, f"{name}: shape {tuple(value.shape)} != {tuple(reference.shape)}"
    err = rel_error(value, reference)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def assert_as_accurate_as_torch(value, reference, torch_value, *, name="value", factor=2.0, floor=None):
    """flash-attn's criterion: the kernel's error against the float64 reference is at most
    ``factor`` times plain PyTorch's error in the same dtype (plus a small floor)."""
    floor = REL_TOL[value.dtype] / 10 if floor is None else floor
    err, torch_err = rel_error(value, reference), rel_error(torch_value, reference)
    assert err <= factor * torch_err + floor, (
        f"{name}: relative error {err:.3e} > {factor} x PyTorch's {torch_err:.3e} + {floor:.1e}"
    )
