"""Fine-tuning's per-clip RandAugment on the CPU fallback: one op draw, the same on every frame of a clip.

The DALI paths run DALI's own `nvidia.dali.auto_aug.rand_augment` inside the graph (dali_pipes.graph); this is
the PyAV fallback's counterpart, torchvision's `transforms.v2.RandAugment`, which treats a (T, C, H, W) uint8
clip as a batch of frames under one draw (the same op, magnitude and sign for every frame, as VideoMAE applies
RandAugment to a video). Both take timm's magnitude m of 10 as bin round(3 m) of 31 (the same strength for
rotate, shear, translate, solarize and the enhance ops: m7 -> bin 21, 21 degrees, shear 0.21).

The draw is seeded by the sample's `ClipSpec.aug_seed` (sampler: seed, epoch, video, attempt), so the clip a
worker produces does not depend on which worker made it or when: a resumed run augments exactly as before.
"""

from __future__ import annotations

import torch

MAGNITUDE_BINS = 31  # torchvision's and DALI's default number of magnitude bins
FILL = 128  # grey for the area rotate / shear / translate uncover (timm's and VideoMAE's fill)


def magnitude_bin(m: int) -> int:
    """timm's magnitude m in 0..10 -> the bin of 0..MAGNITUDE_BINS - 1 with the same strength."""
    return round(m * (MAGNITUDE_BINS - 1) / 10)


class ClipRandAugment:
    """`aug(clip, seed)`: (3, T, S, S) uint8 -> (3, T, S, S) uint8 with `num_ops` RandAugment ops of strength m."""

    def __init__(self, num_ops: int, magnitude: int) -> None:
        from torchvision.transforms import v2

        self.num_ops, self.magnitude = num_ops, magnitude
        self.op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude_bin(magnitude),
                                 num_magnitude_bins=MAGNITUDE_BINS, fill=FILL)  # fmt: skip

    def __call__(self, clip: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # the worker's own torch RNG stays untouched
            torch.manual_seed(seed)
            return self.op(clip.transpose(0, 1)).transpose(0, 1)  # frames as the batch: one draw for all
