"""Custom ops: dispatch to reference / Triton / CUDA, autograd, fake impls, FLOP formulas."""
