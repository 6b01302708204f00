"""Atomic file writes: write to a temp file in the destination directory, fsync, ``os.replace``.

Readers see either the old file or the complete new one, never a partial file; on failure the
temp file is removed and the destination is untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes_atomic", "write_text_atomic"]


def _default_file_mode() -> int:
    """``0o666`` masked by the process umask (what a plain ``open(path, "w")`` would give)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _fsync_dir(directory: Path) -> None:
    """Best effort: persist the rename itself (not supported on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (parent directories are created).

    If ``path`` already exists its permission bits are kept; otherwise the file gets the usual
    umask-derived mode. Returns the resolved destination path.

    Raises:
        OSError: the file could not be written (nothing is left behind, ``path`` is unchanged).
        TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes_atomic needs bytes, got {type(data).__name__}; use write_text_atomic for str")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.stat(dest).st_mode & 0o7777
    except OSError:
        mode = _default_file_mode()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(dest.parent)
    return dest.resolve()


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` (encoded with ``encoding``) to ``path``; see :func:`write_bytes_atomic`."""
    if not isinstance(text, str):
        raise TypeError(f"write_text_atomic needs str, got {type(text).__name__}")
    return write_bytes_atomic(path, text.encode(encoding))
