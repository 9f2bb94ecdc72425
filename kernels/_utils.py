"""Helpers shared by the Triton kernels: interpreter detection, and a dtype-safe dot and
float32 -> low-precision cast that behave the same under the interpreter as on a GPU."""

import os

import triton
import triton.language as tl


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Fixed at import, as Triton fixes it when it decorates the kernels below.
INTERPRET: bool = _interpreting()

if INTERPRET:
    # The interpreter keeps bfloat16 as raw 16-bit integers, so arithmetic and tl.dot on
    # bfloat16 operands are wrong there. Widening to float32 first is exact (a product of
    # two bf16/fp16 values is exact in float32), so results match the tensor-core path.
    @triton.jit
    def dot(a, b, acc):
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")

else:

    @triton.jit
    def dot(a, b, acc):
        """acc + a @ b; float32 operands stay IEEE float32 (no silent TF32)."""
        if a.dtype == tl.float32:
            return tl.dot(a, b, acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)


if INTERPRET:
    # The interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest even; the
    # bias would pile up in every bf16 matmul operand and output, so round here as the GPU does.
    @triton.jit
    def to_dtype(x, dtype: tl.constexpr):
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
        return x.to(dtype)

else:

    @triton.jit
    def to_dtype(x, dtype: tl.constexpr):
        """float32 ``x`` in ``dtype`` (round to nearest even)."""
        return x.to(dtype)


def row_block(row_elements: int, max_block: int = 1024) -> int:
    """Power-of-two block width covering a row of ``row_elements``, capped at ``max_block``."""
    return min(max_block, triton.next_power_of_2(max(1, row_elements)))
