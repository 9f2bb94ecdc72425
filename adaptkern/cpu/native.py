"""The cpu backend's compiled attention kernel (``varlen_attention.cpp`` beside this file):
built on first use for the running torch, then loaded from torch's extension cache.

Built with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja needed; about 12 s
once per torch version and machine, in ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``). If it cannot be built or loaded here (no compiler, a torch
without the Fortran BLAS symbols it calls), a warning says why, once, and the cpu backend
composes PyTorch's CPU flash kernel instead, with the same results to rounding.
``ADAPTKERN_CPU_NATIVE=0`` skips it (no build); ``=1`` makes a failed build an error.
"""

import hashlib
import os
import re
import shutil
import sys
import threading
import warnings

import torch

ENV_VAR = "ADAPTKERN_CPU_NATIVE"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "varlen_attention.cpp")
# -march=native: the build runs on the machine that uses it (a cache shared between
# machines with different CPUs would need TORCH_EXTENSIONS_DIR set per machine). -fopenmp:
# at::parallel_for is compiled into the module, and uses the OpenMP runtime torch loaded.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]

_STATE = {}
_LOCK = threading.Lock()


def _name() -> str:
    """Extension name: torch's version and the source's hash in it, so a torch upgrade or an
    edited kernel builds afresh instead of loading a stale library."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read() + " ".join(CFLAGS).encode()).hexdigest()[:10]
    return "adaptkern_cpu_" + re.sub(r"\W", "_", torch.__version__) + "_" + digest


def _cached(name) -> bool:
    """Whether torch's extension cache already holds a build of ``name`` (then no message)."""
    from torch.utils import cpp_extension

    try:  # a private helper of torch's; without it, the message is printed every time
        folder = cpp_extension._get_build_directory(name, verbose=False)
    except Exception:
        return False
    return os.path.exists(os.path.join(folder, name + ".so"))


def _ninja_on_path():
    """torch's builder runs ``ninja`` from PATH; the pip package's binary (a dependency of
    the dev install) may sit only in the environment's bin folder, which PATH may lack."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build():
    from torch.utils import cpp_extension

    _ninja_on_path()
    name = _name()
    if not _cached(name):
        print(f"adaptkern: compiling the CPU attention kernel {SOURCE} (once per torch version, ~12 s here)",
              file=sys.stderr, flush=True)
    return cpp_extension.load(name, [SOURCE], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)


def enabled() -> bool:
    """Whether ``ADAPTKERN_CPU_NATIVE`` allows the compiled kernel (unset: yes)."""
    return os.environ.get(ENV_VAR, "") != "0"


def extension():
    """The loaded module, or None when it is disabled or could not be built (warned once)."""
    if not enabled():
        return None
    module = _STATE.get("module")
    if module is not None or "error" in _STATE:
        return module
    with _LOCK:
        if "module" not in _STATE and "error" not in _STATE:
            try:
                _STATE["module"] = _build()
            except Exception as err:  # no compiler, no ninja, a BLAS without sgemm_: fall back
                if os.environ.get(ENV_VAR) == "1":
                    raise RuntimeError(f"{ENV_VAR}=1 but the CPU attention kernel did not build: {err}") from err
                _STATE["error"] = err
                warnings.warn(f"adaptkern: the CPU attention kernel could not be built ({err}); the cpu backend "
                              "uses PyTorch's CPU flash kernel instead (slower on short sequences). Set "
                              f"{ENV_VAR}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
    return _STATE.get("module")


def build_status() -> str:
    """Builds the kernel if it is enabled and not tried yet, then says how it went
    (``adaptkern info`` and the benchmark metadata)."""
    extension()
    return status()


def status() -> str:
    """One line for ``adaptkern info``: built, failed (why), disabled or not yet tried."""
    if not enabled():
        return f"disabled ({ENV_VAR}=0)"
    if "module" in _STATE:
        return "built"
    if "error" in _STATE:
        return f"unavailable ({_STATE['error']})"
    return "not built yet (compiled on first use)"
