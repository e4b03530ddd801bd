"""Linear probe: frozen encoder features, cached once per split, and a linear classifier trained on them.

The cheap signal of representation quality: the encoder runs once per video of each split (mean-pooled tokens,
then fc_norm, averaged over the evaluation views: mgm.evaluate.view_means), the features go to a file keyed by
what produced them (checkpoint, list, clip shape, views), and the linear layer trains on them in seconds. Features
are standardized with the training split's mean and std (MAE's BatchNorm without affine, as a fixed map).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgm import checkpoint as ckpt
from mgm.evaluate import EvalBatches, gather, view_means


@dataclass
class Features:
    """One split: features (N, D) float32, labels (N,) int64, the videos' paths (N) in the same order."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str]


def file_key(path: str | Path) -> str:
    """A file's identity for a cache key: path, size and modification time (a rewritten file changes it)."""
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached_features(cache: Path, key: dict[str, Any], compute: Callable[[], Features], *, write: bool = True,
                    say: Callable[[str], None] = print) -> Features:  # fmt: skip
    """The features in `cache` when it was written for `key`, else `compute()`, written there atomically when
    `write` (rank 0 of a distributed run; every rank computes, since the computation gathers over the ranks)."""
    if cache.is_file():
        try:
            saved = ckpt.load(cache)
        except ckpt.CheckpointError as e:
            say(f"[probe] {cache} unreadable ({e}); computing the features again")
        else:
            if saved.get("key") == key:
                say(f"[probe] features from {cache}")
                return Features(saved["x"], saved["y"], list(saved["paths"]))
    feats = compute()
    if not write:
        return feats
    cache.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_atomic({"key": key, "x": feats.x, "y": feats.y, "paths": feats.paths}, cache)
    return feats


def train_probe(
    train: Features,
    val: Features,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a linear classifier on standardized `train` features (AdamW, cosine lr, shuffled mini-batches) and
    measure it on `val`. Returns top-1 on both splits, the number of videos of each, and the final train loss.
    Deterministic for a seed (its own generator; the global RNGs are not touched)."""
    if len(train.y) == 0 or len(val.y) == 0:
        raise ValueError(f"linear probe: {len(train.y)} training and {len(val.y)} evaluation videos; need both")
    gen = torch.Generator().manual_seed(seed)
    mean, std = train.x.mean(0), train.x.std(0, unbiased=False).clamp_min(1e-6)
    xs, xv = (train.x - mean) / std, (val.x - mean) / std
    head = torch.nn.Linear(xs.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(xs) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss = torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(head(xs[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        acc_train = float((head(xs).argmax(1) == train.y).float().mean())
        acc_val = float((head(xv).argmax(1) == val.y).float().mean())
    return {"train_top1": acc_train, "top1": acc_val, "train_videos": len(xs), "videos": len(xv),
            "train_loss": float(loss.detach())}  # fmt: skip


def as_features(means: dict[int, np.ndarray], paths: list[str], labels: list[int]) -> Features:
    """Features of the videos in `means` (video id -> (D,) mean feature), in video-id order."""
    ids = sorted(means)
    x = torch.from_numpy(np.stack([means[v] for v in ids]).astype(np.float32)) if ids else torch.zeros(0, 0)
    return Features(x, torch.tensor([labels[v] for v in ids], dtype=torch.int64), [paths[v] for v in ids])


def split_features(
    model: nn.Module,
    loader: EvalBatches,
    *,
    world_size: int = 1,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
) -> Features:
    """Frozen features of every readable video of `loader`'s list: model.forward_features (B, D), averaged over
    each video's views and gathered over the ranks (every rank calls it)."""
    model.eval()
    local = view_means(model.forward_features, loader, views=loader.views, expected=loader.expected, device=device,
                       amp=amp)  # fmt: skip
    means = gather(local, world_size).means
    return as_features(means, [e.path for e in loader.entries], [e.label for e in loader.entries])
