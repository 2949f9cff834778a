"""A run that has not written its first checkpoint yet: the run folder's :data:`MARKER` file.

A run folder holds :data:`MARKER` from its creation until its first ``last.pt``.  The marker
names the process writing the run (pid and host), so a later run can tell a run that stopped
before its first checkpoint (replaceable: nothing of it can be resumed) from one still
writing it (to be left alone).  Used by the folder's policy (:mod:`convit.training.run_folder`)
and by resuming (:mod:`convit.training.resume`).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Optional

__all__ = ["MARKER", "NoCheckpointYet", "write_marker", "running", "holds_run"]

#: Written when a run folder is created, removed once its first ``last.pt`` is written.
MARKER = "INCOMPLETE"


class NoCheckpointYet(FileNotFoundError):
    """``--resume`` of a folder whose run stopped before writing its first ``last.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        super().__init__(
            f"{folder} holds a run that stopped before its first checkpoint (it has {MARKER} and no "
            f"last.pt): there is nothing to resume; `convit train --resume {folder}` starts it again "
            f"from epoch 1 with its config.yaml, and any run with --output {folder} replaces it"
        )


def write_marker(folder: Path) -> None:
    """Write ``folder``'s :data:`MARKER`, naming this process."""
    (folder / MARKER).write_text(
        "This run has not written its first checkpoint (last.pt) yet. If no `convit train` runs here,\n"
        "it stopped before one: `convit train --output DIR` (or --resume DIR) starts it again.\n"
        f"pid: {os.getpid()}\nhost: {socket.gethostname()}\n"
    )


def holds_run(folder: Path) -> bool:
    """Whether a new run must not silently replace what ``folder`` holds: a run with a
    checkpoint, or one still writing its first (:data:`MARKER` naming a live process)."""
    if (folder / "last.pt").exists():
        return True
    if (folder / MARKER).exists():  # stopped before its first checkpoint: replaceable, unless still running
        return running(folder) is not None
    return any((folder / n).exists() for n in ("log.jsonl", "model.safetensors"))


def running(folder: Path, here_only: bool = False) -> Optional[str]:
    """Which process ``folder``'s :data:`MARKER` names, when it may still be running: a live
    process of this machine other than this one (``pid N on HOST``), or one of another machine,
    which cannot be checked from here (unless ``here_only``); None when it has stopped.  (Under
    torchrun the other ranks resolve the folder before DDP's first synchronisation, so never
    after rank 0 wrote it.)"""
    try:
        text = (folder / MARKER).read_text()
    except OSError:
        return None
    pid = re.search(r"^pid: (\d+)$", text, re.M)
    host = re.search(r"^host: (.+)$", text, re.M)
    if pid is None or host is None or int(pid[1]) == os.getpid() and host[1] == socket.gethostname():
        return None
    if host[1] != socket.gethostname():
        return (
            None if here_only else f"pid {pid[1]} on {host[1]}, another machine: if it has stopped, delete it"
        )
    try:
        os.kill(int(pid[1]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"pid {pid[1]} on {host[1]}: if it is not a run, delete {folder / MARKER}"
