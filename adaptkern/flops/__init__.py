"""Exact FLOP accounting (one multiply-add = 2 FLOPs).

Per-op counts are pure functions of shapes and cu_seqlens, one module per op family
(``flops/varlen_attention.py`` ...); the ops register them with FlopCounterMode, so
``FlopCounterMode`` and these functions report the same numbers.
"""

from .patch_embed import patch_embed_backward_flops, patch_embed_flops, resize_flops  # noqa: E402,F401
from .interp_pos_embed import interp_pos_embed_flops  # noqa: E402,F401
from .varlen_attention import attention_backward_flops, attention_flops  # noqa: E402,F401
from .ledger import FlopComparison, FlopLedger, StepFlopCounter, compare_flops, measure_step  # noqa: F401
from .model import LAYER_TYPES, StepFlops, count_step, num_params  # noqa: F401
from .report import MODELS, FlopReport, flops_report, format_report, plot_report  # noqa: F401
