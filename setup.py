"""Build script: Python packages plus the optional CUDA extension ``adaptkern._C``.

The extension is compiled from ``csrc/*.cu`` (nvcc) and ``csrc/*.cpp`` (host compiler,
pybind11) and linked against the static CUDA runtime. It includes no torch headers: the
kernels take raw device pointers and a stream handle, so one build serves every torch.

``ADAPTKERN_BUILD_CUDA``: ``1`` builds it and fails loudly if that is impossible, ``0``
skips it, unset builds it when nvcc is found and only warns if the build fails.
``ADAPTKERN_CUDA_ARCHS`` (default ``80;90``) lists the SM targets; each also gets PTX for
the newest one so future GPUs can JIT it. ``MAX_JOBS`` caps parallel nvcc processes.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        # /usr/local/cuda/bin/nvcc -> /usr/local/cuda; a bare wrapper elsewhere falls back below.
        if (real.parent.parent / "include" / "cuda_runtime.h").exists():
            return real.parent.parent
    default = Path("/usr/local/cuda")
    return default if (default / "bin" / "nvcc").exists() or shutil.which("nvcc") else None


def _build_mode():
    value = os.environ.get("ADAPTKERN_BUILD_CUDA", "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"ADAPTKERN_BUILD_CUDA must be 0, 1 or unset, got {value!r}")
    return {"": "auto", "0": "off", "1": "on"}[value]


def _gencode_flags():
    archs = [a.strip() for a in os.environ.get("ADAPTKERN_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    newest = max(archs, key=lambda a: int(a.rstrip("a")))
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return flags


def _max_jobs():
    if os.environ.get("MAX_JOBS"):
        return max(1, int(os.environ["MAX_JOBS"]))
    # nvcc needs ~1.5 GiB per job on these sources; cap by free memory as well as cores.
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        free_gib = 4.0
    return max(1, min(os.cpu_count() or 1, int(free_gib / 1.5)))


class BuildCudaExt(build_ext):
    """Compiles .cu files with nvcc (in parallel, skipping up-to-date objects), then lets
    setuptools compile the pybind11 .cpp files and link everything into one module."""

    def build_extension(self, ext):
        mode = _build_mode()
        try:
            self._build_cuda_extension(ext)
        except Exception as err:  # noqa: BLE001 - reported, and fatal when forced on
            if mode == "on":
                raise
            print(f"WARNING: adaptkern._C (CUDA extension) not built: {err}", file=sys.stderr)

    def _build_cuda_extension(self, ext):
        cuda_home = _cuda_home()
        nvcc = shutil.which("nvcc") or (cuda_home and str(cuda_home / "bin" / "nvcc"))
        if not nvcc or not Path(nvcc).exists():
            raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
        obj_dir = Path(self.build_temp) / "cuda"
        obj_dir.mkdir(parents=True, exist_ok=True)
        headers = sorted(CSRC.glob("*.cuh")) + sorted(CSRC.glob("*.h"))
        newest_header = max((h.stat().st_mtime for h in headers), default=0.0)
        jobs = []
        for cu in sorted(CSRC.glob("*.cu")):
            obj = obj_dir / (cu.stem + ".o")
            stale = not obj.exists() or obj.stat().st_mtime < max(cu.stat().st_mtime, newest_header)
            cmd = [nvcc, "-c", str(cu), "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "--expt-relaxed-constexpr", "-lineinfo", f"-I{CSRC}", *_gencode_flags()]
            jobs.append((obj, cmd if stale else None))

        def run(cmd):
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)

        with ThreadPoolExecutor(_max_jobs()) as pool:
            list(pool.map(run, [cmd for _, cmd in jobs if cmd]))

        import pybind11

        ext.extra_objects = [str(obj) for obj, _ in jobs]
        ext.include_dirs = [str(CSRC), pybind11.get_include(), str(cuda_home / "include")]
        ext.library_dirs = [str(cuda_home / "lib64"), str(cuda_home / "lib")]
        ext.libraries = ["cudart_static", "rt", "pthread", "dl"]
        ext.extra_compile_args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
        super().build_extension(ext)


ext_modules = []
if _build_mode() != "off" and (CSRC / "module.cpp").exists():
    ext_modules.append(Extension("adaptkern._C", sources=[str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cpp"))]))

setup(
    packages=find_packages(include=["adaptkern", "adaptkern.*"]) + ["adaptkern.kernels"],
    package_dir={"adaptkern.kernels": "kernels"},
    package_data={"adaptkern": ["data/*", "cpu/*.cpp"]},  # the CPU attention kernel is compiled on first use
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildCudaExt},
    zip_safe=False,
)
