"""`EvalLoader`: a loader over fixed evaluation views that tells the evaluation which samples to count.

The sampler (views=EvalViews) plans every video of the list once over the ranks, each as clips x crops samples
(sample id = video * views + view), and pads each rank's last batch by repeating its last sample. The loaders
replace an unreadable video with another one (training must go on); evaluation must not count that stand-in.
So each batch carries, beside the loader's keys:

    planned  (B,) int64: the sample the sampler planned at that position;
    real     (B,) bool: False for the padding of the rank's last batch.

A row whose "index" (the sample actually loaded) differs from "planned" stood in for an unreadable video; a
batch DALI lost whole never arrives. mgm.evaluate excludes such videos (named and counted) and counts every
real sample once. Files missing from the disk never reach the sampler: `missing` names them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dali_pipes.adapter import LoaderBase


class EvalLoader:
    """Batches of `loader` (whose sampler has views) with "planned" and "real"; see the module docstring.

    entries: the videos the sampler holds, in video-id order (path, label); missing: list rows whose files are
    not on disk (excluded before loading); views: samples per video.
    """

    def __init__(self, loader: LoaderBase, *, entries: list[Any], missing: list[str]) -> None:
        sampler = loader.sampler
        if sampler.views is None:
            raise ValueError("EvalLoader needs a sampler with fixed views (ClipSampler(views=EvalViews(...)))")
        self.loader, self.entries, self.missing = loader, entries, missing
        self.views = sampler.views.count
        self.expected = np.arange(sampler.rank, len(entries), sampler.world_size)  # video ids of this rank

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def stats(self) -> dict[str, Any]:
        return self.loader.stats

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        s = self.loader.sampler
        plan = s.epoch_indices(s.epoch)  # the same every epoch: fixed views, no shuffle
        for batch in self.loader:
            end = s.position  # the loaders count a batch (or a lost one) in position before yielding it
            start = end - len(batch["index"])
            yield {**batch, "planned": torch.from_numpy(plan[start:end].copy()),
                   "real": torch.arange(start, end) < s.real_samples}  # fmt: skip

    def close(self) -> None:
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()
