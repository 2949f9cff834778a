"""docs/architecture.md's "where to add" recipes, followed once each: a flag of ``convit train`` is
one ``TrainConfig`` field, and a command is one module plus one line in ``convit.cli.COMMANDS``.
(The dataset recipe is followed in tests/test_data_registry.py, the model recipe in
tests/test_zoo.py.)"""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import pytest

import convit.training.config as config_module
import convit.training.flags as flags_module
from convit import cli
from convit.training.config import TrainConfig, _knob


@dataclasses.dataclass
class _WithNewKnob(TrainConfig):
    """TrainConfig with the one field the recipe adds."""

    ema_warmup_steps: int = _knob(7, "steps before the EMA starts averaging")


@pytest.fixture
def new_field(monkeypatch):
    """The recipe's edit, made for this test only: TrainConfig gains one field."""
    monkeypatch.setattr(config_module, "TrainConfig", _WithNewKnob)
    monkeypatch.setattr(flags_module, "TrainConfig", _WithNewKnob)


def test_a_new_config_field_becomes_a_flag(new_field):
    parser = cli.build_parser("train")
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "--ema-warmup-steps" in help_text and "steps before the EMA starts averaging" in help_text
    args = parser.parse_args(["train", "--ema-warmup-steps", "12"])
    cfg = flags_module.config_from_args(args)
    assert cfg.ema_warmup_steps == 12
    assert cfg.to_dict()["ema_warmup_steps"] == 12  # what config.yaml records
    default = flags_module.config_from_args(parser.parse_args(["train"]))
    assert default.ema_warmup_steps == 7
    assert config_module.build_config({"ema_warmup_steps": "3"}).ema_warmup_steps == 3  # files, --set


def test_a_new_command_is_one_module_and_one_line(tmp_path, monkeypatch, capsys):
    package = tmp_path / "recipe_commands"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "hello.py").write_text(
        textwrap.dedent(
            """
            def add_arguments(parser):
                parser.add_argument("--name", default="world")


            def run(args):
                print(f"hello {args.name}")
                return 0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "hello", ("recipe_commands.hello", "say hello"))
    assert cli.main(["hello", "--name", "ConViT"]) == 0
    assert capsys.readouterr().out == "hello ConViT\n"
    assert "hello" in cli.build_parser().format_help()
    sys.modules.pop("recipe_commands.hello", None)
    sys.modules.pop("recipe_commands", None)
