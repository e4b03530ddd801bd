"""Clip sampler: decides once, per sample, which video, which frames, which crop box and whether to flip.

Everything that decides *which pixels* is drawn here and handed unchanged to the pixel path (DALI or PyAV)
and to the mask path (motion map), so the two cannot disagree.

Policies (stated once, here):
- Epoch order: a permutation of all videos seeded by (seed, epoch); the same for every rank.
- Sharding: rank r takes every world_size-th video of that permutation. `shard_policy="drop"` (default) drops
  the last `N % world_size` videos of the permutation so ranks stay disjoint; `"pad"` repeats the first ones
  (like torch's DistributedSampler) so every video is seen, at the cost of a few duplicates.
- Batches: each rank's share is cut to a multiple of `batch_size` (drop_last, as VideoMAE pretraining), so
  every batch is full and all ranks run the same number of steps. Dropped samples differ from epoch to epoch.
- Randomness per sample (frames, crop, flip) is seeded by (seed, epoch, video_index, attempt): the same video
  gets the same clip in an epoch whatever the world size, and a replacement for a bad file (attempt > 0) is
  reproducible too.
- Clip: T frames `start + stride * i`; start uniform in [0, F - (T-1)*stride - 1] (VideoMAE). Videos shorter
  than the span: `short_video="loop"` draws start in [0, F) and wraps indices modulo F; `"clamp"` starts at 0
  and repeats the last frame (what VideoMAE's loader does).
- Crop: VideoMAE's multi-scale crop. Sizes = int(short_side * scale) per scale (snapped to `input_size` when
  within 3 px); (w, h) pairs whose scale indices differ by at most 1 (so aspect ratio varies a little); the
  box is placed at one of 13 fixed positions on a 4x4 step grid (corners, centre, edge midpoints, quarter
  points). The box is then resized to input_size x input_size by the loader.
- Flip: horizontal, with probability 0.5 when `flip=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SHORT_VIDEO_POLICIES = ("loop", "clamp")
SHARD_POLICIES = ("drop", "pad")
# 13 box positions of VideoMAE's GroupMultiScaleCrop (more_fix_crop), in units of (w_step, h_step).
_FIX_OFFSETS = (
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
    (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3),
)  # fmt: skip


class Entry(Protocol):
    """What the sampler needs of a file-list row (mgm.prep.filelist.VideoEntry fits)."""

    path: str
    label: int
    num_frames: int


@dataclass(frozen=True)
class ClipSpec:
    """One sample: video, frame indices (T,) int32, crop box (x, y, w, h) in source pixels, horizontal flip."""

    video_index: int
    path: str
    label: int
    frame_indices: np.ndarray
    crop: tuple[int, int, int, int]
    flip: bool


def clip_indices(
    num_video_frames: int, num_frames: int, stride: int, rng: np.random.Generator, policy: str
) -> np.ndarray:
    """Frame indices (num_frames,) int32 of one clip, VideoMAE-style; see the module docstring for short videos."""
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames")
    steps = stride * np.arange(num_frames, dtype=np.int64)
    span = steps[-1] + 1
    if num_video_frames >= span:
        start = int(rng.integers(0, num_video_frames - span + 1))
        return (start + steps).astype(np.int32)
    if policy == "loop":
        start = int(rng.integers(0, num_video_frames))
        return ((start + steps) % num_video_frames).astype(np.int32)
    if policy == "clamp":
        return np.minimum(steps, num_video_frames - 1).astype(np.int32)
    raise ValueError(f"short_video policy {policy!r} is not one of {SHORT_VIDEO_POLICIES}")


def multiscale_crop(
    frame_size: tuple[int, int],
    input_size: int,
    scales: Sequence[float],
    pair_u: float,
    pos_u: float,
    max_distort: int = 1,
) -> tuple[int, int, int, int]:
    """VideoMAE multi-scale crop box (x, y, w, h) for a (H, W) frame; pair_u, pos_u in [0, 1) pick pair and spot."""
    h_img, w_img = frame_size
    base = min(h_img, w_img)
    sizes = [int(base * s) for s in scales]
    snapped = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [
        (min(w, w_img), min(h, h_img))
        for i, h in enumerate(snapped)
        for j, w in enumerate(snapped)
        if abs(i - j) <= max_distort
    ]
    cw, ch = pairs[int(pair_u * len(pairs))]
    w_step, h_step = (w_img - cw) // 4, (h_img - ch) // 4
    ox, oy = _FIX_OFFSETS[int(pos_u * len(_FIX_OFFSETS))]
    return ox * w_step, oy * h_step, cw, ch


class ClipSampler:
    """Deterministic, sharded, resumable sampler of ClipSpecs for one rank.

    Iterating yields the specs of the current epoch from the current position on; `state_dict()` taken
    between samples and loaded into a fresh sampler continues with exactly the samples that were left.
    `frame_size(video_index) -> (H, W)` is needed only by `__iter__` (loaders call `spec()` with the size
    they read from the file header or motion cache).
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        num_frames: int = 16,
        stride: int = 2,
        input_size: int = 224,
        crop_scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        flip: bool = False,
        short_video: str = "loop",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        shuffle: bool = True,
        shard_policy: str = "drop",
        frame_size: Callable[[int], tuple[int, int]] | None = None,
    ) -> None:
        if short_video not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"short_video={short_video!r}: choose one of {SHORT_VIDEO_POLICIES}")
        if shard_policy not in SHARD_POLICIES:
            raise ValueError(f"shard_policy={shard_policy!r}: choose one of {SHARD_POLICIES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.paths = [e.path for e in entries]
        self.labels = np.array([e.label for e in entries], np.int64)
        self.lengths = np.array([e.num_frames for e in entries], np.int64)
        self.num_frames, self.stride, self.input_size = num_frames, stride, input_size
        self.crop_scales = tuple(float(s) for s in crop_scales)
        self.flip, self.short_video = flip, short_video
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_size, self.shuffle, self.shard_policy = batch_size, shuffle, shard_policy
        self.frame_size = frame_size
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.paths)} videos over {world_size} rank(s) give no full batch of {batch_size}: "
                "lower data.batch_size or add videos"
            )

    def __len__(self) -> int:
        """Samples per epoch on this rank (a multiple of batch_size)."""
        n = len(self.paths)
        per_rank = n // self.world_size if self.shard_policy == "drop" else -(-n // self.world_size)
        return per_rank - per_rank % self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first sample (unless it is the epoch just restored by load_state_dict)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Video indices (len(self),) int64 this rank visits in `epoch`, in order."""
        n = len(self.paths)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.shard_policy == "pad":
            total = -(-n // self.world_size) * self.world_size
            order = np.concatenate([order, order[: total - n]]) if total > n else order
        mine = order[self.rank : (len(order) // self.world_size) * self.world_size : self.world_size]
        return mine[: len(self)]

    def spec(
        self,
        epoch: int,
        video_index: int,
        frame_size: tuple[int, int],
        attempt: int = 0,
        num_video_frames: int | None = None,
    ) -> ClipSpec:
        """The ClipSpec of `video_index` in `epoch` for a (H, W) video; `attempt` > 0 for bad-file replacements.

        `num_video_frames` overrides the file list's frame count (a loader that counted the file's frames).
        """
        rng = np.random.default_rng([self.seed, epoch, video_index, attempt])
        length = int(self.lengths[video_index]) if num_video_frames is None else num_video_frames
        idx = clip_indices(length, self.num_frames, self.stride, rng, self.short_video)
        pair_u, pos_u, flip_u = rng.random(3)
        crop = multiscale_crop(frame_size, self.input_size, self.crop_scales, pair_u, pos_u)
        return ClipSpec(
            video_index=int(video_index),
            path=self.paths[video_index],
            label=int(self.labels[video_index]),
            frame_indices=idx,
            crop=crop,
            flip=bool(self.flip and flip_u < 0.5),
        )

    def replacement(self, epoch: int, video_index: int, attempt: int) -> int:
        """Video that stands in for a bad `video_index` on try `attempt` (1, 2, ...): a fixed seeded rule."""
        rng = np.random.default_rng([self.seed, epoch, video_index, attempt, 1])
        return int((video_index + rng.integers(1, len(self.paths))) % len(self.paths)) if len(self.paths) > 1 else 0

    def __iter__(self) -> Iterator[ClipSpec]:
        if self.frame_size is None:
            raise RuntimeError("ClipSampler: iterating needs frame_size=callable(video_index) -> (H, W)")
        indices = self.epoch_indices(self.epoch)
        while self.position < len(indices):
            vi = int(indices[self.position])
            self.position += 1
            yield self.spec(self.epoch, vi, self.frame_size(vi))

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: epoch, samples consumed in it, and what must match on resume."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_videos": len(self.paths),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved epoch and position; a changed dataset, seed or sharding is an error."""
        for key in ("seed", "world_size", "num_videos", "batch_size"):
            mine = len(self.paths) if key == "num_videos" else getattr(self, key)
            if state.get(key, mine) != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]}, this run has {mine}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
