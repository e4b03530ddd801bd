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
- Repeated sampling (`repeat=R`, VideoMAE V2's num_sample, MAE-ST's repeated augmentation): each video of the epoch
  gives R clips, consecutive samples, each with its own draw of start, crop, flip and mask (ClipSpec.repeat =
  0..R-1; clip 0 is the clip the video gives with R = 1, so R = 1 is exactly the sampler without repetition). A
  batch of B clips holds B / R videos (B must divide by R); an epoch still visits every video of the rank's shard
  once, so it has R x videos clips and R times the steps. Positions count clips; loaders read each video once for
  its R clips. `repeat_frames="shared"` (VideoMAE V2's num_sample) gives the R clips clip 0's frames, each under its
  own crop, flip and mask: one clip's decode serves R clips.

Fine-tuning adds (VideoMAE's fine-tuning recipe):
- `temporal="segment"` (SSv2): TSN sampling, the video cut into T equal segments and one frame drawn in each, so a
  clip spans the whole video whatever its length; `"stride"` (K400, and pretraining) is the clip above.
- `crop="resized"`: torchvision's RandomResizedCrop rule (area share in `crop_area`, aspect ratio log-uniform in
  `crop_ratio`, 10 tries, then the centre crop), the box again resized to input_size x input_size.
- `views=EvalViews(clips, crops)`: evaluation. Every video once per rank set (no shuffle), each as clips x crops
  fixed views: temporal clip k of n at start k/(n-1) of the free range (stride; the centre when n = 1) or at offset
  (1/2 + k/n) mod 1 of every segment (segment: 1/2 and 0 for n = 2, as VideoMAE's SSv2 test); spatial crop j of m
  is the short-side square at j/(m-1) along the long side (the centre when m = 1); no flip. Sample ids are
  `video * clips * crops + view`; rank r takes videos r, r + world, ... (all their views), and its list is
  padded to a multiple of batch_size by repeating its last sample: `real_samples` says how many are not padding,
  so nothing is dropped or counted twice over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SHORT_VIDEO_POLICIES = ("loop", "clamp")
SHARD_POLICIES = ("drop", "pad")
REPEAT_FRAMES = ("own", "shared")  # data.repeat_frames
TEMPORAL_POLICIES = ("stride", "segment")
CROP_POLICIES = ("multiscale", "resized")
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
    aug_seed: int = 0  # seeds this sample's RandAugment draw (CPU fallback), so a resumed run augments alike
    repeat: int = 0  # which of the video's R clips this is (data.repeat); 0 = the clip of a run without repetition


@dataclass(frozen=True)
class EvalViews:
    """Fixed evaluation views per video: `clips` temporal clips x `crops` spatial crops (SSv2 2 x 3, K400 5 x 3)."""

    clips: int = 1
    crops: int = 1

    @property
    def count(self) -> int:
        return self.clips * self.crops


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


def segment_indices(num_video_frames: int, num_frames: int, offsets: np.ndarray) -> np.ndarray:
    """Frame indices (num_frames,) int32, one per equal segment of the video, at `offsets` (num_frames,) in [0, 1)."""
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames")
    tick = num_video_frames / num_frames
    idx = np.floor(tick * (np.arange(num_frames) + offsets)).astype(np.int64)
    return np.minimum(idx, num_video_frames - 1).astype(np.int32)


def resized_crop(
    frame_size: tuple[int, int], area: Sequence[float], ratio: Sequence[float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box (x, y, w, h) for a (H, W) frame: share of the area in `area`, w/h log-uniform in
    `ratio`; after 10 misses the largest centred box with the ratio clamped into `ratio` (torchvision's rule)."""
    h_img, w_img = frame_size
    log_ratio = np.log(np.asarray(ratio, np.float64))
    for _ in range(10):
        target = h_img * w_img * rng.uniform(area[0], area[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= w_img and 0 < h <= h_img:
            return int(rng.integers(0, w_img - w + 1)), int(rng.integers(0, h_img - h + 1)), w, h
    in_ratio = w_img / h_img
    if in_ratio < min(ratio):
        w, h = w_img, round(w_img / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(h_img * max(ratio)), h_img
    else:
        w, h = w_img, h_img
    return (w_img - w) // 2, (h_img - h) // 2, w, h


def view_crop(frame_size: tuple[int, int], j: int, m: int) -> tuple[int, int, int, int]:
    """Spatial test crop j of m: the short-side square at j/(m-1) along the long side (centred when m = 1)."""
    h_img, w_img = frame_size
    side = min(h_img, w_img)
    at = (max(h_img, w_img) - side) * (j / (m - 1) if m > 1 else 0.5)
    return (int(at), 0, side, side) if w_img >= h_img else (0, int(at), side, side)


def view_indices(
    num_video_frames: int, num_frames: int, stride: int, k: int, n: int, temporal: str, short_video: str
) -> np.ndarray:
    """Frame indices (num_frames,) int32 of temporal test clip k of n (see the module docstring)."""
    if temporal == "segment":
        return segment_indices(num_video_frames, num_frames, np.full(num_frames, (0.5 + k / n) % 1.0))
    steps = stride * np.arange(num_frames, dtype=np.int64)
    free = num_video_frames - int(steps[-1]) - 1
    if free >= 0:
        start = round(k * free / (n - 1)) if n > 1 else free // 2
        return (start + steps).astype(np.int32)
    if short_video == "loop":
        return ((num_video_frames * k // n + steps) % num_video_frames).astype(np.int32)
    return np.minimum(steps, num_video_frames - 1).astype(np.int32)


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
        temporal: str = "stride",
        crop: str = "multiscale",
        crop_area: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        views: EvalViews | None = None,
        repeat: int = 1,
        repeat_frames: str = "own",
    ) -> None:
        """temporal / crop / crop_area / crop_ratio: the training view (module docstring); views: evaluation
        mode (fixed views, every video, no shuffle, no flip; the training-view options except `temporal` unused);
        repeat: clips per video read (module docstring), batch_size must divide by it; repeat_frames: "own" (each
        clip its own start) or "shared" (the video's R clips take clip 0's frames)."""
        if repeat_frames not in REPEAT_FRAMES:
            raise ValueError(f"repeat_frames={repeat_frames!r}: choose one of {REPEAT_FRAMES}")
        if repeat < 1 or batch_size % repeat:
            raise ValueError(f"data.repeat={repeat} must be >= 1 and divide data.batch_size={batch_size} (a batch of "
                             "B clips holds B / repeat videos)")  # fmt: skip
        if views is not None and repeat != 1:
            raise ValueError(f"repeat={repeat}: evaluation views take each view once (repeat=1)")
        if temporal not in TEMPORAL_POLICIES:
            raise ValueError(f"temporal={temporal!r}: choose one of {TEMPORAL_POLICIES}")
        if crop not in CROP_POLICIES:
            raise ValueError(f"crop={crop!r}: choose one of {CROP_POLICIES}")
        if views is not None and len(entries) < world_size:
            raise ValueError(f"{len(entries)} videos to evaluate over {world_size} ranks: every rank needs one")
        if short_video not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"short_video={short_video!r}: choose one of {SHORT_VIDEO_POLICIES}")
        if shard_policy not in SHARD_POLICIES:
            raise ValueError(f"shard_policy={shard_policy!r}: choose one of {SHARD_POLICIES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.views = views
        per = views.count if views else 1  # eval: one sample per (video, view), ids video * per + view
        self.paths = [e.path for e in entries for _ in range(per)]
        self.labels = np.repeat(np.array([e.label for e in entries], np.int64), per)
        self.lengths = np.repeat(np.array([e.num_frames for e in entries], np.int64), per)
        self.temporal, self.crop = temporal, crop
        self.crop_area, self.crop_ratio = tuple(crop_area), tuple(crop_ratio)
        self.num_frames, self.stride, self.input_size = num_frames, stride, input_size
        self.crop_scales = tuple(float(s) for s in crop_scales)
        self.flip, self.short_video = flip, short_video
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_size, self.shuffle, self.shard_policy = batch_size, shuffle, shard_policy
        self.frame_size, self.repeat, self.repeat_frames = frame_size, repeat, repeat_frames
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.paths)} videos over {world_size} rank(s) give no full batch of {batch_size}: "
                "lower data.batch_size or add videos"
            )

    @property
    def real_samples(self) -> int:
        """Samples of this rank's epoch that are not padding (evaluation pads; training drops instead)."""
        if self.views is None:
            return len(self)
        return len(range(self.rank, len(self.paths) // self.views.count, self.world_size)) * self.views.count

    def __len__(self) -> int:
        """Samples (clips) per epoch on this rank (a multiple of batch_size): `repeat` per video visited."""
        if self.views is not None:
            return -(-self.real_samples // self.batch_size) * self.batch_size
        n = len(self.paths)
        per_rank = n // self.world_size if self.shard_policy == "drop" else -(-n // self.world_size)
        videos_per_batch = self.batch_size // self.repeat
        return (per_rank - per_rank % videos_per_batch) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first sample (unless it is the epoch just restored by load_state_dict)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Video index of each sample (len(self),) int64 this rank draws in `epoch`, in order (sample ids in
        evaluation); with repeat R each video appears R times in a row (clip r of it at position p has r = p % R)."""
        videos = self.epoch_videos(epoch)
        return np.repeat(videos, self.repeat) if self.repeat > 1 else videos

    def epoch_videos(self, epoch: int) -> np.ndarray:
        """Videos (len(self) // repeat,) int64 this rank reads in `epoch`, in order: one read gives `repeat` clips."""
        n = len(self.paths)
        if self.views is not None:
            per = self.views.count
            mine = (np.arange(self.rank, n // per, self.world_size)[:, None] * per + np.arange(per)).reshape(-1)
            return np.concatenate([mine, np.full(len(self) - len(mine), mine[-1])]).astype(np.int64)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.shard_policy == "pad":
            total = -(-n // self.world_size) * self.world_size
            order = np.concatenate([order, order[: total - n]]) if total > n else order
        mine = order[self.rank : (len(order) // self.world_size) * self.world_size : self.world_size]
        return mine[: len(self) // self.repeat]

    def spec(
        self,
        epoch: int,
        video_index: int,
        frame_size: tuple[int, int],
        attempt: int = 0,
        num_video_frames: int | None = None,
        repeat: int = 0,
    ) -> ClipSpec:
        """The ClipSpec of `video_index` in `epoch` for a (H, W) video; `attempt` > 0 for bad-file replacements.

        `num_video_frames` overrides the file list's frame count (a loader that counted the file's frames).
        `repeat`: which of the video's clips (0 .. data.repeat - 1); clip 0 draws exactly what a run without
        repetition draws, clip r > 0 from streams of its own.
        """
        tag = [5, repeat] if repeat else []  # no tag for clip 0: R = 1 keeps every draw it had
        rng = np.random.default_rng([self.seed, epoch, video_index, attempt, *tag])
        time_rng = rng  # "shared": clips r > 0 take clip 0's frames, drawn from clip 0's stream as clip 0 draws them
        if repeat and self.repeat_frames == "shared":
            time_rng = np.random.default_rng([self.seed, epoch, video_index, attempt])
        length = int(self.lengths[video_index]) if num_video_frames is None else num_video_frames
        common = {"video_index": int(video_index), "path": self.paths[video_index],
                  "label": int(self.labels[video_index])}  # fmt: skip
        if self.views is not None:
            k, j = divmod(int(video_index) % self.views.count, self.views.crops)
            idx = view_indices(length, self.num_frames, self.stride, k, self.views.clips, self.temporal,
                               self.short_video)  # fmt: skip
            return ClipSpec(**common, frame_indices=idx, crop=view_crop(frame_size, j, self.views.crops), flip=False)
        if self.temporal == "segment":
            idx = segment_indices(length, self.num_frames, time_rng.random(self.num_frames))
        else:
            idx = clip_indices(length, self.num_frames, self.stride, time_rng, self.short_video)
        pair_u, pos_u, flip_u = rng.random(3)
        if self.crop == "resized":
            crop_rng = np.random.default_rng([self.seed, epoch, video_index, attempt, 3, *tag])
            crop = resized_crop(frame_size, self.crop_area, self.crop_ratio, crop_rng)
        else:
            crop = multiscale_crop(frame_size, self.input_size, self.crop_scales, pair_u, pos_u)
        aug_seed = int(np.random.default_rng([self.seed, epoch, video_index, attempt, 4, *tag]).integers(2**62))
        return ClipSpec(**common, frame_indices=idx, crop=crop, flip=bool(self.flip and flip_u < 0.5),
                        aug_seed=aug_seed, repeat=repeat)  # fmt: skip

    def replacement(self, epoch: int, video_index: int, attempt: int) -> int:
        """Video that stands in for a bad `video_index` on try `attempt` (1, 2, ...): a fixed seeded rule."""
        rng = np.random.default_rng([self.seed, epoch, video_index, attempt, 1])
        return int((video_index + rng.integers(1, len(self.paths))) % len(self.paths)) if len(self.paths) > 1 else 0

    def __iter__(self) -> Iterator[ClipSpec]:
        if self.frame_size is None:
            raise RuntimeError("ClipSampler: iterating needs frame_size=callable(video_index) -> (H, W)")
        indices = self.epoch_indices(self.epoch)
        while self.position < len(indices):
            vi, r = int(indices[self.position]), self.position % self.repeat
            self.position += 1
            yield self.spec(self.epoch, vi, self.frame_size(vi), repeat=r)

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
            "repeat": self.repeat,
            "repeat_frames": self.repeat_frames,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved epoch and position; a changed dataset, seed or sharding is an error."""
        for key in ("seed", "world_size", "num_videos", "batch_size", "repeat", "repeat_frames"):
            mine = len(self.paths) if key == "num_videos" else getattr(self, key)
            if state.get(key, mine) != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]}, this run has {mine}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
