"""The dataset registry (convit.data.registry): adding a dataset is one entry, and everything that
names datasets reads it; importing convit.data (and ``convit predict``) loads no dataset library.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import convit.data
from convit.core.presets import TRAIN_PRESETS
from convit.data import DatasetSpec, build_data, dataset_names, dataset_spec, device_splits, register_dataset
from convit.data.registry import unregister_dataset
from convit.data.sources import Source
from convit.training.config import build_config

REPO = Path(__file__).resolve().parents[1]
FAKE = "fake-set"
#: Not the preset any hard-coded table gives: a run of ``fake-set`` can only get it from the spec.
FAKE_PRESET = "cifar"


def _fake_source(data_path, download) -> Source:
    """A tiny in-memory dataset: 3 classes of 8x8 RGB uint8 images, 10 train and 2 test each."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    test_labels = np.repeat(np.arange(3), 2)
    return Source(
        torch.from_numpy(rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)),
        labels,
        torch.from_numpy(rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)),
        test_labels,
        class_names=["a", "b", "c"],
        in_chans=3,
        native_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        default_augment="small",
    )


def _spec(hflip: bool = False, **kw) -> DatasetSpec:
    fields = dict(
        name=FAKE,
        loader=_fake_source,
        in_chans=3,
        default_preset=FAKE_PRESET,
        hflip=hflip,
        own_test_split=True,
        description="a test's tiny in-memory set",
    )
    return DatasetSpec(**{**fields, **kw})


@pytest.fixture(params=[False, True], ids=["no-flip", "flip"])
def fake(request):
    """``fake-set`` registered for one test (with each flip policy), removed after it."""
    spec = register_dataset(_spec(hflip=request.param))
    yield spec
    unregister_dataset(FAKE)


# ---- one entry is enough ------------------------------------------------------------------


def test_a_registered_dataset_builds(fake):
    b = build_data(FAKE, val_fraction=0.2, seed=1, augment="small")
    assert (b.name, b.num_classes, b.in_chans, b.img_size) == (FAKE, 3, 3, 8)
    assert len(b.val) == 6 and len(b.train) == 24 and len(b.test) == 6
    x, y = b.train[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    flips = "HorizontalFlip" in repr(b.train.transform)
    assert flips == fake.hflip, "the DataLoader path's augmentation must follow the spec's flip policy"


def test_a_registered_dataset_is_in_every_name_list(fake):
    assert FAKE in dataset_names()
    assert FAKE in convit.data.DATASETS, "convit.data.DATASETS must follow the registry"
    assert FAKE in convit.data.registry.DATASETS
    assert dataset_spec(FAKE) is fake


def test_train_config_takes_the_registered_default_preset(fake):
    cfg = build_config({"dataset": FAKE})
    assert cfg.preset == FAKE_PRESET and cfg.dataset == FAKE
    for key, value in TRAIN_PRESETS[FAKE_PRESET].items():
        if key != "dataset":
            assert getattr(cfg, key) == value, key
    assert build_config({"dataset": FAKE, "preset": "digits"}).preset == "digits"


def test_the_flip_policy_reaches_the_device_path(fake):
    splits = device_splits(FAKE, "cpu", val_fraction=0.2)
    assert splits["train"].hflip == fake.hflip
    assert splits["train"].pad == 1 and len(splits["val"]) == 6 and len(splits["test"]) == 6


def test_built_in_specs_say_what_they_do():
    assert dataset_names() == ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
    presets = {n: dataset_spec(n).default_preset for n in dataset_names()}
    assert presets == {
        "digits": "digits",
        "fashion-mnist": "fashion-mnist",
        "cifar10": "cifar",
        "cifar100": "cifar",
        "imagefolder": "imagenet",
    }
    assert [n for n in dataset_names() if not dataset_spec(n).hflip] == ["digits"]
    assert dataset_names(needs_data_path=True) == ("imagefolder",)
    assert build_config({"dataset": "imagefolder"}).preset == "imagenet"


# ---- what a spec must say -----------------------------------------------------------------


def test_a_spec_must_name_its_default_preset():
    with pytest.raises(TypeError):
        DatasetSpec(FAKE, _fake_source, 3, hflip=True, own_test_split=True, description="x")
    with pytest.raises(ValueError, match="unknown default_preset 'imagenette'"):
        register_dataset(_spec(default_preset="imagenette"))
    assert FAKE not in dataset_names()


@pytest.mark.parametrize(
    "kw,text",
    [
        ({"name": "two words"}, "one word"),
        ({"loader": "no_function_here"}, "module:function"),
        ({"in_chans": 0}, "in_chans"),
    ],
)
def test_bad_specs_are_refused(kw, text):
    with pytest.raises(ValueError, match=text):
        register_dataset(_spec(**kw))


def test_a_name_is_registered_once(fake):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(_spec())
    replaced = register_dataset(_spec(description="again"), replace=True)
    assert dataset_spec(FAKE) is replaced


def test_an_unknown_name_lists_the_known_ones_and_the_closest():
    with pytest.raises(ValueError) as e:
        dataset_spec("cifar-10")
    assert "did you mean 'cifar10'" in str(e.value)
    for name in dataset_names():
        assert name in str(e.value)
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        build_config({"dataset": "digit"})


def test_a_loader_that_contradicts_its_spec_is_an_error():
    register_dataset(_spec(in_chans=1))
    try:
        with pytest.raises(ValueError, match="3-channel images, the spec says 1"):
            build_data(FAKE)
    finally:
        unregister_dataset(FAKE)


def test_a_named_loader_is_imported_when_its_dataset_loads(tmp_path, monkeypatch):
    module = "convit_test_fake_source"
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np, torch\n"
        "from convit.data.sources import Source\n"
        "def load(data_path, download):\n"
        "    x = torch.zeros(4, 1, 4, 4)\n"
        "    y = np.array([0, 1, 0, 1])\n"
        "    return Source(x, y, x, y, ['a', 'b'], 1, 4, (0.5,), (0.5,), 'none')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register_dataset(_spec(loader=f"{module}:load", in_chans=1))
    try:
        assert module not in sys.modules, "registering must not import the loader"
        assert build_data(FAKE).num_classes == 2
        assert module in sys.modules
    finally:
        unregister_dataset(FAKE)
        sys.modules.pop(module, None)


# ---- lazy imports -------------------------------------------------------------------------


def test_the_reader_and_predict_load_no_dataset_library():
    """The reader alone loads no torch at all; the transforms and ``convit predict`` load no
    scikit-learn / scipy and none of the dataset modules.  (torchvision's own ``__init__``
    imports ``torchvision.datasets``, so any use of its transforms loads that package: what is
    checked is that no convit dataset module is imported for it.)  Loading digits, and only
    that, imports scikit-learn."""
    code = textwrap.dedent(
        """
        import sys

        def loaded(*prefixes):
            return sorted(m for m in sys.modules if m.split('.')[0] in prefixes)

        SOURCES = ['convit.data.' + m for m in ('digits', 'fashion_mnist', 'cifar', 'imagefolder')]

        def sources():
            return [m for m in SOURCES if m in sys.modules]

        import convit.data, convit.data.reader
        assert not loaded('torch', 'torchvision', 'sklearn', 'scipy'), loaded('torch', 'torchvision')[:9]
        import convit.data.transforms, convit.commands.predict
        assert not loaded('sklearn', 'scipy'), loaded('sklearn', 'scipy')[:9]
        assert not sources(), sources()
        assert convit.data.DATASETS and convit.data.dataset_spec('digits').in_chans == 1
        assert not loaded('sklearn', 'scipy') and not sources(), sources()
        convit.data.build_data('digits')
        assert loaded('sklearn') and sources() == ['convit.data.digits'], sources()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, "importing convit.data loads dataset libraries:\n" + proc.stderr[-3000:]


def test_every_public_name_of_convit_data_resolves():
    for name in convit.data.__all__:
        assert getattr(convit.data, name) is not None, name
    assert "build_data" in dir(convit.data)
    with pytest.raises(AttributeError):
        convit.data.no_such_name  # noqa: B018
