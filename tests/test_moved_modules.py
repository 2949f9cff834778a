"""The public API after the move into layer packages: every old module name imports the module
at its new place (the same object), a pickle written under an old name loads, and every import
in the README's and docs' Python examples works."""

from __future__ import annotations

import ast
import importlib
import pickle
import re
from pathlib import Path

import pytest

import convit

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("old", sorted(convit.MOVED))
def test_an_old_module_name_is_the_moved_module(old):
    assert importlib.import_module(old) is importlib.import_module(convit.MOVED[old])


def test_old_names_used_by_scripts_keep_working():
    from convit.config import TrainConfig
    from convit.model import ConViT, ConViTConfig
    from convit.train import fit
    from convit.zoo import ModelSpec, create_model, list_models, load_model, model_spec, register

    assert TrainConfig.__module__ == "convit.training.config"
    assert ConViT is convit.ConViT and ConViTConfig is convit.ConViTConfig
    assert fit.__module__ == "convit.training.fit"
    assert create_model is convit.create_model and load_model is convit.load_model
    assert list_models is convit.list_models and model_spec is convit.model_spec
    assert register is convit.register and ModelSpec.__name__ == "ModelSpec"


def test_a_pickle_written_under_an_old_name_loads():
    from convit.training.config import TrainConfig

    cfg = TrainConfig(epochs=3, model="deit_digits")
    new = pickle.dumps(cfg, protocol=0)
    assert b"convit.training.config" in new
    old = new.replace(b"convit.training.config", b"convit.config")  # as a pickle of version 0.1 reads
    assert pickle.loads(old) == cfg


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("convit.no_such_module")


def _import_statements(path: Path) -> list[str]:
    """Every statement of a fenced block (Python, or a shell line's ``python -c``) that starts
    with ``import convit`` or ``from convit``, continuation lines of parentheses included."""
    statements = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip().strip("\"'")
            if not stripped.startswith(("import convit", "from convit")):
                continue
            statement = stripped.split(";")[0]
            j = i
            while statement.count("(") > statement.count(")") and j + 1 < len(lines):
                j += 1
                statement += "\n" + lines[j]
            statements.append(statement)
    return statements


def test_every_import_in_the_docs_examples_works():
    found = [(path.name, statement) for path in DOCS for statement in _import_statements(path)]
    for name, statement in found:
        exec(compile(ast.parse(statement), name, "exec"), {})
    assert len(found) >= 10, f"expected the docs' convit imports, found {found}"
