"""The optional CUDA extension ``adaptkern._C``: loaded once, with the reason kept if absent."""

import torch

try:
    from adaptkern import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR = None
except ImportError as err:  # not built (no nvcc at install time) or not loadable here
    _C = None
    _IMPORT_ERROR = err


def cuda_extension_built() -> bool:
    return _C is not None


def cuda_extension():
    """The loaded ``adaptkern._C`` module; RuntimeError saying why when it is unavailable."""
    if _C is None:
        raise RuntimeError(
            "backend='cuda' needs the CUDA extension adaptkern._C, which is not built "
            f"({_IMPORT_ERROR}). Reinstall with nvcc on PATH and ADAPTKERN_BUILD_CUDA=1, "
            "or use backend='triton' / 'reference'."
        )
    return _C


def stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of the current torch stream on ``device``, for _C calls."""
    return torch.cuda.current_stream(device).cuda_stream
