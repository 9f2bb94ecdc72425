"""Crash-safe files: atomic JSON / torch writes (temp file in the same folder, fsync,
os.replace: a reader or a crash sees the old file or the new one, never half of one) and
JSON-lines logs that a resumed run truncates back to its checkpoint."""

import json
import math
import os

from .._io import atomic_write


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
    return atomic_write(path, lambda f: f.write((json.dumps(jsonable(data), indent=1) + "\n").encode()))


def read_json(path, *, what="JSON file", remedy="delete it to write it anew"):
    """The JSON object in ``path``; a file that does not parse (cut short by a crash, or
    edited) is a ValueError naming the file, saying what it is and what to do."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable {what} (truncated or corrupt: {error}); {remedy}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a readable {what} (it holds a {type(data).__name__}, not an object); {remedy}")
    return data


def torch_save(path, obj) -> str:
    """``torch.save`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


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
        atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
