"""Triton kernels of adaptkern (installed as ``adaptkern.kernels``).

Pure ``@triton.jit`` code and plain-Python launchers that take tensors and allocate
nothing they do not return. No autograd, no dispatch: that lives in ``adaptkern.ops``.
Import these modules lazily, after ``TRITON_INTERPRET`` is settled: Triton decides at
decoration time whether a kernel is compiled or interpreted.
"""
