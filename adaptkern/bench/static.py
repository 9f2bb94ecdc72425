"""A static audit of the Triton kernels for GPUs this machine does not have: each kernel is
compiled for sm_80 / sm_90 exactly as its launch would build it (``compile_launches``) and
its SASS counted: registers, spilled bytes, shared memory, tensor-core use (mma / wgmma,
TMA) and the hot loop's instructions per unit of work. ``adaptkern bench --static`` prints
it; the codegen tests hold the kernels to recorded budgets with the same machinery.

A static count is a proxy for speed, not a speed: it says how much work each iteration
issues, not how the memory system or the scheduler keep up. Timings need a GPU.
"""

import json
import os
import subprocess
import sys

_LAUNCH_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile, time
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
    start = time.perf_counter()
    compiled = _run(self, *args, grid=grid, warmup=True, **kwargs)
    seconds = time.perf_counter() - start
    usage = cuobjdump(compiled.asm["cubin"], "-res-usage")
    regs, local = (int(x) for x in re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage).groups())
    loop = hot_loop(cuobjdump(compiled.asm["cubin"], "-sass"))
    md = compiled.metadata
    launches.append({"kernel": self.fn.__name__, "arch": arch, "compile_s": seconds, "shared": md.shared,
                     "num_warps": md.num_warps,
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

    Returns one dict per launch (in order, archs one after another): kernel, arch, compile_s
    (seconds Triton took to build it; a hit in Triton's cache takes milliseconds), shared
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
            raise RuntimeError(f"compiling the launches for sm_{arch} failed:\n{proc.stderr[-6000:]}")
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# Representative launches (bf16, the sizes of the speed goals): attention 8 x 2048 tokens,
# 16 heads, no mask; patch embedding 24 images 224 x 224 at p16, D 768 (a batch and a
# packed list); interpolation of a 16 x 12 grid to three NaFlex grids, D 192.
AUDIT_LAUNCHES = {
    "varlen_attention": """
import torch
from adaptkern.kernels import varlen_attention as fwd, varlen_attention_bwd as bwd
cu = torch.arange(0, 8 * 2048 + 1, 2048, dtype=torch.int32)
for d in (64, 128):
    q = torch.empty(8 * 2048, 16, d, dtype=torch.bfloat16)
    out, lse = fwd.forward(q, q, q, cu, cu, 2048, 2048, d ** -0.5, -1, -1)
    bwd.backward(q, q, q, q, out, lse, None, cu, cu, 2048, 2048, d ** -0.5, -1, -1)
""",
    "patch_embed": """
import torch
from adaptkern import _backend
kernels = _backend.kernels("patch_embed")
for packed in (False, True):
    batch = torch.randn(24, 3, 224, 224).to(torch.bfloat16)
    images = list(batch) if packed else batch
    weight, bias = torch.randn(768, 3, 16, 16).to(torch.bfloat16), torch.randn(768).to(torch.bfloat16)
    tokens = kernels.forward(images, weight, bias)
    kernels.grad_input(tokens, weight, images)
    kernels.grad_weight(tokens, images, 16, 16, torch.bfloat16)
""",
    "interp_pos_embed": """
import torch
from adaptkern import _backend
kernels = _backend.kernels("interp_pos_embed")
grids = [(14, 14), (7, 20), (1, 3)]
grid_sizes = torch.tensor(grids, dtype=torch.int32)
cu = torch.tensor([0] + [1 + h * w for h, w in grids], dtype=torch.int32).cumsum(0).to(torch.int32)
tokens = torch.randn(int(cu[-1]), 192).to(torch.bfloat16)
opts = dict(mode="bicubic", antialias=True, align_corners=False)
kernels.interp_forward(torch.randn(16, 12, 192), grid_sizes, cu, torch.empty_like(tokens), tokens=tokens,
                       num_prefix_tokens=1, **opts)
kernels.interp_backward(tokens, grid_sizes, cu, 16, 12, num_prefix_tokens=1, **opts)
""",
}

# The tile whose elements one hot-loop iteration advances, per kernel: attention kernels
# count (query, key) pairs; the patch-embedding GEMMs count output elements per 64-deep step.
WORK_TILE = {"_fwd_kernel": ("BLOCK_M", "BLOCK_N"), "_dkdv_kernel": ("BLOCK_M", "BLOCK_N"),
             "_dq_kernel": ("BLOCK_M", "BLOCK_N"), "_forward_kernel": ("BLOCK_M", "BLOCK_N"),
             "_grad_input_kernel": ("BLOCK_M", "BLOCK_K"), "_grad_weight_kernel": ("BLOCK_D", "BLOCK_K")}


def per_unit(launch: dict):
    """Hot-loop warp-instructions per unit of work (see ``WORK_TILE``) of one launch from
    ``compile_launches``, or None (no tensor-core loop, or a kernel without a work tile)."""
    tile = WORK_TILE.get(launch["kernel"])
    if not launch["hot_loop"] or tile is None or not all(k in launch["constexprs"] for k in tile):
        return None
    rows, cols = (launch["constexprs"][k] for k in tile)
    return launch["hot_loop"] * launch["num_warps"] / (rows * cols)


def _config(launch: dict) -> str:
    c = launch["constexprs"]
    keys = [k for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D", "PACKED") if k in c]
    return " ".join(f"{k}={c[k]}" for k in keys)


def audit_table(launches) -> str:
    """The launches of ``compile_launches`` as a text table, one row per launch."""
    header = (f"{'kernel':<22} {'sm':>3} {'config':<50} {'warps':>5} {'stages':>6} {'regs':>4} {'spill B':>7} "
              f"{'smem KiB':>8} {'tensor core':<11} {'loop':>5} {'loop spills':>11} {'per unit':>8}")
    lines = [header, "-" * len(header)]
    for r in launches:
        units = per_unit(r)
        cores = "+".join(name for name in ("wgmma", "mma", "tma") if r[name]) or "-"
        lines.append(f"{r['kernel']:<22} {r['arch']:>3} {_config(r):<50} {r['num_warps']:>5} {r['num_stages']:>6} "
                     f"{r['regs']:>4} {r['local']:>7} {r['shared'] / 1024:>8.1f} {cores:<11} {r['hot_loop']:>5} "
                     f"{r['hot_loop_spills']:>11} {'-' if units is None else f'{units:.3f}':>8}")
    return "\n".join(lines)


def run_audit(ops=None, archs=(90,), say=print) -> list:
    """Compile ``ops`` (default: every op of ``AUDIT_LAUNCHES``) for ``archs`` and print the
    table; returns the launches (dicts of ``compile_launches``, with "op" added)."""
    ops = list(AUDIT_LAUNCHES) if ops is None else list(ops)
    unknown = sorted(set(ops) - set(AUDIT_LAUNCHES))
    if unknown:
        raise ValueError(f"static audit: unknown op(s) {unknown}; expected some of {sorted(AUDIT_LAUNCHES)}")
    launches = []
    for op in ops:
        for launch in compile_launches(AUDIT_LAUNCHES[op], archs=archs):
            launches.append({"op": op, **launch})
    say("static audit (compiled as launched, SASS counted; a proxy for speed, not a timing):")
    say(audit_table(launches))
    say("per unit: hot-loop warp-instructions per (query, key) pair (attention) or per output element and "
        "64-deep step (patch embedding); spill B: local memory bytes per thread")
    return launches
