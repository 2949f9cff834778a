"""Fine-tuning: the ``finetune`` preset chosen for ``--finetune`` / ``--pretrained``, layer-wise
lr decay through timm's optimizer factory, gradient accumulation equal to the larger batch,
gradient checkpointing, and ``--pretrained`` with a new head and adapted input weights."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from conftest import TINY, small_convit

from convit.cli import main
from convit.core.presets import FINETUNE_PRESET, TRAIN_PRESETS
from convit.training.config import TrainConfig, build_config, load_config_file
from convit.training.engine import train_one_epoch
from convit.training.flags import add_config_arguments, config_from_args
from convit.training.recipe import build_model, build_recipe
from convit.weights import names, zoo
from convit.weights.pretrained import Pretrained


def test_finetuning_picks_the_finetune_preset_unless_one_is_named():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    for flags in (
        ["--finetune", "w.safetensors"],
        ["--pretrained", "--model", "convit_tiny", "--dataset", "imagefolder"],
    ):
        cfg = config_from_args(parser.parse_args(flags))
        assert cfg.preset == FINETUNE_PRESET == "finetune"
        for key, value in TRAIN_PRESETS["finetune"].items():
            assert getattr(cfg, key) == value, key
        assert cfg.mixup == cfg.cutmix == 0 and cfg.layer_decay and cfg.augment == "small"
        assert cfg.epochs < TrainConfig.epochs and cfg.resolved_lr() < TrainConfig().resolved_lr() * 10
    assert build_config({"finetune": "w.safetensors", "preset": "digits"}).preset == "digits"
    assert build_config({"dataset": "imagefolder"}).preset == "imagenet"  # no fine-tuning: the dataset's
    assert build_config({"finetune": "w.safetensors", "dataset": "cifar10"}).dataset == "cifar10"
    for bad in ({"layer_decay": 0.0}, {"layer_decay": 1.5}, {"grad_accum_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            build_config(bad)


def test_accumulated_lr_is_the_larger_batch_lr():
    assert build_config({"batch_size": 16, "grad_accum_steps": 4}).resolved_lr(2) == build_config(
        {"batch_size": 128}
    ).resolved_lr(1)


def _batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(sum(sizes), 3, 32, 32, generator=g), torch.randint(0, 5, (sum(sizes),), generator=g)
    out, start = [], 0
    for n in sizes:
        out.append((x[start : start + n], y[start : start + n]))
        start += n
    return out


def _train(sizes: list[int], accum: int, batch: int, epochs: int = 2) -> tuple[torch.nn.Module, object]:
    """Two epochs of SGD (momentum, cosine schedule with warm-up, EMA, label smoothing, clipping)
    in float64 on the same images cut into ``sizes``-image batches, an update every ``accum``."""
    torch.manual_seed(0)
    model = small_convit().double()
    cfg = build_config(
        {
            "opt": "sgd",
            "lr": 0.05,
            "epochs": epochs,
            "warmup_epochs": 1,
            "mixup": 0,
            "cutmix": 0,
            "drop_path": 0,
            "batch_size": batch,
            "grad_accum_steps": accum,
            "model_ema": True,
            "model_ema_decay": 0.5,
            "clip_grad": 10.0,
        }
    )
    step = build_recipe(cfg, model, steps=len(sizes), world=1, num_classes=5, device=torch.device("cpu"))
    loader = [(x.double(), y) for x, y in _batches(sizes)]
    for epoch in range(1, epochs + 1):
        train_one_epoch(model, loader, step, torch.device("cpu"), epoch, progress=False)
    return model, step


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "small,large",
    [([16, 16, 16, 16], [32, 32]), ([16, 16, 16], [32, 16])],
    ids=["even", "ragged-last-update"],
)
def test_gradient_accumulation_equals_the_larger_batch(small, large):
    """accum 2 x batch 16 = accum 1 x batch 32 on the same data: weights, EMA and schedule
    (an epoch's last update takes what is left)."""
    a, step_a = _train(small, accum=2, batch=16)
    b, step_b = _train(large, accum=1, batch=32)
    assert step_a.lr == step_b.lr and step_a.lr_scheduler.state_dict() == step_b.lr_scheduler.state_dict()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), (name, (p - q).abs().max().item())
    for p, q in zip(step_a.ema.module.parameters(), step_b.ema.module.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
    moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), small_convit().parameters()))
    assert moved > 1e-2  # the runs really trained
    c, _ = _train(small, accum=1, batch=16)  # the test can fail: without accumulation it differs
    assert max((p - q).abs().max().item() for p, q in zip(c.parameters(), b.parameters())) > 1e-4


def test_layer_decay_scales_each_block_through_timms_optimizer():
    model = small_convit(depth=3, local_up_to_layer=2)  # L = 3 blocks
    cfg = build_config({"layer_decay": 0.5, "lr": 1.0, "warmup_epochs": 0, "epochs": 1})
    step = build_recipe(cfg, model, steps=4, world=1, num_classes=5, device=torch.device("cpu"))
    scale = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in step.optimizer.param_groups:
        for p in group["params"]:
            scale[names[id(p)]] = group["lr_scale"]
            assert math.isclose(group["lr"], group["lr_scale"])  # the schedule applies the scales
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 0.5  # the final norm with the last block
    assert [scale[f"blocks.{i}.mlp.fc1.weight"] for i in range(3)] == [0.125, 0.25, 0.5]
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == scale["cls_token"] == 0.0625
    assert scale["blocks.0.attn.gating_param"] == 0.125
    assert step.lr == 1.0  # the nominal rate (the head's), not the stem's
    no_sched = build_recipe(
        build_config({"layer_decay": 0.5, "lr": 1.0, "sched": "none"}),
        small_convit(depth=3),
        steps=4,
        world=1,
        num_classes=5,
        device=torch.device("cpu"),
    )
    assert sorted({g["lr"] for g in no_sched.optimizer.param_groups}) == [0.0625, 0.125, 0.25, 0.5, 1.0]


def test_flags_reach_the_run(train_tiny, tmp_path):
    assert (
        train_tiny(
            "--epochs",
            "1",
            "--grad-checkpointing",
            "--grad-accum-steps",
            "2",
            "--layer-decay",
            "0.8",
            "--no-locality",
        )
        == 0
    )
    cfg = load_config_file(tmp_path / "run" / "config.yaml")
    assert (cfg["grad_checkpointing"], cfg["grad_accum_steps"], cfg["layer_decay"]) == (True, 2, 0.8)
    assert build_model(
        build_config({"grad_checkpointing": True}), 10, 1, 8, say=lambda s: None
    ).grad_checkpointing


def test_pretrained_gets_a_new_head_and_adapted_input_weights(tmp_path, monkeypatch, capsys):
    """--pretrained on digits (1 channel, 10 classes) from published RGB 1000-class weights:
    the finetune preset, a new head, the stem summed over RGB as timm does, the rest loaded."""
    published = dict(TINY_ARCH, in_chans=3, num_classes=1000)
    monkeypatch.setitem(
        names._REGISTRY, "tiny_pub", zoo.ModelSpec(published, Pretrained(url="https://x/tiny_pub.pth"))
    )
    monkeypatch.setenv("CONVIT_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    source = zoo.create_model("tiny_pub")
    torch.save(source.state_dict(), tmp_path / "tiny_pub.pth")
    model = build_model(build_config({"pretrained": True, "model": "tiny_pub"}), 10, 1, 8, say=lambda s: None)
    assert model.num_classes == 10 and model.cfg.in_chans == 1
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(model.blocks[0].attn.qk.weight, source.blocks[0].attn.qk.weight)
    flags = [
        f
        for f in TINY
        if f not in ("--model-kwargs", "depth=2", "local_up_to_layer=1", "embed_dim=16", "patch_size=2")
    ]
    assert (
        main(
            [
                "train",
                "--pretrained",
                "--model",
                "tiny_pub",
                *flags,
                "--epochs",
                "1",
                "--no-locality",
                "--no-report",
                "--output",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "published tiny_pub weights: their 1000-class head is replaced by a new 10-class head" in out
    assert load_config_file(tmp_path / "run" / "config.yaml")["preset"] == "finetune"


#: The tiny model of conftest's TINY flags, as ConViTConfig fields on digits' 8x8 images.
TINY_ARCH = dict(
    img_size=8,
    patch_size=2,
    embed_dim=16,
    depth=2,
    num_heads=4,
    local_up_to_layer=1,
    mlp_ratio=2.0,
    global_pool="avg",
)


def test_finetune_from_a_run_uses_the_preset(trained_run, train_tiny, tmp_path):
    assert (
        train_tiny(
            "--finetune",
            str(trained_run.folder / "model.safetensors"),
            "--epochs",
            "1",
            "--no-locality",
            name="ft",
        )
        == 0
    )
    cfg = load_config_file(tmp_path / "ft" / "config.yaml")
    assert cfg["preset"] == "finetune" and cfg["layer_decay"] == TRAIN_PRESETS["finetune"]["layer_decay"]
    assert cfg["mixup"] == 0 and cfg["model"] == "convit_digits"
