"""Exact FLOP accounting (one multiply-add = 2 FLOPs).

Per-op counts are pure functions of shapes and cu_seqlens, one module per op family
(``flops/varlen_attention.py`` ...); the ops register them with FlopCounterMode, so
``FlopCounterMode`` and these functions report the same numbers.
"""
