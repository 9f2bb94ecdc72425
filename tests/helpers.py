"""Test helpers: error measures with tolerances that mean something, and GPU codegen
checks that compile Triton kernels for sm_80 / sm_90 without a GPU, exactly as a launch
would (:func:`compile_launches`)."""

import json
import os
import subprocess
import sys

import torch

# Relative (Frobenius) error a result in this dtype may show against a float64 reference.
REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}


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


_LAUNCH_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

arch, code = int(sys.argv[1]), sys.argv[2]
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


class CompileOnlyDriver:
    # What JITFunction.run asks of a driver, for an sm_<arch> GPU that is never launched on.
    def get_current_target(self):
        return GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def cuobjdump(cubin, flag):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([os.path.join(TOOLS, "cuobjdump"), flag, f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def hot_loop(sass):
    # The smallest loop (a backward branch's span) holding two or more tensor-core instructions.
    code = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = None
    for address, text in code:
        target = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            body = [t for a, t in code if int(target.group(1), 16) <= a <= address]
            tensor_core = sum(bool(re.search(r"\b(HGMMA|HMMA)\b", t)) for t in body)
            if tensor_core >= 2 and (best is None or len(body) < len(best)):
                best = body
    return best or []


launches = []
_run = JITFunction.run


def compile_instead(self, *args, grid, warmup, **kwargs):
    # The launch's own arguments and options through Triton's own binder (divisibility and
    # == 1 specialisation, num_warps, num_stages); warmup=True compiles and never launches.
    compiled = _run(self, *args, grid=grid, warmup=True, **kwargs)
    usage = cuobjdump(compiled.asm["cubin"], "-res-usage")
    regs, local = (int(x) for x in re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage).groups())
    loop = hot_loop(cuobjdump(compiled.asm["cubin"], "-sass"))
    md = compiled.metadata
    launches.append({"kernel": self.fn.__name__, "arch": arch, "shared": md.shared, "num_warps": md.num_warps,
                     "num_stages": md.num_stages, "regs": regs, "local": local, "hot_loop": len(loop),
                     "hot_loop_spills": sum(bool(re.search(r"\b(STL|LDL)\b", t)) for t in loop),
                     "constexprs": {k: v for k, v in kwargs.items() if isinstance(v, (bool, int))},
                     "wgmma": "wgmma" in compiled.asm["ptx"], "mma": "mma.sync" in compiled.asm["ptx"],
                     "tma": "cp.async.bulk.tensor" in compiled.asm["ptx"]})
    return compiled


triton.runtime.driver.set_active(CompileOnlyDriver())
JITFunction.run = compile_instead
exec(compile(code, "<launches>", "exec"), {})
print(json.dumps(launches))
"""


def compile_launches(code: str, archs=(80, 90)):
    """Run ``code`` (Python that calls kernel launchers on CPU tensors) once per SM arch in a
    subprocess, with Triton's driver replaced by one that compiles for that arch and never
    launches: every kernel is built exactly as that launch would build it on such a GPU (its
    grid, num_warps, num_stages and constexprs, and Triton's specialisation of the actual
    arguments), and launchers that read the device's arch see ``arch``.

    Returns one dict per launch (in order, archs one after another): kernel, arch, shared
    (bytes), num_warps, num_stages, regs, local (spilled bytes per thread), hot_loop (SASS
    instructions of the smallest loop with two or more tensor-core instructions, 0 if none)
    and hot_loop_spills (local loads / stores in it), constexprs (the launch's int / bool
    keyword arguments), and wgmma / mma / tma (used in the PTX)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    results = []
    for arch in archs:
        proc = subprocess.run([sys.executable, "-c", _LAUNCH_SCRIPT, str(arch), code], env=env,
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise AssertionError(f"compiling the launches for sm_{arch} failed:\n{proc.stderr[-6000:]}")
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    return results
