"""Give the CIFAR-10 CPU runs made before provenance was recorded (2026-12-03/04) what can be
known of it afterwards, and mark the rest as not recorded.

Every one of them read ``../shared/data/cifar10_jpeg.npz`` (the ``cifar10-cpu`` scale has no
other source, and the runs' settings name no ``data_path``).  That file is checked here against
the SHA-256 documented in ``../shared/data/README.md``; when it matches, each ``result.json``
gets ``"provenance": [{"data_files": {...}, "recorded": "after the run", ...}]`` with the commit,
versions and CPU capability left as null ("not recorded").  Runs that already have provenance
are left alone, so this is safe to run again:

    python docs/results/cifar10-cpu/backfill_provenance.py
"""

from __future__ import annotations

import json
from pathlib import Path

from convit.core.provenance import file_sha256

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parents[2] / ".." / "shared" / "data" / "cifar10_jpeg.npz"
DOCUMENTED_SHA256 = "c3bc3123f69f9d92b10e88b1932dc8f9528f34fde80357a51f55d6373fdbcf75"
NOTE = (
    "recorded on 2026-12-07, after the run: the scale's only data file, ../shared/data/cifar10_jpeg.npz "
    "(a JPEG quality-75 re-encoding of CIFAR-10), whose SHA-256 equals the one its README documents; "
    "the commit, library versions and CPU capability of the run were not recorded"
)


def backfill(result: Path) -> bool:
    """Add the after-the-run provenance to one result.json; False if it already had some."""
    record = json.loads(result.read_text())
    if record.get("provenance"):
        return False
    record["provenance"] = [
        {
            "data_files": {"../shared/data/cifar10_jpeg.npz": DOCUMENTED_SHA256},
            "recorded": NOTE,
            "commit": None,
            "dirty": None,
            "torch": None,
            "cpu_capability": None,
        }
    ]
    result.write_text(json.dumps(record, indent=1, sort_keys=True))  # as the sweep runner writes it
    return True


def main() -> None:
    found = file_sha256(str(DATA))
    if found != DOCUMENTED_SHA256:
        raise SystemExit(f"{DATA} has SHA-256 {found}, not the documented {DOCUMENTED_SHA256}")
    changed = [p for p in sorted(ROOT.rglob("result.json")) if backfill(p)]
    print(f"{len(changed)} result.json files given their data file's SHA-256")


if __name__ == "__main__":
    main()
