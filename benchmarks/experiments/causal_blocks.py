"""Causal attention on CPU with the masked blocks skipped: does it beat PyTorch's kernel?

PyTorch's CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its
backward, what padded SDPA and adaptkern's cpu backend call) splits keys in blocks of 512, so
for sequences up to 512 a causal call computes every (query, key) pair and masks half of them.
Here each sequence of length L is cut into B equal query blocks; block i attends to its own
keys with the kernel's causal mask (one call for all diagonal blocks) and to the keys of the
blocks before it without a mask (one call per i), the two merged by their log-sum-exps. The
backward runs the kernel's backward on the same calls with the merged output and lse (a
partial-key backward is exact given the full rows' lse and output) and adds the gradients.
Exact to float32 rounding (the script checks it); fewer pairs, but more and smaller calls.
"qb B" cuts the queries the same way but gives each block only the keys it sees (keys 0 ..
its end; the kernel's causal flag for the first block, a bottom-right causal mask for the
others): no merge, every query is in one call, dk / dv summed in the backward.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/causal_blocks.py

prints, per (sequences x length), 8 heads, D=64, float32, forward + backward ms (median and
min over 12 interleaved rounds of 5 calls) of the one causal call and of B = 2 and 4 blocks
(merged, and "qb").
On the 2-core dev machine, idle, 2026-12-07 (torch 2.13.0), medians [min]:

    shape      one call        B=2             B=4
    8 x 128    16.42 [12.38]   17.71 [12.70]   21.36 [14.59]
    4 x 256    18.06 [15.93]   16.65 [14.95]   16.24 [15.28]
    2 x 512    35.88 [32.46]   27.78 [23.83]   28.77 [24.45]
    1 x 1024   47.58 [43.41]   52.12 [47.08]   42.96 [40.17]

(a scratch version of the same calls, the same day: 13.25 / 16.09 / 19.02, 20.14 / 19.41 /
19.80, 36.40 / 27.88 / 29.59, 54.13 / 59.14 / 50.79). Slower at 8 x 128, issue 15's
equal-length case; 8-10% faster at 4 x 256 in one run and a tie in the other; 23% faster at
2 x 512, but at 1 x 1024 slower with B = 2 and 10% faster with B = 4 (the kernel changes its
query block size at 192 and 768 queries, and the parallel work per call with it). Not
adopted: no gain where the goal is, and the gains elsewhere depend on the shape in ways a
rule would have to be tuned to.

Three more runs the same day (commit aca36de, idle), one call vs qb B=2 / qb B=4, medians:
8 x 128 10.02 vs 8.94 / 9.11, 9.18 vs 9.58 / 8.49, 9.48 vs 10.92 / 11.26; 4 x 256 15.34 vs
14.64 / 12.71, 16.73 vs 16.10 / 15.73, 16.23 vs 15.08 / 15.73; 2 x 512 33.18 vs 26.78 / 26.17,
36.19 vs 33.00 / 30.09, 31.63 vs 26.50 / 24.17; 1 x 1024 42.65 vs 48.75 / 41.98, 47.39 vs
59.14 / 50.24, 51.13 vs 67.49 / 56.19 (the merged B=2 / B=4 of those runs: 8 x 128 8.95 /
10.81, 9.48 / 12.55, 10.85 / 13.23). At 8 x 128 faster in one run of three and slower in
the others; 10-25% faster at 2 x 512 in all three; slower at 1 x 1024. A split of the
backward alone (forward one call; this script at commit aca36de, "bwd B") was tried before
these, in two runs: 8 x 128 12.09 and 11.20 ms vs one call 12.14 and 12.11 (in a scratch run
the forward cost the same causal or not at 128, 5.2 ms, one thread). Not adopted: no robust
gain at issue 15's shape, a loss at 1024.
"""

import statistics
import time

import torch

from adaptkern.reference.varlen_attention import allowed_mask

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
HEADS, DIM = 8, 64


def heads_first(x):
    """(n, L, H, D) -> the kernel's (n, H, L, D) view."""
    return x.transpose(1, 2)


def blocked_forward(q, k, v, n, length, blocks):
    """Packed (n * L, H, D) causal attention by blocks: out (n, L, H, D), lse (n, blocks, H, L / blocks)."""
    size = length // blocks
    diagonal = [heads_first(x.view(n * blocks, size, HEADS, DIM)) for x in (q, k, v)]
    out, lse = FLASH(*diagonal, 0.0, True)
    out, lse = heads_first(out).reshape(n, length, HEADS, DIM), lse.view(n, blocks, HEADS, size)
    q4, k4, v4 = (x.view(n, length, HEADS, DIM) for x in (q, k, v))
    for i in range(1, blocks):
        rows = slice(i * size, (i + 1) * size)
        earlier_out, earlier_lse = FLASH(heads_first(q4[:, rows]), heads_first(k4[:, :i * size]),
                                         heads_first(v4[:, :i * size]), 0.0, False)
        merged = torch.logaddexp(lse[:, i], earlier_lse)
        own = out[:, rows]
        own.mul_(heads_first((lse[:, i] - merged).exp()).unsqueeze(-1))
        own.add_(heads_first(earlier_out) * heads_first((earlier_lse - merged).exp()).unsqueeze(-1))
        lse[:, i] = merged
    return out, lse


def blocked_backward(dout, q, k, v, out, lse, n, length, blocks):
    """Gradients (n, L, H, D) of :func:`blocked_forward`, from its merged out and lse."""
    size = length // blocks
    diagonal = [heads_first(x.reshape(n * blocks, size, HEADS, DIM)) for x in (dout, q, k, v, out)]
    grads = FLASH_BACKWARD(*diagonal, lse.reshape(n * blocks, HEADS, size), 0.0, True)
    dq, dk, dv = (heads_first(g).reshape(n, length, HEADS, DIM) for g in grads)
    dout4, q4, k4, v4, out4 = (x.view(n, length, HEADS, DIM) for x in (dout, q, k, v, out))
    for i in range(1, blocks):
        rows, keys = slice(i * size, (i + 1) * size), slice(0, i * size)
        gq, gk, gv = FLASH_BACKWARD(heads_first(dout4[:, rows]), heads_first(q4[:, rows]), heads_first(k4[:, keys]),
                                    heads_first(v4[:, keys]), heads_first(out4[:, rows]), lse[:, i].contiguous(),
                                    0.0, False)
        dq[:, rows] += heads_first(gq)
        dk[:, keys] += heads_first(gk)
        dv[:, keys] += heads_first(gv)
    return dq, dk, dv


def _below_diagonal(rows, keys):
    """Bottom-right causal additive mask (rows, keys), from the reference's allowed mask."""
    return torch.zeros(rows, keys).masked_fill_(~allowed_mask(rows, keys, -1, 0), float("-inf"))


def query_block_forward(q, k, v, n, length, blocks):
    """Causal attention by query blocks, each over only the keys it sees (keys 0 .. its end):
    the kernel's causal flag for the first block, a bottom-right causal mask for the others.
    No merge: every query is in one call. out (n, L, H, D), lse (n, H, L)."""
    size = length // blocks
    q4, k4, v4 = (x.view(n, length, HEADS, DIM) for x in (q, k, v))
    out, lse = torch.empty(n, length, HEADS, DIM), torch.empty(n, HEADS, length)
    for i in range(blocks):
        rows, keys = slice(i * size, (i + 1) * size), slice(0, (i + 1) * size)
        o, l = FLASH(heads_first(q4[:, rows]), heads_first(k4[:, keys]), heads_first(v4[:, keys]), 0.0, not i,
                     attn_mask=_below_diagonal(size, (i + 1) * size) if i else None)
        out[:, rows], lse[:, :, rows] = heads_first(o), l
    return out, lse


def query_block_backward(dout, q, k, v, out, lse, n, length, blocks):
    """The backward of :func:`query_block_forward` on the same calls; dk / dv summed."""
    size = length // blocks
    dout4, q4, k4, v4, out4 = (x.view(n, length, HEADS, DIM) for x in (dout, q, k, v, out))
    dq = torch.empty(n, length, HEADS, DIM)
    dk = dv = None
    for i in reversed(range(blocks)):  # the last block sees every key: its dk / dv are the sums
        rows, keys = slice(i * size, (i + 1) * size), slice(0, (i + 1) * size)
        gq, gk, gv = FLASH_BACKWARD(heads_first(dout4[:, rows]), heads_first(q4[:, rows]), heads_first(k4[:, keys]),
                                    heads_first(v4[:, keys]), heads_first(out4[:, rows]),
                                    lse[:, :, rows].contiguous(), 0.0, not i,
                                    attn_mask=_below_diagonal(size, (i + 1) * size) if i else None)
        dq[:, rows] = heads_first(gq)
        if dk is None:
            dk, dv = heads_first(gk), heads_first(gv)
        else:
            dk[:, keys] += heads_first(gk)
            dv[:, keys] += heads_first(gv)
    return dq, dk, dv


# label -> (forward, backward): merged by lse, and query blocks over only the keys they see
VARIANTS = {"B=": (blocked_forward, blocked_backward), "qb B=": (query_block_forward, query_block_backward)}


def _lse_rows(lse, n, length):
    """(n, H, L) from either variant's lse (the merged one is (n, blocks, H, L / blocks))."""
    return lse if lse.dim() == 3 else lse.transpose(1, 2).reshape(n, HEADS, length)


def main():
    torch.manual_seed(0)
    print(f"{HEADS} heads, D={DIM}, float32, {torch.get_num_threads()} threads; fwd+bwd ms, median [min] of 12 rounds")
    for n, length in ((8, 128), (4, 256), (2, 512), (1, 1024)):
        q, k, v, dout = (torch.randn(n * length, HEADS, DIM) for _ in range(4))
        padded = [heads_first(x.view(n, length, HEADS, DIM)) for x in (q, k, v, dout)]
        want_out, want_lse = FLASH(*padded[:3], 0.0, True)
        want = FLASH_BACKWARD(padded[3], *padded[:3], want_out, want_lse, 0.0, True)
        for forward, backward in VARIANTS.values():
            for blocks in (2, 4):
                out, lse = forward(q, k, v, n, length, blocks)
                got = backward(dout, q, k, v, out, lse, n, length, blocks)
                assert torch.allclose(out, heads_first(want_out), atol=1e-5)
                assert torch.allclose(_lse_rows(lse, n, length), want_lse, atol=1e-5)
                assert all(torch.allclose(g, heads_first(w), atol=1e-5) for g, w in zip(got, want))

        def one_call():
            o, l = FLASH(*padded[:3], 0.0, True)
            FLASH_BACKWARD(padded[3], *padded[:3], o, l, 0.0, True)

        def split(forward, backward, blocks):
            def run():
                o, l = forward(q, k, v, n, length, blocks)
                backward(dout, q, k, v, o, l, n, length, blocks)
            return run

        fns = {"one call": one_call}
        fns.update({f"{label}{blocks}": split(*pair, blocks) for label, pair in VARIANTS.items() for blocks in (2, 4)})
        times = {name: [] for name in fns}
        for _ in range(12):
            for name, fn in fns.items():
                fn()
                start = time.perf_counter()
                for _ in range(5):
                    fn()
                times[name].append((time.perf_counter() - start) / 5 * 1e3)
        print(f"{n} x {length:5}: " + "   ".join(f"{name} {statistics.median(t):7.2f} [{min(t):.2f}]"
                                             for name, t in times.items()))


if __name__ == "__main__":
    main()
