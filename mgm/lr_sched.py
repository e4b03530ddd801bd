"""Per-iteration learning rate: linear warmup, then half-cosine decay to a floor (MAE / VideoMAE schedule)."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The linear scaling rule: base_lr is quoted for a total batch of 256 clips."""
    return base_lr * total_batch / 256


def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
