"""One epoch of training (convit/training/engine.py) on a model small enough to check by hand: the
epoch's mean loss is the image-weighted mean of the batches' losses, and non-finite weights left
by a finite loss stop the epoch."""

from __future__ import annotations

import pytest
import torch

from convit.training.engine import NonFiniteLossError, TrainStep, train_one_epoch


def test_the_epoch_loss_is_the_image_weighted_mean_of_the_batch_losses():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(n, 1, 2, 2), torch.randint(0, 3, (n,))) for n in (5, 2, 7)]
    seen = []

    def loss_fn(logits, targets):
        loss = torch.nn.functional.cross_entropy(logits, targets)
        seen.append((loss.item(), len(targets)))
        return loss

    step = TrainStep(torch.optim.SGD(model.parameters(), lr=0.5), loss_fn)
    stats = train_one_epoch(model, batches, step, torch.device("cpu"), epoch=1, progress=False)
    assert stats["train_images"] == 14 and stats["lr"] == 0.5
    assert stats["train_loss"] == sum(v * n for v, n in seen) / 14
    assert len({v for v, _ in seen}) == 3  # the weights moved between batches


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_weights_overflowed_by_a_finite_loss_stop_the_epoch(bad):
    # the loss is finite at every step, but the epoch's last update leaves one weight non-finite
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))

    class Breaking(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            super().step(closure)
            self.steps += 1
            if self.steps == 3:
                with torch.no_grad():
                    model[2].bias[1] = bad  # the last of the weights, one element

    step = TrainStep(Breaking(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss())
    batches = [(torch.randn(5, 1, 2, 2), torch.randint(0, 2, (5,))) for _ in range(3)]
    with pytest.raises(NonFiniteLossError, match="the weights became NaN/inf at epoch 4, step 3/3"):
        train_one_epoch(model, batches, step, torch.device("cpu"), epoch=4, progress=False)
    model[2].bias.data[1] = 0.5  # finite again: the same epoch passes
    step = TrainStep(torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss())
    assert (
        train_one_epoch(model, batches, step, torch.device("cpu"), epoch=4, progress=False)["train_images"]
        == 15
    )
