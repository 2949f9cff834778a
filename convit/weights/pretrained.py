"""Where a zoo model's published weights live (:class:`Pretrained`).

Its own module so that the zoo, which names the weights, and :mod:`convit.weights.hub`, which fetches
them, share the type while neither imports the other (the zoo imports the hub only when
weights are actually fetched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Pretrained"]


@dataclass(frozen=True)
class Pretrained:
    """Where published weights for a model live.

    url: the official release (facebookresearch/convit).  Its file names carry no hash, so
    there is no hash to check them against; sha256 stays None until someone records one.
    hf_hub_id: timm's copy on the Hugging Face hub (``model.safetensors`` in that repo).
    """

    url: Optional[str] = None
    sha256: Optional[str] = None
    hf_hub_id: Optional[str] = None
    top1: Optional[float] = None  # ImageNet-1k top-1 reported by the authors

    @property
    def filename(self) -> Optional[str]:
        """The official file's name (the last part of ``url``), or None without a url."""
        return self.url.rsplit("/", 1)[-1] if self.url else None
