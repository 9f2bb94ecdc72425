"""Run the fits with a single-threaded BLAS.

The fits hand BLAS tiny problems (L-BFGS-B's 5 x 5 systems, least squares on a few hundred
rows). OpenBLAS still wakes its thread pool for them, and on a busy machine the spin-waiting
dominates: one L-BFGS-B run of Approach 3 took 0.64 s of CPU with the default threads and
0.035 s with one (2 cores, load ~6). threadpoolctl does this for any BLAS when it is
installed; otherwise the OpenBLAS builds bundled in the numpy / scipy wheels are asked
directly, and with any other BLAS nothing changes.
"""

import ctypes
import functools
import glob
import os
from contextlib import contextmanager

import numpy
import scipy


@contextmanager
def single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = _bundled_openblas()
    saved = [get() for get, _ in controls]
    for _, set_threads in controls:
        set_threads(1)
    try:
        yield
    finally:
        for (_, set_threads), n in zip(controls, saved):
            set_threads(n)


@functools.lru_cache(maxsize=1)
def _bundled_openblas():
    """(get_num_threads, set_num_threads) of each OpenBLAS shipped in the numpy / scipy wheels."""
    controls = []
    for package in (numpy, scipy):
        libs = os.path.join(os.path.dirname(os.path.dirname(package.__file__)), f"{package.__name__}.libs")
        for path in glob.glob(os.path.join(libs, "libscipy_openblas*")):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for suffix in ("", "64_"):
                get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                set_threads = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                if get is not None and set_threads is not None:
                    get.restype, set_threads.argtypes = ctypes.c_int, [ctypes.c_int]
                    controls.append((get, set_threads))
                    break
    return tuple(controls)
