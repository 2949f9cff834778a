"""The training config system: :class:`~convit.training.config.TrainConfig`, its layering
(defaults < preset < file < flags), config files (YAML, TOML, unknown keys), the warm-up and
epoch scaling it derives, and the command-line flags generated from it
(:mod:`convit.training.flags`).  No training runs here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from convit.core.presets import TRAIN_PRESETS
from convit.training.config import TrainConfig, build_config, load_config_file
from convit.training.flags import add_config_arguments, config_from_args


def test_config_precedence_file_toml_and_unknown_keys(tmp_path):
    cfg = build_config()
    assert (
        cfg.preset == "digits"
        and cfg.model == "convit_digits"
        and cfg.epochs == TRAIN_PRESETS["digits"]["epochs"]
    )
    assert build_config({"dataset": "cifar10"}).preset == "cifar"
    assert TrainConfig().lr is None and TrainConfig().resolved_lr(8) == pytest.approx(5e-4 * 512 / 512)
    (tmp_path / "a.yaml").write_text("epochs: 7\nlr: 1.0e-3\nmodel_kwargs: {depth: 3}\n")
    cfg = build_config({"epochs": 9}, tmp_path / "a.yaml")
    assert (cfg.epochs, cfg.lr, cfg.model_kwargs) == (9, 1e-3, {"depth": 3})
    (tmp_path / "b.toml").write_text('epochs = 4\nmodel = "deit_digits"\n[model_kwargs]\ndepth = 2\n')
    cfg = build_config(config_file=tmp_path / "b.toml")
    assert (cfg.epochs, cfg.model, cfg.model_kwargs) == (4, "deit_digits", {"depth": 2})
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_config_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("epochs: many\n")
    with pytest.raises(ValueError, match="epochs"):
        load_config_file(tmp_path / "d.yaml")


def test_scale_epochs():
    cfg = build_config({"sampling_ratio": 0.25, "scale_epochs": True, "epochs": 10, "warmup_epochs": 2})
    assert cfg.run_epochs == 40 and cfg.run_warmup_epochs == 8
    assert build_config({"sampling_ratio": 0.25, "epochs": 10}).run_epochs == 10


def test_warmup_fits_a_shortened_run():
    # --epochs below the preset's warm-up: capped to 20% of the run, so the run reaches its lr.
    cfg = build_config({"dataset": "imagefolder", "epochs": 3})
    assert TRAIN_PRESETS["imagenet"].get("warmup_epochs", TrainConfig.warmup_epochs) == 5
    assert cfg.warmup_epochs == pytest.approx(0.6) and cfg.run_warmup_epochs < cfg.run_epochs
    assert build_config({"epochs": 5}).warmup_epochs == pytest.approx(1.0)  # digits preset: 2
    assert build_config({"epochs": 10, "sampling_ratio": 0.5, "scale_epochs": True}).run_warmup_epochs == 4
    # Untouched: warm-up given explicitly (flag or file), the run long enough, or epochs not given.
    assert build_config({"dataset": "imagefolder", "epochs": 3, "warmup_epochs": 2}).warmup_epochs == 2
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--dataset", "imagefolder", "--epochs", "3", "--warmup-epochs", "0"])
    assert config_from_args(args).warmup_epochs == 0
    assert (
        config_from_args(parser.parse_args(["--dataset", "imagefolder", "--epochs", "3"])).warmup_epochs
        == 0.6
    )
    assert build_config({"dataset": "imagefolder", "epochs": 300}).warmup_epochs == 5
    assert build_config({"epochs": 10}).warmup_epochs == TRAIN_PRESETS["digits"]["warmup_epochs"]
    assert build_config({}).warmup_epochs == TRAIN_PRESETS["digits"]["warmup_epochs"]


_HINTS = typing.get_type_hints(TrainConfig)
#: A valid non-default command-line value for the string fields that are not paths.
_STRING_FLAGS = {
    "preset": "cifar",
    "model": "deit_digits",
    "dataset": "cifar10",
    "augment": "none",
    "opt": "sgd",
    "sched": "step",
    "device": "cpu",
    "amp": "bf16",
    "in_memory": "on",
}


def _flag_and_value(f: dataclasses.Field):
    """(command-line words, expected field value) that set field ``f`` to a non-default value."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    hint = _HINTS[f.name]
    if typing.get_origin(hint) is typing.Union:  # Optional[int] -> int
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    kind = typing.get_origin(hint) or hint  # Dict[str, Any] -> dict
    if kind is bool:
        return ([flag] if not default else ["--no-" + flag[2:]]), not default
    if kind is dict:
        return [flag, "depth=3", "qkv_bias=false", "global_pool=token"], {
            "depth": 3,
            "qkv_bias": False,
            "global_pool": "token",
        }
    if kind is int:
        return [flag, str((default or 0) + 3)], (default or 0) + 3
    if kind is float:
        value = 0.25 if default != 0.25 else 0.75  # inside every range check (fractions, smoothing)
        return [flag, str(value)], value
    value = _STRING_FLAGS.get(f.name, "some/path")  # else a path: data_path, finetune, output, resume
    return [flag, value], value


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_each_flag_sets_its_field(field):
    """Every TrainConfig field has a flag, and giving it sets the field (with its type) in the
    config that `convit train` builds, whatever preset the flag selects."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    words, expected = _flag_and_value(field)
    cfg = config_from_args(parser.parse_args(words))
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    assert expected != default
    got = getattr(cfg, field.name)
    assert got == expected and type(got) is type(expected), (words, got)


def test_example_configs_load():
    files = sorted((Path(__file__).parent.parent / "configs").glob("*.*"))
    assert files
    for f in files:
        cfg = build_config(config_file=f)
        assert cfg.preset in TRAIN_PRESETS, f
    main_job = build_config(config_file=Path(__file__).parent.parent / "configs" / "digits_convit.yaml")
    defaults = build_config()
    assert {k: v for k, v in main_job.to_dict().items() if k != "output"} == {
        k: v for k, v in defaults.to_dict().items() if k != "output"
    }  # the file spells out `convit train`
