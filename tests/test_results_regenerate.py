"""docs/results.md sec. 5 regenerates byte for byte from the committed run files with its one
command (docs/results/cifar10-cpu/regenerate.py): every table, figure and convergence.json."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10-cpu"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_section_5_regenerates_byte_for_byte(tmp_path):
    copy = tmp_path / "cifar10-cpu"
    proc = subprocess.run(
        [sys.executable, str(RESULTS / "regenerate.py"), "--into", str(copy)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    committed = _files(RESULTS)
    assert _files(copy) == committed, "regenerating adds or drops files"
    changed = [f for f in sorted(committed) if not filecmp.cmp(RESULTS / f, copy / f, shallow=False)]
    assert not changed, f"regenerated files differ from the committed ones: {changed}"


def test_results_md_holds_the_chosen_tables_verbatim():
    """Sec. 5's tables at the chosen schedules are chosen/tables.md itself (write_tables.py --paste),
    so the page cannot drift from the files its numbers come from."""
    sys.path.insert(0, str(RESULTS))
    try:
        import write_tables
    finally:
        sys.path.remove(str(RESULTS))
    doc = (RESULTS.parents[1] / "results.md").read_text()
    assert doc.count(write_tables.BEGIN) == 1 and doc.count(write_tables.END) == 1
    block = doc.split(write_tables.BEGIN + "\n")[1].split(write_tables.END + "\n")[0]
    assert block == (RESULTS / "chosen" / "tables.md").read_text()
