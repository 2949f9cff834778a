"""The batched in-memory transforms (convit/data/batched.py) are torchvision's per-image v2
pipelines computed a batch at a time: the same draws in the same order and the same values, bit
for bit, through a DataLoader as training uses it; anything they do not reproduce stays per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from convit.data.batched import batched
from convit.data.datasets import TensorImageDataset
from convit.data.transforms import tensor_eval_transform, train_transform


class PerImage(TensorImageDataset):
    """The same dataset without the batched path: torchvision's pipeline image by image."""

    __getitems__ = None  # the DataLoader then calls __getitem__ per index


def _images(n: int, c: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(n + c + size)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return torch.rand(n, c, size, size, generator=g, dtype=dtype)


def _epoch(cls, images, transform, seed: int, workers: int = 0) -> list:
    labels = np.arange(len(images)) % 3
    ds = cls(images, labels, np.arange(len(images))[::-1].copy(), transform)
    torch.manual_seed(seed)
    return list(DataLoader(ds, batch_size=7, shuffle=True, num_workers=workers))


@pytest.mark.parametrize(
    "c,size,hflip,dtype",
    [
        (1, 8, False, torch.float32),  # digits
        (1, 28, True, torch.uint8),  # Fashion-MNIST's shape
        (3, 32, True, torch.uint8),  # CIFAR-10
        (3, 12, True, torch.float64),
    ],
)
def test_a_batch_equals_the_per_image_pipeline_bit_for_bit(c, size, hflip, dtype):
    mean, std = [0.3, 0.5, 0.7][:c], [0.2, 0.25, 0.3][:c]
    transform, wants_pil = train_transform("small", size, mean, std, c, native_size=size, hflip=hflip)
    assert not wants_pil and batched(transform) is not None
    images = _images(23, c, size, dtype)
    ours, theirs = _epoch(TensorImageDataset, images, transform, 5), _epoch(PerImage, images, transform, 5)
    assert len(ours) == len(theirs) == 4
    for (x, y), (x_ref, y_ref) in zip(ours, theirs):
        assert x.dtype == x_ref.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # the draws really vary: another seed gives other crops
    assert not torch.equal(_epoch(TensorImageDataset, images, transform, 6)[0][0], ours[0][0])
    # and the global stream is left where the per-image path leaves it
    torch.manual_seed(1)
    _epoch(TensorImageDataset, images, transform, 5)
    after_ours = torch.rand(1)
    _epoch(PerImage, images, transform, 5)
    assert torch.equal(torch.rand(1), after_ours)


def test_dataloader_workers_draw_the_same_batches():
    # each worker process draws from its own seeded stream, batch by batch, as the per-image path
    transform, _ = train_transform("small", 32, [0.5] * 3, [0.25] * 3, 3, native_size=32, hflip=True)
    images = _images(30, 3, 32, torch.uint8)
    ours, theirs = (
        _epoch(TensorImageDataset, images, transform, 3, 2),
        _epoch(PerImage, images, transform, 3, 2),
    )
    assert len(ours) == 5 and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ours, theirs)
    )


def test_the_one_call_draw_is_what_this_torch_does():
    # square crops without a flip (digits, the main job) draw the whole batch in one randint call;
    # a torch whose vector randint drew another stream would silently take the per-image loop
    from convit.data.batched import _vector_randint_is_serial

    assert _vector_randint_is_serial()


def test_the_eval_transform_is_batched_too():
    transform = tensor_eval_transform(8, 8, [0.5], [0.25])
    images = _images(10, 1, 8, torch.uint8)
    ours, theirs = _epoch(TensorImageDataset, images, transform, 0), _epoch(PerImage, images, transform, 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, theirs))


@pytest.mark.parametrize(
    "transform",
    [
        v2.Compose([v2.RandomCrop(8, padding=1, fill=1.0), v2.Normalize([0.5], [0.5])]),  # a non-zero fill
        v2.Compose([v2.RandomCrop(8, padding=1, padding_mode="reflect")]),
        v2.Compose([v2.RandomCrop(8, padding=(1, 2))]),  # uneven padding
        v2.Compose([v2.Resize(6), v2.Normalize([0.5], [0.5])]),
        v2.RandomHorizontalFlip(),
        lambda x: x,
    ],
)
def test_steps_it_does_not_reproduce_stay_per_image(transform):
    assert batched(transform) is None
    ds = TensorImageDataset(_images(4, 1, 8, torch.float32), np.zeros(4), np.arange(4), transform)
    x, y = ds.__getitems__([2, 0])[0]
    assert torch.is_tensor(x) and y == 0


def test_the_pil_path_is_never_batched():
    transform, wants_pil = train_transform("deit", 32, [0.5] * 3, [0.5] * 3, 3, native_size=32)
    assert wants_pil
    ds = TensorImageDataset(_images(2, 3, 32, torch.uint8), np.zeros(2), np.arange(2), transform, to_pil=True)
    assert ds._batched is None


@pytest.mark.parametrize(
    "n,batch,drop_last,even",
    [(23, 7, False, False), (23, 7, True, False), (23, 4, False, True), (22, 5, False, True)],
)
def test_sampled_batches_are_the_dataloaders_batches(n, batch, drop_last, even):
    # what `convit train` iterates for in-memory data without workers: the DataLoader's batches
    # (shuffled by a DistributedSampler, ragged or dropped last batch, mixup's even batches) and
    # the global stream left where the DataLoader leaves it
    from torch.utils.data import DistributedSampler

    from convit.data import collate_skipping, collate_skipping_even
    from convit.data.batched import SampledBatches

    transform, _ = train_transform("small", 12, [0.5] * 3, [0.25] * 3, 3, native_size=12, hflip=True)
    ds = TensorImageDataset(
        _images(n, 3, 12, torch.uint8), np.arange(n) % 4, np.arange(n)[::-1].copy(), transform
    )
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(2)
    # its own generator, as convit.training.fit gives it (without one, each epoch's iterator would take a
    # draw from the global stream, which SampledBatches does not)
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_skipping_even if even else collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )
    ours = SampledBatches(ds, batch, sampler, drop_last, even)
    torch.manual_seed(9)
    theirs, after_theirs = list(loader), torch.rand(1)
    torch.manual_seed(9)
    mine, after_mine = list(ours), torch.rand(1)
    assert len(ours) == len(loader) == len(mine) == len(theirs)
    for (x, y), (x_ref, y_ref) in zip(mine, theirs):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and y.dtype == y_ref.dtype
    assert torch.equal(after_mine, after_theirs)
    assert not even or all(len(y) % 2 == 0 for _, y in mine)


def test_only_batchable_datasets_take_whole_batches():
    transform, _ = train_transform("deit", 32, [0.5] * 3, [0.5] * 3, 3, native_size=32)
    ds = TensorImageDataset(_images(2, 3, 32, torch.uint8), np.zeros(2), np.arange(2), transform, to_pil=True)
    assert not ds.batchable
    with pytest.raises(ValueError, match="per image"):
        ds.batch(torch.tensor([0]))
