"""Every table and figure of docs/results.md sec. 5 (CIFAR-10 on CPU cores), from the committed
run files, without training: each sweep folder's results.md / results.csv / summary.csv /
figures (``convit experiment ... --table-only``, its own command as its sweep.json records it)
convergence.json (write_convergence.py) and the tables and figures at the chosen schedules in
``chosen/`` (write_tables.py).

    python docs/results/cifar10-cpu/regenerate.py             # rewrite them in place
    python docs/results/cifar10-cpu/regenerate.py --into DIR  # into a copy (tests compare it)

tests/test_results_regenerate.py checks that the committed files come back byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path

from convit.cli import main as convit_main

ROOT = Path(__file__).resolve().parent
#: The sweep folders with tables (the base-16/32 convergence folders keep runs only).
SWEEPS = (
    "sample-efficiency",
    "ablation",
    "convergence/epochs4",
    "convergence/epochs16",
    "cnn-lr/lr1e-3",
    "cnn-lr/lr2e-3",
    "cnn-lr/lr4e-3",
)


def table_command(folder: Path, into: Path) -> list[str]:
    """The sweep's own command (sweep.json), as --table-only into ``into``, launcher flags left out."""
    argv = shlex.split(json.loads((folder / "sweep.json").read_text())["command"])[1:]
    out = []
    skip = 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a in ("--launcher", "--jobs", "--output"):
            skip = 1
            continue
        out.append(a)
    return [*out, "--output", str(into), "--table-only"]


def regenerate(into: Path) -> None:
    for name in SWEEPS:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = convit_main(table_command(ROOT / name, into / name))
        if rc != 0:
            raise SystemExit(f"{name}: the table command failed ({rc})")
    import write_convergence  # beside this file
    import write_tables

    write_convergence.ROOT = into
    write_tables.ROOT = into
    with contextlib.redirect_stdout(io.StringIO()):
        write_convergence.main()
        write_tables.main()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--into", type=Path, help="copy the committed folder here and regenerate the copy")
    args = p.parse_args()
    into = ROOT
    if args.into is not None:
        shutil.copytree(ROOT, args.into, dirs_exist_ok=True)
        into = args.into
    regenerate(into)
    print(f"regenerated sec. 5's tables and figures in {into}")


if __name__ == "__main__":
    main()
