"""Files that must never be half-written, and the one reader of ``log.jsonl``.

The lowest layer of the package: data, model, trainer and experiments all write through
:func:`atomic_save` (model files, training state, logs, sweep results, the CIFAR cache), so a
crash or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

__all__ = ["CheckpointSaveError", "atomic_save", "read_jsonl"]


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous one is intact."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(write: Callable[[Path], None], path: Path, what: str = "checkpoint") -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file in the same folder, fsync it,
    then ``os.replace`` it over ``path``.

    A crash before the rename leaves the previous ``path`` untouched; a failed write (disk
    full, ...) removes the temporary file and raises :class:`CheckpointSaveError` saying so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        # Some writers (safetensors) create private 0600 files; give the file the mode any new
        # file gets here (0666 minus the umask) so a shared group can read the checkpoint.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} exists"
        hint = " (disk full: free some space, then resume with --resume)" if e.errno == errno.ENOSPC else ""
        raise CheckpointSaveError(
            e.errno, f"could not write the {what} {path}: {e.strerror or e}{hint}; {kept}"
        ) from e
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def read_jsonl(path: os.PathLike) -> list[dict]:
    """Entries of a JSON-lines file such as ``log.jsonl``, one object per line.

    Blank lines and a truncated last line (a run still writing, or killed mid-write) are
    skipped; a missing file raises ``FileNotFoundError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
