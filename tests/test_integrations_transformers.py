"""ak.integrations.transformers: "adaptkern" as a transformers attention implementation, on a
tiny randomly initialised Llama-style model (GQA, no weights downloaded). Oracle: the same
weights with attn_implementation="sdpa", one sequence at a time; forward and gradients."""

import os

import pytest
import torch

import adaptkern as ak

transformers = pytest.importorskip("transformers") if not os.environ.get("CI") else __import__("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
LENGTHS = [5, 1, 9, 3]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{dtype: (adaptkern model loaded with from_pretrained, sdpa model)} with equal weights."""
    ak.integrations.transformers.register()
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    base.save_pretrained(path)
    out = {}
    for dtype in (torch.float64, torch.float32):
        ours = LlamaForCausalLM.from_pretrained(path, attn_implementation="adaptkern", dtype=dtype).eval()
        ref = LlamaForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=dtype).eval()
        assert ours.config._attn_implementation == "adaptkern"
        out[dtype] = ours, ref
    return out


def rel_err(value, reference, floor=1e-300):
    value, reference = value.detach(), reference.detach()
    return float((value - reference).norm() / reference.norm().clamp_min(floor))


def compare(ours_logits, ours, ref_logits, ref, cotangent, dtype):
    assert rel_err(ours_logits, ref_logits) <= TOL[dtype], rel_err(ours_logits, ref_logits)
    ours_grads = torch.autograd.grad(ours_logits, list(ours.parameters()), cotangent)
    ref_grads = torch.autograd.grad(ref_logits, list(ref.parameters()), cotangent)
    floor = 1e-6 * torch.cat([g.reshape(-1) for g in ref_grads]).norm()
    for (name, _), got, want in zip(ours.named_parameters(), ours_grads, ref_grads):
        assert rel_err(got, want, floor) <= 10 * TOL[dtype], f"{name}: {rel_err(got, want, floor):.3e}"


def per_sequence(ref, ids, positions):
    return torch.cat([ref(input_ids=i[None], position_ids=p[None]).logits[0] for i, p in zip(ids, positions)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("path", ["position_ids", "cu_seq_lens"])
def test_packed_batch_equals_sdpa_per_sequence(models, dtype, path):
    """One packed row: position_ids restarting at 0, or the cu_seq_lens kwargs transformers
    passes to flash_attention_2 (then positions run on across sequences, so only the kwargs
    can separate them)."""
    ours, ref = models[dtype]
    ids = [torch.randint(0, 61, (n,)) for n in LENGTHS]
    if path == "position_ids":
        positions = [torch.arange(n) for n in LENGTHS]
        kwargs = {}
    else:
        total = torch.arange(sum(LENGTHS))
        positions = list(total.split(LENGTHS))
        cu = ak.cu_seqlens_from_lengths(LENGTHS)
        kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    logits = ours(input_ids=torch.cat(ids)[None], position_ids=torch.cat(positions)[None], **kwargs).logits[0]
    expected = per_sequence(ref, ids, positions)
    compare(logits, ours, expected, ref, torch.randn_like(expected), dtype)


def test_padding_mask_and_plain_batch(models):
    """A right-padded batch with a 2-D attention_mask (padding never computed) and an
    unpadded batch (each row one sequence)."""
    ours, ref = models[torch.float64]
    lengths = [6, 2, 4]
    ids = torch.randint(0, 61, (3, 6))
    mask = (torch.arange(6)[None] < torch.tensor(lengths)[:, None]).long()
    logits = ours(input_ids=ids, attention_mask=mask).logits
    got = torch.cat([logits[b, :n] for b, n in enumerate(lengths)])
    expected = per_sequence(ref, [ids[b, :n] for b, n in enumerate(lengths)], [torch.arange(n) for n in lengths])
    compare(got, ours, expected, ref, torch.randn_like(expected), torch.float64)
    plain = ours(input_ids=ids).logits
    assert rel_err(plain, ref(input_ids=ids).logits) <= 1e-10


def test_generate_with_kv_cache_matches_sdpa(models):
    """Decoding one token at a time against a KV cache (queries aligned to the end of their keys)."""
    ours, ref = models[torch.float64]
    prompt = torch.randint(0, 61, (1, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kwargs), ref.generate(prompt, **kwargs))


def test_unsupported_options_raise():
    query = torch.randn(1, 2, 3, 8)
    module = torch.nn.Module()
    with pytest.raises(NotImplementedError, match="softcap"):
        ak.integrations.transformers.attention_forward(module, query, query, query, None, softcap=30.0)
    with pytest.raises(NotImplementedError, match="dropout"):
        ak.integrations.transformers.attention_forward(module, query, query, query, None, dropout=0.1)


def test_count_step_on_a_transformers_model(models):
    """count_step on the Llama-style model with attn_implementation="adaptkern": exact causal
    pairs per packed sequence, projections, MLP and LM head from the config."""
    ours, _ = models[torch.float32]
    cfg = ours.config
    ids = torch.randint(0, 61, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    step = ak.flops.count_step(ours, lambda: ours(input_ids=ids, position_ids=positions).logits.sum())
    tokens, d, hd = sum(LENGTHS), cfg.hidden_size, cfg.head_dim
    heads, kv_heads, layers = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    pairs = sum(n * (n + 1) // 2 for n in LENGTHS)
    assert step.get("forward", "attention") == layers * 4 * heads * hd * pairs
    assert step.get("forward", "attn_linear") == layers * 2 * tokens * d * (2 * heads * hd + 2 * kv_heads * hd)
    assert step.get("forward", "mlp") == layers * 2 * tokens * d * cfg.intermediate_size * 3
    assert step.get("forward", "head") == 2 * tokens * d * cfg.vocab_size
    assert step.get("backward", "attention") == step.get("forward", "attention") * 5 // 2
