"""Run every seeded test of a test module on many fresh seeds and count failures: how a
flaky tolerance is found before CI finds it (each failure prints its seed).

    OMP_NUM_THREADS=1 MPLBACKEND=Agg .venv/bin/python benchmarks/experiments/seed_sweep.py test_schedule 200

Only tests whose arguments are ``seed`` (and optionally ``tmp_path``) and that carry no
pytest marks are run; seeds are 10000 + i.
"""

import inspect
import os
import pathlib
import random
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))


def main(module_name: str, n: int):
    module = __import__(module_name)
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        params = inspect.signature(fn).parameters
        if not name.startswith("test_") or "seed" not in params or set(params) - {"seed", "tmp_path"}:
            continue
        if hasattr(fn, "pytestmark"):
            continue
        failures, started = [], time.time()
        for i in range(n):
            np.random.seed(i), torch.manual_seed(i), random.seed(i)
            kwargs = {"seed": 10_000 + i}
            if "tmp_path" in params:
                kwargs["tmp_path"] = pathlib.Path(tempfile.mkdtemp())
            try:
                fn(**kwargs)
            except Exception as error:  # noqa: BLE001  (a failing test is what we count)
                failures.append((10_000 + i, type(error).__name__))
        print(f"{name}: {len(failures)}/{n} failed ({time.time() - started:.0f} s) {failures[:5]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
