"""Old home of the on-device data classes, kept so that existing imports keep working.

The data (:class:`~convit.data.device.DeviceImages`, the batch iterables and
:func:`~convit.data.device.device_splits`) lives in :mod:`convit.data.device`; training on it
is :func:`convit.train.fit` with ``on_device=True`` (the ``cifar10-gpu`` experiment preset's
``device`` backend), the same loop, logging, checkpointing and resume as the DataLoader path.
"""
from __future__ import annotations

# The on-device data classes live in the data layer now; re-exported here for old importers.
from ..data.device import DeviceImages, EvalBatches, TrainBatches, device_splits

__all__ = ["DeviceImages", "TrainBatches", "EvalBatches", "device_splits"]
