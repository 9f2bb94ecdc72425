"""Crash-safe file writes: a temp file in the same folder, fsync, ``os.replace``, fsync of
the folder, so a reader (or a crash) sees the old file or the new one, never half of one."""

import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write, *, text: bool = False) -> str:
    """Call ``write(f)`` on a temp file beside ``path`` (binary, or text with ``text=True``),
    then move it over ``path``; the folder is created if missing. Returns ``path`` as a str."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return path


def _fsync_folder(folder) -> None:
    """Make the rename itself durable (best effort: some platforms cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
