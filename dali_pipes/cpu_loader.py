"""CPU fallback loader: PyAV decoding in a torch DataLoader, same sampler, same batches as the DALI loader.

With online motion, one decode per clip (mgm.motion.read_span) yields both the RGB frames the clip needs and
the motion vectors of its span, so motion costs no second decode; with a motion cache or a motion-blind mask
a plain seek + decode (`decode_frames`) does. The pixels go through the same crop box, resize (bilinear
with antialiasing, as DALI's default), flip and normalization as in dali_pipes.graph.

Where the time goes (320x240 H.264, 16 frames at stride 2, 2 cores): decoding the span is most of a clip; the
rest is kept small by (1) converting only the kept frames to RGB through one reused swscale context, (2) cropping
and resizing frame by frame on uint8, each frame as soon as it is decoded (memory stays bounded on 8K video),
and (3) handing uint8 clips from the workers to the main process, which normalizes the whole batch once, on
the device when there is one: float32 clips are 4x the bytes to write, share and copy between processes.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dali_pipes.adapter import LoaderBase
from dali_pipes.sampler import ClipSampler, ClipSpec
from dali_pipes.sources import BadVideoError, MaskMaker, with_replacement

T = TypeVar("T")


@functools.cache
def _reformatter() -> Any:
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def to_rgb(frame: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded av.VideoFrame, through one reused single-threaded swscale context.

    `frame.to_ndarray(format="rgb24")` builds a new swscale context per frame, with a thread pool by default:
    ~0.3 ms of set-up per frame, several times the conversion itself at 320x240.
    """
    return _reformatter().reformat(frame, format="rgb24", threads=1).to_ndarray()


def resize_frame(
    rgb: np.ndarray | torch.Tensor, crop: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """One (H, W, 3) uint8 frame -> (3, size, size) uint8: crop box (x, y, w, h), resize, optional horizontal flip.

    Bilinear with antialiasing on uint8 (torch's vectorized channels-last path; only the crop box is copied,
    never a float frame), rounded to uint8 as DALI's resize of uint8 frames is.
    """
    x, y, w, h = crop
    frame = torch.as_tensor(rgb)[y : y + h, x : x + w].permute(2, 0, 1)[None]  # (1, 3, h, w) view, channels-last
    out = F.interpolate(frame, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.flip(-1) if flip else out


def normalize(
    clips: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(B, 3, T, S, S) uint8 -> (B, 3, T, S, S) `dtype` on `device`: (x / 255 - mean) / std per channel.

    On a GPU the uint8 batch is copied (4x fewer bytes than float) and normalized there. On the CPU each
    channel plane is written once, `bias + scale * x` in one pass, into fresh memory.
    """
    scale = [1.0 / (255.0 * s) for s in std]
    bias = [-m / s for m, s in zip(mean, std, strict=True)]
    if device.type != "cpu":
        x = clips.to(device, non_blocking=True)
        shape = (1, 3, 1, 1, 1)
        out = x.float().mul_(torch.tensor(scale, device=device).view(shape))
        return out.add_(torch.tensor(bias, device=device).view(shape)).to(dtype)
    out = torch.empty(clips.shape, dtype=dtype)
    for c in range(3):
        b = torch.tensor(bias[c])
        for i in range(clips.shape[0]):  # (T, S, S) planes: small enough to stay in cache
            torch.add(b, clips[i, c], alpha=scale[c], out=out[i, c])
    return out


def crop_resize(
    frames: torch.Tensor, spec: ClipSpec, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (3, T, size, size) float32: crop box, resize, flip, normalize (mean/std in 0..1).

    The loader's transform in one call (the loader splits it: `resize_frame` in the workers, `normalize` on the
    batch).
    """
    clip = torch.stack([resize_frame(f, spec.crop, size, spec.flip) for f in frames], dim=1)  # (3, T, S, S)
    return normalize(clip[None], mean, std, dtype=torch.float32, device=torch.device("cpu"))[0]


def decode_frames(path: str, indices: Sequence[int], convert: Callable[[Any], T] = to_rgb) -> dict[int, T]:
    """{index: convert(frame)} for the distinct frames at `indices` (default: (H, W, 3) uint8 RGB), one seek + decode.

    Frame i is the i-th frame in presentation order (sorted packet timestamps), the numbering DALI and
    mgm.motion use. Decoding starts at the last key frame at or before the first wanted frame; each wanted
    frame is converted as soon as it is decoded, so no more than one full-size frame is held.
    """
    import av

    wanted = set(int(i) for i in indices)
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type, s.thread_count = "SLICE", 1  # workers parallelize over clips; threads would fight them
        pts, keys = [], []
        for p in c.demux(s):
            if p.pts is not None and p.size:
                pts.append(p.pts)
                keys.append(p.is_keyframe)
        order = np.argsort(pts, kind="stable")
        sorted_pts = np.asarray(pts, np.int64)[order]
        key_pts = {pts[j] for j in range(len(pts)) if keys[j]}
        first, last = min(wanted), max(wanted)
        start = max((i for i in range(first + 1) if int(sorted_pts[i]) in key_pts), default=0)
        c.seek(int(sorted_pts[start]), stream=s, backward=True, any_frame=False)
        index = {int(p): i for i, p in enumerate(sorted_pts)}
        out: dict[int, T] = {}
        for frame in c.decode(s):
            i = index.get(int(frame.pts), -1) if frame.pts is not None else -1
            if i in wanted and i not in out:
                out[i] = convert(frame)
            if i >= last:
                break
    return out


class ClipDataset(Dataset):
    """Map-style dataset keyed by (epoch, video_index): decode, mask, crop and resize one planned clip.

    Items hold the clip as uint8 (3, T, S, S); CpuLoader normalizes whole batches (`normalize`).
    """

    def __init__(self, sampler: ClipSampler, masks: MaskMaker, *, input_size: int) -> None:
        self.sampler, self.masks, self.input_size = sampler, masks, input_size

    def __len__(self) -> int:
        return len(self.sampler.paths)

    def _load(self, epoch: int, vi: int, attempt: int) -> tuple[torch.Tensor, ClipSpec, np.ndarray, float]:
        from mgm.motion import read_span, span_of

        s, masks, size = self.sampler, self.masks, self.input_size
        path, listed = s.paths[vi], int(s.lengths[vi])
        idx = s.spec(epoch, vi, (1, 1), attempt).frame_indices  # the indices do not depend on the frame size
        specs: dict[tuple[int, int], ClipSpec] = {}

        def spec_for(frame_size: tuple[int, int]) -> ClipSpec:  # the crop box needs the frame size
            if frame_size not in specs:
                specs[frame_size] = s.spec(epoch, vi, frame_size, attempt)
            return specs[frame_size]

        def small(rgb: np.ndarray) -> torch.Tensor:
            spec = spec_for(rgb.shape[:2])
            return resize_frame(rgb, spec.crop, size, spec.flip)

        online = masks.needs_motion and masks.motion_source == "online"
        try:
            if online:  # one decode for the pixels and the motion vectors of the span
                start, stop = span_of(idx, listed)
                start, stop = min(start, int(idx.min())), max(stop, int(idx.max()) + 1)
                field, rgb = read_span(path, start, stop, cell=masks.cell, threads=masks.threads,
                                       keep=np.unique(idx).tolist())  # fmt: skip
                frames = {i: small(a) for i, a in rgb.items()}
                del rgb
            else:  # no motion needed here (cache or a motion-blind mask): a plain decode is cheaper
                field, frames = None, decode_frames(path, idx, lambda f: small(to_rgb(f)))
        except Exception as e:  # MotionReadError, codec errors, a vanished file: name it and move on
            raise BadVideoError(f"{path}: decode failed ({type(e).__name__}: {e})") from None
        missing = sorted(set(idx.tolist()) - set(frames))
        if missing:
            raise BadVideoError(f"{path}: frames {missing[:4]} not decoded (of {listed} listed)")
        if len(specs) > 1:
            raise BadVideoError(f"{path}: frame size changes within the clip ({sorted(specs)})")
        spec = next(iter(specs.values()))
        t0 = time.perf_counter()
        try:
            motion = field if online else masks.read_motion(spec, listed)
            mask = masks.make(spec, epoch, motion)
        except Exception as e:
            raise BadVideoError(f"{path}: motion/mask failed ({type(e).__name__}: {e})") from None
        secs = time.perf_counter() - t0
        clip = torch.stack([frames[i] for i in idx.tolist()], dim=1)  # (3, T, S, S) uint8
        return clip, spec, mask, secs

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, vi = key
        (clip, spec, mask, secs), bad, first_bad = with_replacement(
            self.sampler, epoch, vi, lambda v, a: self._load(epoch, v, a)
        )
        return {
            "video": clip,
            "mask": torch.from_numpy(mask),
            "meta": torch.tensor([spec.video_index, spec.label, bad, first_bad], dtype=torch.int64),
            "frame_indices": torch.from_numpy(spec.frame_indices.astype(np.int32)),
            "mask_time": torch.tensor(secs, dtype=torch.float32),
        }


class _PlannedBatches:
    """Batch sampler: the rest of the sampler's current epoch, as lists of (epoch, video_index) keys."""

    def __init__(self, sampler: ClipSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return (len(self.sampler) - self.sampler.position) // self.sampler.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s, b = self.sampler, self.sampler.batch_size
        order = s.epoch_indices(s.epoch)
        for p in range(s.position, len(order) - b + 1, b):
            yield [(s.epoch, int(v)) for v in order[p : p + b]]


class CpuLoader(LoaderBase):
    """The fallback loader (see module docstring); same batches, length, epochs and state as DaliLoader."""

    kind = "cpu"

    def __init__(
        self,
        sampler: ClipSampler,
        masks: MaskMaker,
        *,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_workers: int,
        device: torch.device,
        output_dtype: str,
        max_bad_fraction: float,
    ) -> None:
        super().__init__(sampler, device=device, output_dtype=output_dtype, max_bad_fraction=max_bad_fraction)
        self.mean, self.std = list(mean), list(std)
        self.dataset = ClipDataset(sampler, masks, input_size=input_size)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=_PlannedBatches(sampler),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,  # keys carry the epoch, so workers never go stale
            # forking a process that runs DALI threads can deadlock the child: start clean workers then
            multiprocessing_context="spawn" if num_workers > 0 and "nvidia.dali.backend" in sys.modules else None,
            prefetch_factor=2 if num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._begin_epoch()
        for raw in self.loader:
            meta = raw["meta"].numpy()
            self._account(meta, raw["mask_time"].numpy())
            video = normalize(raw["video"], self.mean, self.std, dtype=self.dtype, device=self.device)
            yield self._batch(video, raw["mask"].numpy(), meta, raw["frame_indices"].numpy(),
                              raw["mask_time"].numpy())  # fmt: skip

    def close(self) -> None:
        """Stop the worker processes."""
        self.loader = None  # type: ignore[assignment]
