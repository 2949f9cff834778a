"""Where a result came from: the data files read (SHA-256), the code (commit, and whether the
tree was dirty), the library versions and the CPU's vector instructions.

A run folder keeps it in ``provenance.json`` (written when the run starts, one entry per start:
a resumed run may have been continued by other code or on another machine), and a sweep's
``result.json`` copies it.  Float32 results on the CPU depend on the vector instructions
(``torch.backends.cpu.get_cpu_capability()``: AVX2 and AVX512 sum in different orders), so the
capability is part of what a number reproduces on.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["Provenance", "collect", "file_sha256", "code_version"]

#: The repository the package runs from, when it runs from a git checkout.
_REPO = Path(__file__).resolve().parents[2]
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Provenance:
    """One start of a run: see the module's docstring.  ``dirty``: tracked files under
    ``convit/`` differ from ``commit`` (None outside a git checkout)."""

    started: str
    data_files: dict[str, str] = field(default_factory=dict)  # path -> SHA-256
    commit: Optional[str] = None
    dirty: Optional[bool] = None
    convit: str = ""
    torch: str = ""
    timm: str = ""
    python: str = ""
    cpu_capability: str = ""
    machine: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, computed once per (path, size, mtime) in this process."""
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the checkout the package runs from; (None, None) when it is not one."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", "convit")
    return commit, bool(changes) if changes is not None else None


def collect(data_files: tuple[str, ...] = ()) -> Provenance:
    """The provenance of a run starting now that reads ``data_files``."""
    import timm
    import torch

    from .. import _version

    commit, dirty = code_version()
    return Provenance(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        data_files={str(p): file_sha256(p) for p in data_files},
        commit=commit,
        dirty=dirty,
        convit=_version.__version__,
        torch=torch.__version__,
        timm=timm.__version__,
        python=sys.version.split()[0],
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
    )
