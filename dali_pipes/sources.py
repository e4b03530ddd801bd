"""Per-sample work done in loader worker processes: pick the clip, read bytes, make its mask.

`DaliClipSource` is the callable behind DALI's parallel external source; the CPU fallback shares
`MaskMaker` and `with_replacement`, so both loaders pick the same clips and masks for the same
(seed, epoch, rank). Nothing here imports torch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dali_pipes.sampler import ClipSampler, ClipSpec

T = TypeVar("T")
MAX_TRIES = 8  # files tried for one sample (the planned one + replacements) before giving up


class BadVideoError(RuntimeError):
    """A video could not be read; the message names the file."""


def twin_path(path: str, suffix: str | None) -> str:
    """The file the decoder reads: `path` itself, or its twin with `suffix` (e.g. ".webm") in place of the suffix."""
    return str(Path(path).with_suffix(suffix)) if suffix else path


def open_checked(data: bytes, name: str) -> Any:
    """The encoded file held in memory, opened (headers only: mgm.video.open_video); BadVideoError if unusable.

    The file list already holds the frame count (`mgm-prepare lists` decoded every frame), so nothing here counts
    frames; `check_frames` then demuxes only as far as the clip needs. Both catch broken or changed files here, in
    the worker, where the file can be named and replaced, rather than inside DALI's decoder, where an error ends
    the whole batch.
    """
    from mgm.video import VideoError, open_video

    try:
        container = open_video(data, name=name)
    except VideoError as e:
        raise BadVideoError(str(e)) from None
    except Exception as e:  # av raises many error types for garbage input
        raise BadVideoError(f"{name}: cannot open as video ({type(e).__name__}: {e})") from None
    cc = container.streams.video[0].codec_context
    if cc.height <= 0 or cc.width <= 0:
        container.close()
        raise BadVideoError(f"{name}: video stream has no frame size")
    return container


def check_frames(container: Any, name: str, needed: int, listed: int) -> None:
    """BadVideoError naming the file and both counts when it ends before frame `needed` - 1 (truncated or
    changed since its list said it has `listed` frames). Demuxes only up to the clip's last frame (+ a margin)."""
    from mgm.video import frames_present

    have = frames_present(container, needed)
    if have < needed:
        raise BadVideoError(
            f"{name}: the file holds {have} frames, the clip needs frame {needed - 1} and the file list says "
            f"{listed} (truncated or changed since `mgm-prepare lists`?)"
        )


def read_bytes(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadVideoError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise BadVideoError(f"{path}: empty file")
    return data


@dataclass
class MaskMaker:
    """Builds the mask of a clip from its motion, in the worker. Plain arguments, no config object.

    motion_source: "cache" (MotionCache(cache_dir).get(path)) or "online" (mgm.motion.read_motion over the
    clip's span). Masks that ignore motion ("tube", "random") skip reading it. The generator is built here, at
    start-up: a mistake in `knobs` raises mgm.config.ConfigError naming `mask.knobs.<key>` before any worker
    starts; the workers receive the built generator with this object.
    decoder_target_ratio > 0 turns on decoder masking (mask.decoder_target_ratio): `make_pair` then also picks the
    decoder's targets among the masked tokens with the `decoder_name` generator (mgm.masking.DecoderMasking).
    """

    name: str
    ratio: float
    grid: tuple[int, int, int]
    knobs: dict[str, Any] = field(default_factory=dict)
    motion_source: str = "online"
    cache_dir: str = ""
    cell: int = 8
    threads: int = 1
    seed: int = 0
    decoder_name: str = "running_cell"
    decoder_target_ratio: float = 0.0  # 0 = no decoder masking
    _gen: Any = field(init=False, default=None, repr=False)
    _decoder: Any = field(init=False, default=None, repr=False)
    _cache: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from mgm.config import mask_generator

        self._gen = mask_generator(self.name, self.ratio, tuple(self.grid), self.knobs)
        if self.decoder_target_ratio > 0:
            from mgm.config import decoder_generator

            self._decoder = decoder_generator(self.decoder_name, self.decoder_target_ratio, self._gen)

    @property
    def needs_motion(self) -> bool:
        return self.name == "mgm" or (self._decoder is not None and self.decoder_name == "mgm")

    def generator(self) -> Any:
        """The mask generator (mgm.masking): `gen(motion_map, rng) -> (N,) bool`, True = masked."""
        return self._gen

    def read_motion(self, spec: ClipSpec | Sequence[ClipSpec], num_frames: int) -> Any:
        """MotionField covering the frames of the clip, or of every clip given (data.repeat: the R clips of one video
        share one read), from the cache or one decode of the original file, which has `num_frames` frames; None for
        masks that ignore motion."""
        specs = [spec] if isinstance(spec, ClipSpec) else list(spec)
        if not self.needs_motion:
            return None
        if self.motion_source == "cache":
            if self._cache is None:
                from mgm.motion_cache import MotionCache

                self._cache = MotionCache(self.cache_dir)
            return self._cache.get(specs[0].path)
        from mgm.motion import clips_span, read_motion

        # the span reaches past the last sampled frame: a tubelet slot collects motion of skipped frames too
        start, stop = clips_span([c.frame_indices for c in specs], num_frames)
        return read_motion(
            specs[0].path, cell=self.cell, threads=self.threads, start=start, stop=stop, num_frames=num_frames
        )

    def make(self, spec: ClipSpec, epoch: int, motion: Any) -> np.ndarray:
        """Mask (T2*Hp*Wp,) bool, True = masked, for `spec` given its MotionField (or None)."""
        return self.make_pair(spec, epoch, motion)[0]

    def make_pair(self, spec: ClipSpec, epoch: int, motion: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """(mask, decoder_mask) for `spec` given its MotionField (or None): mask (N,) bool, True = masked;
        decoder_mask (N,) bool, True = reconstructed, a subset of mask, or None without decoder masking."""
        tag = [5, spec.repeat] if spec.repeat else []  # clip r > 0 of a video (data.repeat): streams of its own
        rng = np.random.default_rng([self.seed, epoch, spec.video_index, 2, *tag])
        motion_map = None
        if motion is not None:
            motion_map = motion.clip_map(spec.frame_indices, crop=spec.crop, flip=spec.flip, grid=tuple(self.grid))
        mask = np.asarray(self.generator()(motion_map, rng), dtype=bool)
        if self._decoder is None:
            return mask, None
        # a stream of its own: the encoder's masks are the same with decoder masking on or off
        dec_rng = np.random.default_rng([self.seed, epoch, spec.video_index, 3, *tag])
        return mask, self._decoder(mask, motion_map, dec_rng)


def with_replacement(
    sampler: ClipSampler, epoch: int, video_index: int, load: Callable[[int, int], T]
) -> tuple[T, int, int]:
    """Run `load(video_index, attempt)`; on BadVideoError warn naming the file and try the seeded replacement.

    Returns (result, bad files skipped, index of the first bad video or -1). Raises BadVideoError after
    MAX_TRIES failures in a row (a dataset that broken should stop the run, not spin).
    """
    bad, first_bad, vi = 0, -1, video_index
    errors = []
    for attempt in range(MAX_TRIES):
        try:
            return load(vi, attempt), bad, first_bad
        except BadVideoError as e:
            warnings.warn(f"skipping unreadable video: {e}", stacklevel=2)
            errors.append(str(e))
            bad += 1
            first_bad = vi if first_bad < 0 else first_bad
            vi = sampler.replacement(epoch, video_index, attempt + 1)
    raise BadVideoError(f"{MAX_TRIES} videos in a row failed to load: " + "; ".join(errors))


class DaliClipSource:
    """Parallel external source for DALI (batch=False): SampleInfo -> one sample's arrays.

    Outputs, in order: encoded bytes (n,) uint8, frame indices (T,) int32, ROI start [y, x] and end [y, x]
    float32 (the crop box in source pixels), mirror () int32, mask (N,) bool (True = masked), meta (4,) int64
    [video_index, label, bad files skipped, first bad video or -1], mask seconds (1,) float32, decoder mask (N,)
    bool (True = reconstructed; (0,) without decoder masking: DALI's outputs are fixed when the graph is built).
    With repeated sampling (sampler.repeat = R > 1) a sample is one video and its R clips: the bytes once, every
    other output stacked per clip, (R, ...): indices (R, T), ROI (R, 2), mirror (R,), masks (R, N), meta (R, 4),
    seconds (R, 1); the file is read, opened and checked once, the motion read once over the clips' union.
    `epoch0`/`offset0` place DALI's own epoch counter: its epoch k is our epoch epoch0 + k, and its first
    epoch starts `offset0` samples (clips) in (a resumed run).
    """

    NUM_OUTPUTS = 9

    def __init__(
        self, sampler: ClipSampler, masks: MaskMaker, *, epoch0: int = 0, offset0: int = 0, twin_suffix: str | None
    ) -> None:
        if offset0 % sampler.repeat:
            raise ValueError(f"resume position {offset0} is not at a video's first clip (data.repeat={sampler.repeat})")
        self.sampler, self.masks = sampler, masks
        self.epoch0, self.offset0, self.twin_suffix = epoch0, offset0, twin_suffix
        self._order: tuple[int, np.ndarray] | None = None

    def _videos(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.sampler.epoch_videos(epoch))
        return self._order[1]

    def _load(self, epoch: int, video_index: int, attempt: int) -> tuple[bytes, list[ClipSpec], list[tuple], float]:
        """(bytes, the video's R specs, their (mask, decoder mask) pairs, mask seconds per clip)."""
        path = self.sampler.paths[video_index]
        src = twin_path(path, self.twin_suffix)
        data = read_bytes(src)
        frames = int(self.sampler.lengths[video_index])  # the list's count, made by decoding every frame: trusted
        with open_checked(data, src) as container:
            cc = container.streams.video[0].codec_context
            specs = [self.sampler.spec(epoch, video_index, (cc.height, cc.width), attempt, num_video_frames=frames,
                                       repeat=r) for r in range(self.sampler.repeat)]  # fmt: skip
            check_frames(container, src, max(int(c.frame_indices.max()) for c in specs) + 1, frames)
        t0 = time.perf_counter()
        try:
            motion = self.masks.read_motion(specs, frames)  # one read for the R clips
            pairs = [self.masks.make_pair(c, epoch, motion) for c in specs]  # (mask, decoder mask) per clip
        except Exception as e:  # MotionReadError, codec errors on the original: all name the file below
            raise BadVideoError(f"{path}: motion/mask failed ({type(e).__name__}: {e})") from None
        return data, specs, pairs, (time.perf_counter() - t0) / len(specs)

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        epoch = self.epoch0 + info.epoch_idx
        pos = info.idx_in_epoch + (self.offset0 // self.sampler.repeat if info.epoch_idx == 0 else 0)
        order = self._videos(epoch)
        if pos >= len(order):
            raise StopIteration
        (data, specs, pairs, secs), bad, first_bad = with_replacement(
            self.sampler, epoch, int(order[pos]), lambda vi, a: self._load(epoch, vi, a)
        )
        clips = [_clip_arrays(c, mask, dec, bad, first_bad, secs) for c, (mask, dec) in zip(specs, pairs, strict=True)]
        per_clip = clips[0] if len(clips) == 1 else [np.stack(col) for col in zip(*clips, strict=True)]
        return (np.frombuffer(data, dtype=np.uint8), *per_clip)


def _clip_arrays(
    spec: ClipSpec, mask: np.ndarray, dec: np.ndarray | None, bad: int, first_bad: int, secs: float
) -> tuple[np.ndarray, ...]:
    """One clip's outputs of DaliClipSource after the bytes: indices, ROI start, ROI end, mirror, mask, meta,
    seconds, decoder mask."""
    x, y, w, h = spec.crop
    return (
        spec.frame_indices.astype(np.int32),
        np.array([y, x], np.float32),
        np.array([y + h, x + w], np.float32),
        np.array(int(spec.flip), np.int32),
        mask,
        np.array([spec.video_index, spec.label, bad, first_bad], np.int64),
        np.array([secs], np.float32),
        dec if dec is not None else np.zeros(0, bool),
    )
