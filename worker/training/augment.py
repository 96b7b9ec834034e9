"""Image augmentation of training batches: torchvision transforms v2 on the cached uint8 images, before normalisation.

Each batch draws its randomness from a generator seeded by (job seed, epoch, batch in epoch) alone, inside a forked
RNG, so a resumed job replays exactly the batches it would have seen and the global RNG (dropout) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Augment = Callable[[torch.Tensor, int], torch.Tensor]  # (uint8 N x 3 x H x W batch, batch in epoch) -> same shape

CROP_SCALE = (0.6, 1.0)


def image_transform(kind: str, side: int) -> v2.Transform | None:
    """The per-image transform for `augmentation` (None for "none"), producing `side` x `side` uint8 images."""
    if kind == "none":
        return None
    light: list[v2.Transform] = [
        v2.RandomResizedCrop(side, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if kind == "light":
        return v2.Compose(light)
    if kind == "trivial":
        return v2.Compose([*light, v2.TrivialAugmentWide()])
    raise ValueError(f"unknown augmentation {kind!r}")


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A seed that is a function of (job seed, epoch, batch in epoch) alone."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + batch) % 2**63


def augment_batch(pixels: torch.Tensor, transform: v2.Transform, seed: int) -> torch.Tensor:
    """Each image of the uint8 batch transformed with its own random draw, all from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in pixels]) if len(pixels) else pixels


def epoch_augmentation(kind: str, side: int | None, seed: int, epoch: int) -> Augment | None:
    """What `batches` applies to the training batches of `epoch` (None: no augmentation, or not images)."""
    transform = image_transform(kind, side) if side is not None else None
    if transform is None:
        return None
    return lambda pixels, batch: augment_batch(pixels, transform, batch_seed(seed, epoch, batch))
