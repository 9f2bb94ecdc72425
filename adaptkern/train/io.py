"""Crash-safe files: atomic JSON / torch writes (temp file in the same folder, fsync,
os.replace: a reader or a crash sees the old file or the new one, never half of one) and
JSON-lines logs that a resumed run truncates back to its checkpoint."""

import json
import math
import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path, write):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def jsonable(value):
    """``value`` with tuples as lists, numpy scalars as Python numbers and non-finite floats
    as None (strict JSON has no inf / nan)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data) -> str:
    """Write ``data`` (through ``jsonable``) as indented JSON to ``path`` atomically."""
    return _atomic(path, lambda f: f.write((json.dumps(jsonable(data), indent=1) + "\n").encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def torch_save(path, obj) -> str:
    """``torch.save`` to ``path`` atomically."""
    import torch

    return _atomic(path, lambda f: torch.save(obj, f))


class JsonLines:
    """An append-only JSON-lines log (one dict per line, flushed per write)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list:
        if not os.path.exists(self.path):
            return []
        rows = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut by a crash: it and what follows are not trusted
        return rows

    def truncate(self, keep) -> None:
        """Keep only the rows for which ``keep(row)`` holds (a resumed run drops what it
        will redo after its checkpoint), rewriting the file atomically."""
        rows = [r for r in self.read() if keep(r)]
        _atomic(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
