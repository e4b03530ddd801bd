"""CPU fallback loader: PyAV decoding in a torch DataLoader, same sampler, same batches as the DALI loader.

With online motion, one decode per clip (mgm.motion.read_span) yields both the RGB frames the clip needs and
the motion vectors of its span, so motion costs no second decode; with a motion cache or a motion-blind mask
a plain seek + decode (`decode_frames`) does. The pixels go through the same crop box, resize (bilinear
with antialiasing, as DALI's default), flip and normalization as in dali_pipes.graph.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dali_pipes.adapter import LoaderBase
from dali_pipes.sampler import ClipSampler, ClipSpec
from dali_pipes.sources import BadVideoError, MaskMaker, with_replacement


def crop_resize(
    frames: torch.Tensor, spec: ClipSpec, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (3, T, size, size) float32: crop box, resize, flip, normalize (mean/std in 0..1).

    The resize runs on uint8 in channels-last layout (torch's vectorized antialiased bilinear path, ~10x faster
    than float NCHW) and rounds to uint8 like DALI's resize of uint8 frames does.
    """
    x, y, w, h = spec.crop
    clip = frames[:, y : y + h, x : x + w].permute(0, 3, 1, 2)  # (T, 3, h, w) view, channels-last in memory
    clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    clip = clip.permute(1, 0, 2, 3)  # (3, T, S, S) view
    if spec.flip:
        clip = clip.flip(-1)
    out = torch.empty(clip.shape, dtype=torch.float32)
    out.copy_(clip)  # layout change and uint8 -> float in one pass
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1) * 255.0)
    return out.div_(torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1) * 255.0)


def decode_frames(path: str, indices: Sequence[int]) -> tuple[dict[int, np.ndarray], int]:
    """RGB frames {index: (H, W, 3) uint8} at `indices` and the file's frame count, in one seek + decode.

    Frame i is the i-th frame in presentation order (sorted packet timestamps), the numbering DALI and
    mgm.motion use. Decoding starts at the last key frame at or before the first wanted frame.
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
        out: dict[int, np.ndarray] = {}
        for frame in c.decode(s):
            i = index.get(int(frame.pts), -1) if frame.pts is not None else -1
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out, len(sorted_pts)


class ClipDataset(Dataset):
    """Map-style dataset keyed by (epoch, video_index): decode, mask and transform one planned clip."""

    def __init__(
        self, sampler: ClipSampler, masks: MaskMaker, *, input_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.sampler, self.masks = sampler, masks
        self.input_size, self.mean, self.std = input_size, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.sampler.paths)

    def _load(self, epoch: int, vi: int, attempt: int) -> tuple[torch.Tensor, ClipSpec, np.ndarray, float]:
        from mgm.motion import read_span, span_of

        s, masks = self.sampler, self.masks
        path, listed = s.paths[vi], int(s.lengths[vi])
        idx = s.spec(epoch, vi, (1, 1), attempt).frame_indices  # the indices do not depend on the frame size
        online = masks.needs_motion and masks.motion_source == "online"
        try:
            if online:  # one decode for the pixels and the motion vectors of the span
                start, stop = span_of(idx, listed)
                start, stop = min(start, int(idx.min())), max(stop, int(idx.max()) + 1)
                field, rgb = read_span(path, start, stop, cell=masks.cell, threads=masks.threads,
                                       keep=np.unique(idx).tolist())  # fmt: skip
            else:  # no motion needed here (cache or a motion-blind mask): a plain decode is cheaper
                field, (rgb, _) = None, decode_frames(path, idx)
        except Exception as e:  # MotionReadError, codec errors, a vanished file: name it and move on
            raise BadVideoError(f"{path}: decode failed ({type(e).__name__}: {e})") from None
        missing = sorted(set(idx.tolist()) - set(rgb))
        if missing:
            raise BadVideoError(f"{path}: frames {missing[:4]} not decoded (of {listed} listed)")
        frame_size = next(iter(rgb.values())).shape[:2]
        spec = s.spec(epoch, vi, frame_size, attempt)
        t0 = time.perf_counter()
        try:
            motion = field if online else masks.read_motion(spec, listed)
            mask = masks.make(spec, epoch, motion)
        except Exception as e:
            raise BadVideoError(f"{path}: motion/mask failed ({type(e).__name__}: {e})") from None
        secs = time.perf_counter() - t0
        frames = torch.from_numpy(np.stack([rgb[i] for i in idx.tolist()]))  # (T, H, W, 3) uint8
        return frames, spec, mask, secs

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, vi = key
        (frames, spec, mask, secs), bad, first_bad = with_replacement(
            self.sampler, epoch, vi, lambda v, a: self._load(epoch, v, a)
        )
        return {
            "video": crop_resize(frames, spec, self.input_size, self.mean, self.std),
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
        self.dataset = ClipDataset(sampler, masks, input_size=input_size, mean=mean, std=std)
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
            yield self._batch(raw["video"], raw["mask"].numpy(), meta, raw["frame_indices"].numpy(),
                              raw["mask_time"].numpy())  # fmt: skip

    def close(self) -> None:
        """Stop the worker processes."""
        self.loader = None  # type: ignore[assignment]
