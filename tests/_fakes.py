"""An in-memory loader with the dali_pipes Loader API, for model/engine/DDP tests (no files, no decoding)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from mgm.config import DataConfig
from mgm.contracts import NullHook
from mgm.model import VideoMAEPretrain, create_model

FRAMES, SIZE, RATIO = 4, 64, 0.75  # token grid (2, 4, 4): 32 tokens, 12 of 16 masked per slot


CLIP = DataConfig(num_frames=FRAMES, input_size=SIZE)


def tiny_model(seed: int = 0, **model: Any) -> VideoMAEPretrain:
    """The "tiny" size for FRAMES x SIZE^2 clips; `model` sets other ModelConfig keys (drop_path=0.1, ...).

    Not compiled unless asked (compile=True): model.compile "auto" would compile on a machine with a GPU, and
    these models run on the CPU.
    """
    torch.manual_seed(seed)
    return create_model("tiny", CLIP, **{"compile": False, **model})


def smooth_clip(gen: torch.Generator, frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    """(3, T, S, S) low-frequency pattern: masked patches are predictable from their neighbours."""
    coarse = torch.randn(1, 3, frames, 3, 3, generator=gen)
    return F.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=True)[0]


def tube_mask(grid: tuple[int, int, int], ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(N,) bool, True = masked: one random spatial mask repeated over the T2 slots."""
    t2, hp, wp = grid
    slot = torch.zeros(hp * wp, dtype=torch.bool)
    slot[torch.randperm(hp * wp, generator=gen)[: round(ratio * hp * wp)]] = True
    return slot.repeat(t2)


class FakeLoader:
    """Deterministic clips and tube masks; epoch order shuffled by (seed, epoch); sharded by rank.

    state_dict() is the resume point after the batches consumed so far, like dali_pipes' loaders.
    """

    def __init__(
        self,
        num_clips: int = 12,
        batch_size: int = 2,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grid: tuple[int, int, int] = (FRAMES // 2, SIZE // 16, SIZE // 16),
        ratio: float = RATIO,
        nan_at: frozenset[int] = frozenset(),
    ) -> None:
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.grid, self.ratio, self.nan_at = grid, ratio, nan_at
        gen = torch.Generator().manual_seed(seed)
        self.clips = torch.stack([smooth_clip(gen) for _ in range(num_clips)])
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return len(self.clips) // self.world_size // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        mine = order[self.rank :: self.world_size]
        while self.position < len(self):
            b = self.position
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            gens = [torch.Generator().manual_seed(int(i) + 7919 * self.epoch) for i in idx]
            masks = [tube_mask(self.grid, self.ratio, g) for g in gens]
            video = self.clips[idx].clone()
            if b in self.nan_at:
                video[0, 0, 0, 0, 0] = float("nan")
            self.position += 1
            yield {
                "video": video,
                "mask": torch.stack(masks),
                "label": torch.zeros(len(idx), dtype=torch.int64),
                "index": idx.to(torch.int64),
                "frame_indices": torch.arange(FRAMES, dtype=torch.int32).repeat(len(idx), 1),
                "mask_time": torch.zeros(len(idx)),
            }


class KillAt(NullHook):
    """Stops the run (as a kill would) when the step numbered `at` starts."""

    def __init__(self, at: int) -> None:
        self.at, self.n = at, 0

    def step(self, **kw: Any):  # type: ignore[override]
        if self.n == self.at:
            raise KeyboardInterrupt
        self.n += 1
        return super().step(**kw)
