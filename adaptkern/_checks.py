"""Input validation shared by every op. Each error names the op, the argument and what
was expected. Checks of *values* held in device tensors (cu_seqlens) cost one host sync,
once per tensor while it is unchanged (:class:`_ValidatedIndex`); ``ADAPTKERN_VALIDATE=0``
or ``adaptkern.set_validation(False)`` turns them off (``with validation(False):`` for one
block), and they are skipped while torch.compile traces or a CUDA graph is captured.
"""

import contextlib
import numbers
import os
import weakref

import torch


class DTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: both a TypeError and a ValueError, so either catches it."""


_validate_override = None


def set_validation(enabled) -> None:
    """Turn value checks of index tensors on (True), off (False), or back to the env default (None)."""
    global _validate_override
    _validate_override = None if enabled is None else bool(enabled)


@contextlib.contextmanager
def validation(enabled):
    """``with validation(False):`` value checks off (True: on; None: the env default) inside
    the block, and back to what they were on exit. For loops whose index tensors are valid
    by construction, where each check would cost a host sync per call."""
    global _validate_override
    previous = _validate_override
    set_validation(enabled)
    try:
        yield
    finally:
        _validate_override = previous


def value_checks_enabled(*tensors) -> bool:
    """Whether to read the values of ``tensors`` on the host for validation."""
    if _validate_override is not None:
        enabled = _validate_override
    else:
        enabled = os.environ.get("ADAPTKERN_VALIDATE", "1").strip().lower() not in ("0", "false", "off", "no")
    if not enabled or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t.device.type == "meta" or isinstance(t, torch._subclasses.fake_tensor.FakeTensor):
            return False
        if t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False
    return True


def check_tensor(op: str, name: str, value, *, ndim=None, dtypes=None, device=None, min_ndim=None):
    """Raise if ``value`` is not a tensor with the given rank / dtypes / device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise DTypeError(f"{op}: {name} must have dtype in ({names}), got {str(value.dtype).replace('torch.', '')}")
    if device is not None and value.device != torch.device(device):
        raise ValueError(f"{op}: {name} is on {value.device} but the other inputs are on {device}")
    return value


def check_bool(op: str, name: str, value) -> bool:
    """A flag that must be a real bool (1, "yes" or a tensor are refused, not read as truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_int(op: str, name: str, value, *, minimum: int = 1):
    """An integer argument (Python, NumPy or a traced SymInt) that is at least ``minimum``."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_cu_seqlens(
    op: str,
    name: str,
    cu_seqlens,
    *,
    total=None,
    total_name: str = "total",
    max_seqlen=None,
    max_seqlen_name: str = "max_seqlen",
    device=None,
):
    """Validate cumulative sequence lengths: int32, 1-D, at least one entry, on ``device``;
    and, when value checks are on, cu[0] == 0, non-decreasing, cu[-1] == total and every
    length <= max_seqlen. Returns the number of sequences."""
    check_tensor(op, name, cu_seqlens, ndim=1, dtypes=(torch.int32,), device=device)
    if cu_seqlens.numel() < 1:
        raise ValueError(f"{op}: {name} must have at least one entry (0), got an empty tensor")
    if max_seqlen is not None and not isinstance(max_seqlen, torch.SymInt):
        check_int(op, max_seqlen_name, max_seqlen, minimum=0)
    if value_checks_enabled(cu_seqlens):
        bounds = (_plain_int(total), _plain_int(max_seqlen))
        if not _VALIDATED.holds(cu_seqlens, bounds):
            _check_cu_values(op, name, cu_seqlens, total, total_name, max_seqlen, max_seqlen_name)
            _VALIDATED.add(cu_seqlens, bounds)
    return cu_seqlens.numel() - 1


def _plain_int(value):
    return None if value is None or isinstance(value, torch.SymInt) else int(value)


class _ValidatedIndex:
    """cu_seqlens tensors whose values passed the checks, with the (total, max_seqlen) they
    were checked against, while the tensor lives and is unchanged: a model passes the same
    cu_seqlens to every layer, so only its first call reads them (one host sync per step on
    a GPU, not one per layer). "Unchanged" is the tensor's version counter, which every
    in-place torch op bumps; writes that bypass torch (a NumPy view, a raw pointer) are not
    seen. Inference tensors have no version counter and are checked on every call."""

    def __init__(self, size: int = 64):
        self.size, self.entries = size, {}  # id -> (weakref, version, {bounds})

    def holds(self, tensor, bounds) -> bool:
        entry = self.entries.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return False
        try:
            return entry[1] == tensor._version and bounds in entry[2]
        except RuntimeError:  # an inference tensor
            return False

    def add(self, tensor, bounds) -> None:
        try:
            version = tensor._version
            ref = weakref.ref(tensor, lambda dead, key=id(tensor): self._drop(key, dead))
        except (RuntimeError, TypeError):  # no version counter / not weak-referenceable
            return
        entry = self.entries.get(id(tensor))
        if entry is not None and entry[0]() is tensor and entry[1] == version:
            entry[2].add(bounds)
            return
        if len(self.entries) >= self.size:
            try:
                self.entries.pop(next(iter(self.entries)), None)  # the oldest
            except RuntimeError:  # a dead tensor's entry went while iterating (another thread)
                pass
        self.entries[id(tensor)] = (ref, version, {bounds})

    def _drop(self, key, ref):
        entry = self.entries.get(key)
        if entry is not None and entry[0] is ref:
            del self.entries[key]


_VALIDATED = _ValidatedIndex()


def _check_cu_values(op, name, cu_seqlens, total, total_name, max_seqlen, max_seqlen_name):
    values = cu_seqlens.detach().to("cpu", torch.int64)  # the one host sync of a validated call
    first = int(values[0])
    if first != 0:
        raise ValueError(f"{op}: {name}[0] must be 0, got {first}")
    lengths = values[1:] - values[:-1]
    if lengths.numel() and int(lengths.min()) < 0:
        i = int(torch.nonzero(lengths < 0)[0])
        raise ValueError(
            f"{op}: {name} must be non-decreasing, but {name}[{i + 1}]={int(values[i + 1])} < "
            f"{name}[{i}]={int(values[i])}"
        )
    last = int(values[-1])
    if total is not None and not isinstance(total, torch.SymInt) and last != int(total):
        raise ValueError(f"{op}: {name}[-1]={last} must equal {total_name}={int(total)}")
    if max_seqlen is not None and not isinstance(max_seqlen, torch.SymInt) and lengths.numel():
        longest = int(lengths.max())
        if longest > int(max_seqlen):
            raise ValueError(
                f"{op}: {max_seqlen_name}={int(max_seqlen)} is smaller than the longest sequence in {name} "
                f"({longest})"
            )


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> list:
    """Per-sequence lengths as Python ints (a host sync for device tensors)."""
    values = cu_seqlens.detach().to("cpu", torch.int64)
    return (values[1:] - values[:-1]).tolist()
