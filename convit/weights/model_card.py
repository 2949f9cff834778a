"""The model card (``README.md``) of an exported hub repo.

Hugging Face reads the YAML front matter (``library_name: timm``, tags, datasets, the measured
top-1 as ``model-index``); people read the rest: what the model is, its classes, what the run
measured and how it was trained.  Both come from what the export knows: the model, the metadata
of the weight file (class names, data, the results ``convit train`` stored in it) and, when the
checkpoint sits in its run folder, that folder's ``config.yaml`` and ``log.jsonl``.  What is not
known is written as "unknown", never made up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..core.fileio import read_jsonl

__all__ = ["RunRecord", "read_run", "dataset_name", "model_card"]

#: The results a card reports, as (log key, words), in this order.
_RESULTS = (
    ("test_top1", "test top-1"),
    ("test_top5", "test top-5"),
    ("val_top1", "validation top-1"),
    ("val_top5", "validation top-5"),
    ("ema_val_top1", "validation top-1 of the EMA weights"),
)


@dataclass
class RunRecord:
    """What a run folder says about the run that wrote a checkpoint (empty when unknown)."""

    folder: Optional[Path] = None
    config_text: str = ""  # config.yaml, verbatim
    config: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)


def read_run(folder: Optional[Path]) -> RunRecord:
    """``config.yaml`` and ``log.jsonl`` of the run folder ``folder`` (what is there of them)."""
    if folder is None or not folder.is_dir():
        return RunRecord()
    record = RunRecord(folder)
    if (folder / "config.yaml").is_file():
        record.config_text = (folder / "config.yaml").read_text()
        loaded = yaml.safe_load(record.config_text)
        record.config = loaded if isinstance(loaded, dict) else {}
    if (folder / "log.jsonl").is_file():
        record.log = read_jsonl(folder / "log.jsonl")
    return record


def _results(stored: dict[str, Any], run: RunRecord, weights_name: str) -> dict[str, Any]:
    """The exported weights' results: those the file stores, completed from the log line of the
    same epoch (the last line when the file names none).  EMA weights report the EMA's only."""
    epoch = stored.get("epoch")
    entry = next((e for e in run.log if e.get("epoch") == epoch), None) if epoch else (run.log or [None])[-1]
    entry = entry or {}
    if Path(weights_name).stem == "ema":
        return {
            k: v
            for k, v in {"epoch": entry.get("epoch"), "ema_val_top1": entry.get("ema_val_top1")}.items()
            if v is not None
        }
    out = {k: entry[k] for k, _ in _RESULTS if k in entry and not k.startswith("ema")}
    out.update({k: v for k, v in stored.items() if v is not None})
    if "epoch" not in out and "epoch" in entry:
        out["epoch"] = entry["epoch"]
    return out


def dataset_name(data: Optional[dict[str, Any]], run: RunRecord) -> Optional[str]:
    """The dataset's name: the built-in dataset, or an image folder's own name."""
    name = (data or {}).get("dataset") or run.config.get("dataset")
    path = run.config.get("data_path")
    if name == "imagefolder" and path:
        return Path(path).name or name
    return name


def _front_matter(name: str, dataset: Optional[str], results: dict[str, Any]) -> str:
    meta: dict[str, Any] = {
        "library_name": "timm",
        "license": "apache-2.0",
        "tags": ["image-classification", "timm", "convit"],
        "pipeline_tag": "image-classification",
    }
    if dataset:
        meta["datasets"] = [dataset]
    key = next((k for k in ("test_top1", "val_top1", "ema_val_top1") if k in results), None)
    if key is not None:
        meta["metrics"] = ["accuracy"]
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {
                            "name": dataset or "unknown",
                            "type": dataset or "unknown",
                            "split": "test" if key.startswith("test") else "validation",
                        },
                        "metrics": [
                            {
                                "type": "accuracy",
                                "name": dict(_RESULTS)[key],
                                "value": round(float(results[key]), 2),
                            }
                        ],
                    }
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _results_section(results: dict[str, Any], run: RunRecord) -> list[str]:
    rows = [f"| {words} | {results[k]:.2f} % |" for k, words in _RESULTS if k in results]
    if not rows:
        return ["Unknown: the weight file stores no result and no `log.jsonl` was found beside it."]
    epochs = len(run.log) if run.log else None
    at = (
        f" after epoch {results['epoch']}" + (f" of {epochs}" if epochs else "") if "epoch" in results else ""
    )
    source = "the file's metadata and the run's `log.jsonl`" if run.log else "the file's metadata"
    return [f"Measured by the training run{at} ({source}):", "", "| split | accuracy |", "|---|---|", *rows]


def _training_section(run: RunRecord) -> list[str]:
    if not run.config_text:
        return [
            "Unknown: no `config.yaml` was found beside the exported checkpoint, so the command and "
            "settings of its training run are not recorded here."
        ]
    return [
        "Trained with `convit train` (the convit package); the run's effective config (its "
        "`config.yaml`) follows, and this command repeats the run:",
        "",
        "```bash",
        "convit train --config config.yaml",
        "```",
        "",
        "```yaml",
        run.config_text.rstrip(),
        "```",
    ]


def model_card(
    config: dict[str, Any],
    *,
    name: str,
    description: str,
    run: RunRecord,
    stored: Optional[dict[str, Any]] = None,
    data: Optional[dict[str, Any]] = None,
    weights_name: str = "model.safetensors",
) -> str:
    """The ``README.md`` of an export: ``config`` is its ``config.json``; ``description`` one
    line on the model; ``stored`` the results in the weight file's metadata (epoch, test_top1,
    val_top1); ``data`` its data metadata; ``run`` the run folder beside the checkpoint."""
    results = _results(stored or {}, run, weights_name)
    dataset = dataset_name(data, run)
    labels = config.get("label_names")
    classes = ", ".join(f"`{c}`" for c in labels) if labels else "unknown (no class names were stored)"
    size = config["pretrained_cfg"].get("input_size")
    lines = [
        f"# {name}",
        "",
        description,
        "",
        f"- **Classes ({config['num_classes']}):** {classes}",
        f"- **Dataset:** {dataset or 'unknown'}",
        f"- **Input:** {size[0]} x {size[1]} x {size[2]}, mean {config['pretrained_cfg'].get('mean')}, "
        f"std {config['pretrained_cfg'].get('std')}"
        if size
        else "- **Input:** unknown",
        f"- **timm architecture:** `{config['architecture']}` with the `model_args` of `config.json`",
        "",
        "## Results",
        "",
        *_results_section(results, run),
        "",
        "## Training",
        "",
        *_training_section(run),
        "",
        "## Use",
        "",
        *_usage(name),
    ]
    return _front_matter(name, dataset, results) + "\n".join(lines) + "\n"


def _usage(name: str) -> list[str]:
    repo = f"<user>/{name}"
    return [
        "With timm, transformers or convit, from the hub (once uploaded) or from this folder:",
        "",
        "```python",
        "import timm",
        f"model = timm.create_model('hf-hub:{repo}', pretrained=True)  # or 'local-dir:PATH'",
        "",
        "from transformers import pipeline",
        f"classify = pipeline('image-classification', model='{repo}')  # or the folder's path",
        "",
        "import convit",
        f"model = convit.create_model('hf-hub:{repo}', pretrained=True)  # or checkpoint_path='PATH'",
        "```",
        "",
        "Command line: `convit predict --checkpoint PATH image.png`.",
    ]
