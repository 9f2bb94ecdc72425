"""The ``"cpu"`` backend: every op composed of PyTorch's optimised CPU kernels (its flash
attention per length bucket, one GEMM for patch embedding, separable resize matrices), one
module per op, mirroring :mod:`adaptkern.reference`. Autograd stays in :mod:`adaptkern.ops`."""
