"""Benchmark cases for variable-length attention.

Implementations, on the same packed batch:

* ``adaptkern``: ``ak.varlen_attention`` (Triton on a GPU, the cpu backend on CPU, where
  ``adaptkern (reference)`` runs too);
* ``padded SDPA``: q/k/v zero-padded to (S, H, max_seqlen, D) beforehand (padding not
  timed, the baseline's best case) and ``F.scaled_dot_product_attention``: with
  ``is_causal=True`` for causal batches (right padding: no real query sees a padded key,
  what a user would write), else with a boolean key-padding mask;
* ``torch varlen (FA2)``: PyTorch's FlashAttention-2 varlen kernel through
  ``torch.nn.attention.varlen.varlen_attn`` (fwd and bwd), or
  ``torch.ops.aten._flash_attention_forward`` with cum_seq_q / cum_seq_k (fwd only) on
  builds without that module; CUDA only in torch (a row with a note elsewhere). Its row
  also carries ``peer_flops``: what FlopCounterMode books for that kernel (torch's formula
  counts every (query, key) pair, causal or not, so a causal batch is counted about twice);
  ``tflops`` uses the exact count for every row;
* ``FlexAttention (document mask)``: compiled ``flex_attention`` over the packed batch
  with a block mask built from per-token document ids; CUDA only.

Unavailable implementations give a row with ``ms=None`` and a ``note``. Each result
(out, and dq/dk/dv in fwd_bwd) is checked against the reference before it is timed.
TFLOP/s uses the exact FLOPs of ``ak.flops.attention_flops`` (allowed pairs only; fwd_bwd
adds the 2.5x backward), so padded work shows as lower throughput. The adaptkern row's
``speedup_vs`` maps each peer to peer_ms / adaptkern_ms (> 1: adaptkern is faster).
"""

import inspect

import torch
import torch.nn.functional as F

from ..flops.varlen_attention import attention_backward_flops, attention_flops
from ..ops.pack import cu_seqlens_from_lengths
from ..ops.varlen_attention import varlen_attention
from .timing import time_ms, tflops

# (name, length mix, target tokens per batch, causal); model width 2048 -> Hq = 2048 / D.
GPU_CASES = [("uniform-64-4096", "uniform", 32768, True), ("vit-49-1024", "vit", 32768, False)]
# On CPU, issue 15's goal cases: 8 equal lengths, and a spread mix (given as lists).
CPU_CASES = [("cpu-equal-8x128", [128] * 8, None, True),
             ("cpu-spread-8", [512, 32, 200, 8, 64, 16, 300, 24], None, True)]
GPU_HEAD_DIMS, CPU_HEAD_DIMS = (64, 128), (64,)
MODEL_WIDTH, CPU_MODEL_WIDTH = 2048, 512
REL_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 2e-5}
OURS = "adaptkern"


def sample_lengths(mix: str, target_tokens: int, seed: int = 0) -> list:
    """Sequence lengths until their sum reaches ``target_tokens``: "uniform" in [64, 4096],
    "vit" square patch grids with sides in [7, 32] (49 to 1024 tokens), "small" in [8, 64];
    a list is the lengths themselves."""
    if isinstance(mix, (list, tuple)):
        return list(mix)
    gen = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < target_tokens:
        if mix == "vit":
            lengths.append(int(torch.randint(7, 33, (), generator=gen)) ** 2)
        else:
            low, high = (64, 4096) if mix == "uniform" else (8, 64)
            lengths.append(int(torch.randint(low, high + 1, (), generator=gen)))
    return lengths


def _padded_sdpa(lengths, causal, device):
    """(callable on packed leaves -> padded tensors, attention on padded tensors, unpad)."""
    batch, longest = len(lengths), max(lengths)
    index = torch.cat([torch.arange(n) + b * longest for b, n in enumerate(lengths)]).to(device)
    valid = torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    mask = valid[:, None, None, :]  # keys: real tokens only; padded query rows are discarded
    if causal:  # right padding: real query i sees keys j <= i, all real; padded rows are dropped
        mask = None

    def pad(x):
        out = x.new_zeros(batch * longest, *x.shape[1:])
        out[index] = x
        return out.view(batch, longest, *x.shape[1:]).transpose(1, 2).detach()

    def attend(qp, kp, vp):
        return F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, is_causal=causal,
                                              enable_gqa=qp.shape[1] != kp.shape[1])

    def unpad(out):
        return out.transpose(1, 2).reshape(batch * longest, out.shape[1], out.shape[3])[index]

    return pad, attend, unpad


def _torch_varlen(cu, longest, causal, enable_gqa):
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        window = (-1, 0) if causal else (-1, -1)
        # torch 2.11's varlen_attn has no enable_gqa (2.13's has): GQA cases have no peer there.
        gqa = {"enable_gqa": True} if enable_gqa else {}
        if gqa and "enable_gqa" not in inspect.signature(varlen_attn).parameters:
            return None, "this torch's varlen_attn has no enable_gqa"
        return (lambda q, k, v: varlen_attn(q, k, v, cu, cu, longest, longest, window_size=window, **gqa)), None
    flash = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if flash is None:
        return None, "neither torch.nn.attention.varlen nor aten._flash_attention_forward in this torch"
    return (lambda q, k, v: flash(q, k, v, cu, cu, longest, longest, 0.0, causal, False)[0]), \
        "aten._flash_attention_forward: forward only (no torch.nn.attention.varlen)"


def torch_counted_flops(cu_seqlens, num_heads, head_dim):
    """{"fwd": F, "fwd_bwd": F + B}: the FLOPs torch's FlopCounterMode books for its flash
    varlen kernel on these sequences (its registered formulas, which ignore the causal mask),
    or None where this torch has no such formulas."""
    try:
        from torch.utils.flop_counter import _flash_attention_backward_flop, _flash_attention_forward_flop
    except ImportError:
        return None
    cu = cu_seqlens.to("cpu", torch.int32)
    longest = int(cu.diff().max()) if cu.numel() > 1 else 0
    x = torch.empty(int(cu[-1]), num_heads, head_dim, device="meta")
    forward = _flash_attention_forward_flop(x, x, x, cu, cu, longest, longest)
    backward = _flash_attention_backward_flop(x, x, x, x, x, None, cu, cu, longest, longest)
    return {"fwd": forward, "fwd_bwd": forward + backward}


def _flex(lengths, causal, device, enable_gqa):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        return None, f"FlexAttention unavailable: {err}"
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    starts = torch.tensor([0] + lengths[:-1], device=device).cumsum(0)
    position = torch.arange(doc.numel(), device=device) - starts[doc]

    def document(b, h, q_idx, kv_idx):
        same = doc[q_idx] == doc[kv_idx]
        return same & (position[kv_idx] <= position[q_idx]) if causal else same

    block_mask = create_block_mask(document, None, None, doc.numel(), doc.numel(), device=device)
    compiled = torch.compile(flex_attention)

    def run(q, k, v):
        out = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                       block_mask=block_mask, enable_gqa=enable_gqa)
        return out[0].transpose(0, 1)

    return run, None


def implementations(lengths, causal, q, k, v, device):
    """{name: (packed forward fn(q, k, v) -> out, pad fn or None, unpad fn or None, note)}."""
    cu = cu_seqlens_from_lengths(lengths, device)
    longest, gqa = max(lengths), q.shape[1] != k.shape[1]
    def ours(backend):
        return lambda q, k, v: varlen_attention(q, k, v, cu, cu, longest, longest, causal=causal, backend=backend)

    impls = {OURS: (ours("triton" if device.type == "cuda" else "cpu"), None, None, None)}
    if device.type != "cuda":
        impls[f"{OURS} (reference)"] = (ours("reference"), None, None, None)
    pad, attend, unpad = _padded_sdpa(lengths, causal, device)
    impls["padded SDPA"] = (attend, pad, unpad, "inputs padded before timing" + (", is_causal" if causal else
                                                                                 ", key mask"))
    if device.type != "cuda":
        impls["torch varlen (FA2)"] = (None, None, None, "needs CUDA")
        impls["FlexAttention (document mask)"] = (None, None, None, "needs CUDA")
        return impls
    fn, note = _torch_varlen(cu, longest, causal, gqa)
    impls["torch varlen (FA2)"] = (fn, None, None, note)
    fn, note = _flex(lengths, causal, device, gqa)
    impls["FlexAttention (document mask)"] = (fn, None, None, note)
    return impls


def _rel_error(value, reference):
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def _leaves(tensors, pad, grad):
    tensors = [pad(t) if pad is not None else t.detach() for t in tensors]
    return [t.requires_grad_(grad) for t in tensors]


def _check(name, fn, pad, unpad, inputs, dout, expected, mode, dtype):
    """Raise if ``fn`` disagrees with the reference beyond the dtype's relative tolerance."""
    leaves = _leaves(inputs, pad, mode == "fwd_bwd")
    out = fn(*leaves)
    got = [unpad(out) if unpad is not None else out]
    if mode == "fwd_bwd":
        out.backward(pad(dout) if pad is not None else dout)
        got += [unpad(t.grad) if unpad is not None else t.grad for t in leaves]
    for label, value, ref in zip(("out", "dq", "dk", "dv"), got, expected):
        err = _rel_error(value, ref)
        if not err <= REL_TOL[dtype]:
            raise AssertionError(f"varlen attention bench: {name} {label} relative error {err:.2e} > "
                                 f"{REL_TOL[dtype]:.0e} against the reference")


def _timed(fn, pad, inputs, dout, mode, device, rep_ms):
    if mode == "fwd":
        leaves = _leaves(inputs, pad, False)

        def run():
            with torch.no_grad():
                fn(*leaves)
        return time_ms(run, device=device, rep_ms=rep_ms)
    leaves = _leaves(inputs, pad, True)
    grad = pad(dout) if pad is not None else dout

    def run():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(grad)
    return time_ms(run, device=device, rep_ms=rep_ms)


def _reference(inputs, dout, lengths, causal, mode):
    """Reference out (and grads) computed in float32 from the low-precision inputs."""
    cu = cu_seqlens_from_lengths(lengths, inputs[0].device)
    leaves = [t.detach().float().requires_grad_(mode == "fwd_bwd") for t in inputs]
    out = varlen_attention(*leaves, cu, cu, max(lengths), max(lengths), causal=causal, backend="reference")
    if mode == "fwd":
        return [out]
    out.backward(dout.float())
    return [out] + [t.grad for t in leaves]


def run_case(case, head_dim, device, dtype, *, modes=("fwd", "fwd_bwd"), rep_ms=100.0, width=MODEL_WIDTH, seed=0):
    """Rows of one (length mix, head dim): every implementation, each mode."""
    name, mix, target, causal = case
    device = torch.device(device)
    lengths = sample_lengths(mix, target, seed)
    heads = width // head_dim
    gen = torch.Generator().manual_seed(seed + 1)
    total = sum(lengths)
    inputs = [torch.randn(total, heads, head_dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]
    dout = torch.randn(total, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    cu = cu_seqlens_from_lengths(lengths)
    forward = attention_flops(cu, cu, heads, head_dim, causal=causal)
    flops = {"fwd": forward, "fwd_bwd": forward + attention_backward_flops(cu, cu, heads, head_dim, causal=causal)}
    impls = implementations(lengths, causal, *inputs, device)
    torch_flops = torch_counted_flops(cu, heads, head_dim)
    rows = []
    for mode in modes:
        expected = _reference(inputs, dout, lengths, causal, mode)
        group = []
        for impl, (fn, pad, unpad, note) in impls.items():
            row = dict(case=name, impl=impl, mode=mode, dtype=str(dtype).replace("torch.", ""), head_dim=head_dim,
                       num_heads=heads, sequences=len(lengths), tokens=total, causal=causal, flops=flops[mode],
                       ms=None, p20=None, p80=None, tflops=None, note=note)
            if impl == "torch varlen (FA2)" and torch_flops is not None:
                row["peer_flops"] = torch_flops[mode]
            forward_only = note is not None and "forward only" in note
            if fn is not None and not (mode == "fwd_bwd" and forward_only):
                _check(impl, fn, pad, unpad, inputs, dout, expected, mode, dtype)
                timing = _timed(fn, pad, inputs, dout, mode, device, rep_ms)
                row.update(ms=timing["median"], p20=timing["p20"], p80=timing["p80"],
                           tflops=tflops(flops[mode], timing["median"]))
            group.append(row)
        _add_ratios(group)
        rows += group
    return rows


def _add_ratios(group):
    ours = next(r for r in group if r["impl"] == OURS)
    ours["speedup_vs"] = {r["impl"]: r["ms"] / ours["ms"] for r in group
                          if r is not ours and r["ms"] is not None and ours["ms"]}
    for r in group:
        if r is not ours:
            r["adaptkern_speedup"] = ours["speedup_vs"].get(r["impl"])


def run(device=None, *, dtype=None, cases=None, head_dims=None, modes=("fwd", "fwd_bwd"), rep_ms=100.0):
    """All rows for ``device`` (default: CUDA when present): the GPU mixes in bfloat16 with
    head dims 64 and 128 on a GPU; a small float32 case on CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    cases = cases or (GPU_CASES if on_gpu else CPU_CASES)
    head_dims = head_dims or (GPU_HEAD_DIMS if on_gpu else CPU_HEAD_DIMS)
    width = MODEL_WIDTH if on_gpu else CPU_MODEL_WIDTH
    return [row for case in cases for head_dim in head_dims
            for row in run_case(case, head_dim, device, dtype, modes=modes, rep_ms=rep_ms, width=width)]


def format_rows(rows) -> str:
    lines = [f"{'case':18} {'impl':30} {'mode':8} {'D':>4} {'ms':>9} {'TFLOP/s':>8} {'ours x':>7}  note"]
    for r in rows:
        ms = f"{r['ms']:9.3f}" if r["ms"] is not None else f"{'-':>9}"
        tf = f"{r['tflops']:8.2f}" if r["tflops"] is not None else f"{'-':>8}"
        ratio = r.get("adaptkern_speedup")
        ratio = f"{ratio:6.2f}x" if ratio is not None else f"{'-':>7}"
        lines.append(f"{r['case']:18} {r['impl']:30} {r['mode']:8} {r['head_dim']:4d} {ms} {tf} {ratio}  "
                     f"{r['note'] or ''}")
    return "\n".join(lines)
