"""adaptkern.pack / unpack: every backend against plain indexing, gradients, compile, errors."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

import adaptkern as ak
from adaptkern import _backend
from adaptkern.ops import pack as pack_ops

from helpers import compile_launches

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool]


def _random_batch(dtype, lengths, feature, device):
    padded_len = max(lengths, default=0) + torch.randint(0, 3, ()).item()
    x = torch.randn(len(lengths), padded_len, *feature, dtype=torch.float64, device=device) * 50
    return x.to(dtype)


def _expected_pack(padded, lengths):
    return torch.cat([padded[b, :n] for b, n in enumerate(lengths)])


def _backends(device):
    return [b for b in _backend.available_backends(device)]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", [(), (1,), (3,), (5, 7), (2, 129)])
def test_pack_unpack_match_indexing(dtype, feature, device):
    lengths = torch.randint(0, 9, (torch.randint(1, 6, ()).item(),)).tolist()
    lengths[torch.randint(0, len(lengths), ()).item()] = 0  # always one empty sequence
    padded = _random_batch(dtype, lengths, feature, device)
    expected = _expected_pack(padded, lengths)
    for backend in _backends(device):
        packed = ak.pack(padded, lengths, backend=backend)
        assert torch.equal(packed.data, expected), backend
        assert packed.cu_seqlens.dtype == torch.int32 and packed.max_seqlen == max(lengths)
        restored = ak.unpack(packed.data, packed.cu_seqlens, padded.shape[1], backend=backend)
        mask = torch.arange(padded.shape[1], device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        mask = mask.reshape(*mask.shape, *([1] * len(feature)))
        assert torch.equal(restored, torch.where(mask, padded, torch.zeros_like(padded))), backend


def test_pack_list_and_unpack_list_roundtrip():
    seqs = [torch.randn(n, 4) for n in (3, 0, 5)]
    packed = ak.pack(seqs)
    assert packed.cu_seqlens.tolist() == [0, 3, 3, 8]
    assert packed.max_seqlen == 5
    for a, b in zip(ak.unpack(packed.data, packed.cu_seqlens, as_list=True), seqs):
        assert torch.equal(a, b)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_pack_unpack_gradients(backend, device):
    if backend not in _backends(device):
        pytest.skip(f"{backend} unavailable on {device}")
    lengths = [4, 0, 2, 5]
    padded = torch.randn(4, 6, 3, dtype=torch.float64, device=device, requires_grad=True)
    packed = ak.pack(padded, lengths, backend=backend)
    weight = torch.randn_like(packed.data)
    (packed.data * weight).sum().backward()
    expected = torch.zeros_like(padded)
    expected[:, :6] = ak.unpack(weight, packed.cu_seqlens, 6, backend="reference")
    assert torch.equal(padded.grad, expected)

    data = torch.randn(11, 3, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(lambda d: ak.unpack(d, packed.cu_seqlens, 7, backend=backend), (data,))


def test_custom_ops_pass_opcheck():
    cu = ak.cu_seqlens_from_lengths([2, 0, 3])
    padded = torch.randn(3, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.adaptkern.pack_padded.default, (padded, cu, 5, 3, "reference"))
    packed = torch.randn(5, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.adaptkern.unpack_padded.default, (packed, cu, 4, "reference"))


def test_pack_compiles_fullgraph():
    lengths = [3, 1, 4]
    cu = ak.cu_seqlens_from_lengths(lengths)

    def roundtrip(x):
        data = torch.ops.adaptkern.pack_padded(x, cu, 8, 4, "reference")
        return torch.ops.adaptkern.unpack_padded(data * 2, cu, 4, "reference")

    x = torch.randn(3, 4, 2)
    compiled = torch.compile(roundtrip, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), roundtrip(x))


def test_bad_input_names_the_argument():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="lengths is required"):
        ak.pack(x)
    with pytest.raises(ValueError, match=r"lengths\[1\]=5 exceeds"):
        ak.pack(x, [1, 5])
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        ak.pack(x, [1, 2, 3])
    with pytest.raises(ValueError, match=r"lengths\[0\] must be >= 0"):
        ak.pack(x, [-1, 2])
    with pytest.raises(ValueError, match="non-empty list"):
        ak.pack([])
    with pytest.raises(ValueError, match=r"sequences\[1\] has feature shape"):
        ak.pack([torch.randn(2, 3), torch.randn(2, 4)])
    with pytest.raises(TypeError, match=r"sequences\[1\] must have dtype"):
        ak.pack([torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)])
    data = torch.randn(5, 3)
    with pytest.raises(TypeError, match="cu_seqlens must have dtype in \\(int32\\)"):
        ak.unpack(data, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] must be 0"):
        ak.unpack(data, torch.tensor([1, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        ak.unpack(data, torch.tensor([0, 4, 3, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\]=4 must equal data.shape\[0\]=5"):
        ak.unpack(data, torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen=2 is smaller than the longest"):
        ak.unpack(data, torch.tensor([0, 3, 5], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        ak.unpack(data, torch.tensor([0, 5], dtype=torch.int32), backend="cudnn")


def test_backend_errors_are_clear(monkeypatch):
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors|not built"):
        ak.pack(x, [1, 2], backend="cuda")
    monkeypatch.setenv("ADAPTKERN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="ADAPTKERN_BACKEND must be one of"):
        ak.pack(x, [1, 2])
    monkeypatch.setenv("ADAPTKERN_BACKEND", "reference")
    assert torch.equal(ak.pack(x, [1, 2]).data, _expected_pack(x, [1, 2]))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(_backend, "_triton_state", lambda: (True, False, ""))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ak.pack(torch.randn(2, 3, 4), [1, 2], backend="triton")


def record_launch_devices(monkeypatch, module):
    """Replace ``module.on_device`` by a no-op that records the device of every launch."""
    devices = []
    monkeypatch.setattr(module, "on_device", lambda tensor: devices.append(tensor.device) or contextlib.nullcontext())
    return devices


def test_on_device_makes_a_cuda_tensors_device_current(monkeypatch):
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    pack_ops.on_device(SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1)))
    assert entered == [torch.device("cuda", 1)]
    assert isinstance(pack_ops.on_device(torch.ones(2)), contextlib.nullcontext) and len(entered) == 1


@pytest.mark.interpret
def test_launches_run_under_the_device_guard(monkeypatch, device):
    devices = record_launch_devices(monkeypatch, pack_ops)
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    packed = ak.pack(x, [1, 2], backend="triton")
    packed.data.sum().backward()  # through unpack_padded
    assert torch.equal(packed.data, _expected_pack(x, [1, 2]))
    assert devices == [x.device] * 2


@pytest.mark.slow
def test_pack_kernel_compiles_for_gpu():
    """The copy kernel compiled exactly as its launches build it (compile_launches), packing and
    unpacking rows of 96 words and of one word (an int argument 1 becomes a constexpr)."""
    code = """
import torch
from adaptkern import _backend
kernels = _backend.kernels("pack")
cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
for words in (96, 1):
    packed = kernels.pack_rows(torch.zeros(3, 8, words, dtype=torch.int32), cu, 10, 7)
    kernels.unpack_rows(packed, cu, 8)
"""
    results = compile_launches(code)
    expected = [("_copy_rows_kernel", arch) for arch in (80, 90) for _ in range(4)]
    assert [(r["kernel"], r["arch"]) for r in results] == expected
    assert {r["constexprs"]["PACK"] for r in results} == {True, False}
