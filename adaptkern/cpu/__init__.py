"""The ``"cpu"`` backend: PyTorch's optimised CPU kernels composed (one GEMM for patch
embedding, separable resize matrices, its flash attention per length bucket for float16 /
bfloat16) and, for float32 / float64 attention, a compiled tiled kernel built on first use
(:mod:`adaptkern.cpu.native`); one module per op, mirroring :mod:`adaptkern.reference`.
Autograd stays in :mod:`adaptkern.ops`."""
