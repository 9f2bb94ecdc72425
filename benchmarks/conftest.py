"""Collect the ``bench_<op>.py`` files as test modules, so that

    .venv/bin/python -m pytest benchmarks/ --benchmark-enable

runs every op's pytest-benchmark cases (pytest only collects ``test_*.py`` by default, and
the project's ``testpaths`` is ``tests/``). The small CPU cases run anywhere; GPU scripts
in these files run through their ``main()`` or ``adaptkern bench``."""

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
