"""``adaptkern info``: versions, devices, backends, whether the CUDA extension is built and
whether the cpu backend's compiled attention kernel builds here."""

import json
import platform


def collect() -> dict:
    import torch

    import adaptkern
    from adaptkern import _backend, _ext
    from adaptkern.cpu import native

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    info = {
        "adaptkern": adaptkern.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "triton_interpreter": _backend.triton_interpreting() if triton_version else False,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda_extension_built": _ext.cuda_extension_built(),
        "cuda_extension_runtime": None,
        "backends": {dev: _backend.available_backends(dev) for dev in devices},
        # Built here on first use (a C++ compiler is needed); else the cpu backend composes torch's kernels.
        "cpu_attention_kernel": native.build_status(),
    }
    if _ext.cuda_extension_built():
        version = _ext.cuda_extension().cuda_runtime_version()
        info["cuda_extension_runtime"] = f"{version // 1000}.{version % 1000 // 10}"
    return info


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = "; ".join(f"{dev}: {', '.join(names)}" for dev, names in value.items())
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        print(f"{key:<{width}}  {value}")
    if not info["cuda_extension_built"]:
        print("\nThe CUDA extension is not built: reinstall with nvcc on PATH (ADAPTKERN_BUILD_CUDA=1) "
              "for backend='cuda'.")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="versions, backends available, CUDA extension status")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)
