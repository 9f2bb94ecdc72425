"""The benchmark engine behind ``adaptkern bench``.

A ``Case`` is one op at one shape and dtype: its implementations (adaptkern's and the
peers'), a float32 reference, and the exact FLOPs and minimum bytes of each mode ("fwd",
"fwd_bwd"). For every mode, every implementation is first checked against the reference
(relative Frobenius error of the output and of every gradient, ``CHECK_TOL`` per dtype),
then timed (``timing.time_ms``: CUDA events through triton.testing.do_bench on a GPU).

* A mismatch raises ``ResultMismatch``: a wrong result must never be timed.
* A peer that cannot run (not installed, needs CUDA, fails to compile) gives a row with
  ``ms=None`` and a ``note``; adaptkern's first implementation failing is an error (a
  second backend declining a dtype with TypeError / ValueError is a note).
* Rows carry exact TFLOP/s and GB/s, the fraction of the device's measured peaks, and
  the ratios between implementations measured in the same run (``add_ratios``).
"""

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .._io import atomic_write
from ..cpu import native
from .peaks import fractions
from .timing import gbps, time_ms, tflops

FORMAT, VERSION = "adaptkern.bench", 1
MODES = ("fwd", "fwd_bwd")
CHECK_TOL = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


class ResultMismatch(AssertionError):
    """An implementation's result disagrees with the reference."""


@dataclass
class Impl:
    """One implementation. ``make(mode)`` -> (run, result): ``run()`` is what is timed,
    ``result()`` runs it once and returns {label: tensor} in the reference's layout.
    ``make=None`` (with a ``note``) marks an implementation unavailable here."""

    name: str
    make: Optional[Callable] = None
    ours: bool = False
    note: Optional[str] = None
    modes: tuple = MODES


@dataclass
class Case:
    op: str
    name: str
    dtype: str
    impls: list
    reference: Callable  # mode -> {label: tensor}
    flops: dict  # mode -> exact FLOPs
    nbytes: dict  # mode -> minimum bytes moved
    params: dict = field(default_factory=dict)
    modes: tuple = MODES


def closures(fn, leaves, grad_out, mode, labels, unpad_out=None, unpad_grad=None):
    """(run, result) for ``fn(*leaves) -> out``: forward without autograd, or forward +
    ``out.backward(grad_out)`` into fresh gradients of ``leaves`` (reported under ``labels``).
    ``unpad_out`` / ``unpad_grad`` map the implementation's layout to the reference's."""
    unpad_out = unpad_out or (lambda t: t)
    unpad_grad = unpad_grad or (lambda t: t)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*leaves)
        return run, lambda: {"out": unpad_out(run())}
    leaves = [t.detach().requires_grad_(True) for t in leaves]

    def run():
        for t in leaves:
            t.grad = None
        out = fn(*leaves)
        out.backward(grad_out)
        return out

    def result():
        got = {"out": unpad_out(run().detach())}
        got.update({label: unpad_grad(t.grad) for label, t in zip(labels, leaves)})
        return got
    return run, result


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (inf on a shape mismatch or non-finite)."""
    if value is None or tuple(value.shape) != tuple(reference.shape):
        return float("inf")
    value, reference = value.detach().double(), reference.detach().double()
    if not torch.isfinite(value).all():
        return float("inf")
    scale = reference.norm().item()
    diff = (value - reference).norm().item()
    return diff / scale if scale > 0 else diff


def check_result(case: Case, impl: str, mode: str, got: dict, expected: dict) -> dict:
    """Relative error per label; raises ResultMismatch above ``CHECK_TOL[case.dtype]``."""
    tol = CHECK_TOL[case.dtype]
    errors = {}
    for label, ref in expected.items():
        errors[label] = rel_error(got.get(label), ref)
        if not errors[label] <= tol:
            raise ResultMismatch(f"{case.op} {case.name} {mode} {case.dtype}: {impl} {label} relative error "
                                 f"{errors[label]:.3e} > {tol:.0e} against the reference: its timing would be "
                                 "meaningless")
    return errors


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def run_case(case: Case, device, *, rep_ms: float = 100.0) -> list:
    """Rows of one case: every (mode, implementation), checked then timed, with ratios."""
    device = torch.device(device)
    primary = next((impl for impl in case.impls if impl.ours), None)
    rows = []
    for mode in case.modes:
        expected = case.reference(mode)
        group = []
        for impl in case.impls:
            row = dict(op=case.op, case=case.name, impl=impl.name, ours=impl.ours, mode=mode, dtype=case.dtype,
                       params=dict(case.params), flops=case.flops[mode], bytes=case.nbytes[mode], ms=None, p20=None,
                       p80=None, tflops=None, gbps=None, max_rel_error=None, note=impl.note)
            group.append(row)
            if impl.make is None or mode not in impl.modes:
                row["note"] = impl.note or f"no {mode} implementation"
                continue
            try:
                run, result = impl.make(mode)
                errors = check_result(case, impl.name, mode, result(), expected)
                timing = time_ms(run, device=device, rep_ms=rep_ms)
            except ResultMismatch:
                raise
            except Exception as error:
                # A peer that cannot run here is skipped; adaptkern's primary implementation must
                # run; a secondary backend may decline a configuration (TypeError / ValueError).
                if impl is primary or (impl.ours and not isinstance(error, (TypeError, ValueError))):
                    raise
                row["note"] = f"skipped, failed to run: {_short(error)}"
                continue
            row.update(ms=timing["median"], p20=timing["p20"], p80=timing["p80"],
                       tflops=tflops(row["flops"], timing["median"]) if row["flops"] else None,
                       gbps=gbps(row["bytes"], timing["median"]) if row["bytes"] else None,
                       max_rel_error=max(errors.values()))
        rows += add_ratios(group)
    return rows


def add_ratios(group: list) -> list:
    """Within one (case, mode) group: each adaptkern row gets ``speedup_vs`` {impl: that
    impl's ms / this row's ms} over every other timed row; every other row gets
    ``adaptkern_speedup`` = its ms / the first adaptkern row's ms (> 1: adaptkern faster)."""
    timed = [r for r in group if r["ms"]]
    first = next((r for r in timed if r["ours"]), None)
    for row in group:
        if row["ours"]:
            row["speedup_vs"] = {o["impl"]: o["ms"] / row["ms"] for o in timed if o is not row} if row["ms"] else {}
        else:
            row["adaptkern_speedup"] = row["ms"] / first["ms"] if row["ms"] and first else None
    return group


def with_fractions(rows: list, peaks: dict) -> list:
    for row in rows:
        row.update(fractions(row, peaks))
    return rows


# ----------------------------------------------------------------------------- metadata and files

def _git(*args) -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _driver() -> Optional[str]:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def metadata(device, *, command=None, quick=False, rep_ms=None) -> dict:
    """Device, versions, git commit and the command line of this run."""
    import adaptkern

    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    on_gpu = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if on_gpu else cpu_name(), "device_type": device.type,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "driver": _driver() if on_gpu else None,
            "python": platform.python_version(), "adaptkern": adaptkern.__version__,
            "cuda_extension_built": adaptkern.cuda_extension_built(),
            # whether the CPU rows timed the cpu backend's compiled attention kernel
            "cpu_attention_kernel": native.build_status() if device.type == "cpu" else None,
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "command": command or " ".join(["adaptkern"] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": bool(quick), "rep_ms": rep_ms,
            "tf32": False}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def results_path(out_dir, meta: dict, suffix: str = ".json") -> str:
    """``<out_dir>/<device>-<date>.json`` (``-2``, ``-3``... when that name is taken)."""
    stem = os.path.join(out_dir, f"{slug(meta['device'])}-{meta['date'][:10]}")
    path, n = stem + suffix, 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}{suffix}"
    return path


def validate(data: dict) -> dict:
    """Check a results dict (as written by ``adaptkern bench``); raises ValueError naming
    what is missing or mistyped. Returns ``data``."""
    def need(obj, key, types, where):
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], types):
            raise ValueError(f"benchmark results: {where}{key!r} missing or not {types}")
        return obj[key]

    if need(data, "format", str, "") != FORMAT or need(data, "version", int, "") != VERSION:
        raise ValueError(f"benchmark results: not a {FORMAT} v{VERSION} file")
    meta = need(data, "meta", dict, "")
    for key in ("device", "device_type", "torch", "command", "date"):
        need(meta, key, str, "meta ")
    need(data, "peaks", dict, "")
    need(data, "notes", list, "")
    need(data, "errors", list, "")
    number = (int, float, type(None))
    for i, row in enumerate(need(data, "rows", list, "")):
        for key in ("op", "case", "impl", "mode", "dtype"):
            need(row, key, str, f"rows[{i}] ")
        for key in ("ms", "tflops", "gbps", "frac_peak_flops", "frac_peak_bw"):
            need(row, key, number, f"rows[{i}] ")
        need(row, "ours", bool, f"rows[{i}] ")
        if row["ms"] is None and not row.get("note"):
            raise ValueError(f"benchmark results: rows[{i}] has no time and no note saying why")
    return data


def save_rows(path, device, rows: list, **meta) -> str:
    """Write one op script's rows (``benchmarks/bench_<op>.py``) to ``path`` as JSON with this
    run's :func:`metadata` (plus ``meta``), atomically; returns the path."""
    # These scripts leave PyTorch's TF32 settings as they are: record them, not run_case's False.
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    run = {**metadata(device, command=" ".join(["python"] + sys.argv)), "tf32": tf32}
    data = {"meta": {**run, **meta}, "rows": rows}
    text = json.dumps(data, indent=1) + "\n"
    return atomic_write(path, lambda f: f.write(text), text=True)


def write_results(data: dict, out_dir, path=None) -> str:
    """Validate and write ``data`` to ``path`` (default: a new ``results_path`` in ``out_dir``),
    atomically; returns the path."""
    text = json.dumps(validate(data), indent=1) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    return atomic_write(path or results_path(out_dir, data["meta"]), lambda f: f.write(text), text=True)
