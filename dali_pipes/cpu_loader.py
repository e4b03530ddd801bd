"""CPU fallback loader: PyAV decoding in a torch DataLoader, same sampler, same batches as the DALI loader.

With online motion, one decode per clip (mgm.motion.read_span) yields both the RGB frames the clip needs and
the motion vectors of its span, so motion costs no second decode; with a motion cache or a motion-blind mask
a plain decode of the chosen frames (`mgm.video.iter_frames`) does. The pixels go through the same crop box,
resize (bilinear with antialiasing, as DALI's default), flip and normalization as in dali_pipes.graph.

Where the time goes (320x240 H.264, 16 frames at stride 2, 2 cores): decoding the span is most of a clip; the
rest is kept small by (1) converting only the kept frames to RGB through one reused swscale context, (2) cropping
and resizing frame by frame on uint8, each frame as soon as it is decoded (memory stays bounded on 8K video),
and (3) handing uint8 clips from the workers to the main process, which normalizes the whole batch once, on
the device when there is one: float32 clips are 4x the bytes to write, share and copy between processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from dali_pipes.adapter import LoaderBase
from dali_pipes.sampler import ClipSampler, ClipSpec
from dali_pipes.sources import BadVideoError, MaskMaker, with_replacement
from mgm.video import iter_frames, to_rgb


class ClipResizer:
    """Crop boxes of full-size (H, W, 3) uint8 frames -> (3, S, S) uint8 frames: resize, optional horizontal flip.

    Bilinear with antialiasing on uint8 (torch's vectorized channels-last path; never a float frame), rounded
    to uint8 as DALI's resize of uint8 frames is. Frames are resized in groups, one interpolate call per group
    (about 2x cheaper than one call per frame); a group holds at most `max_bytes` of source frames, so 8K video
    is resized frame by frame and memory stays bounded.
    """

    def __init__(self, size: int, crop: tuple[int, int, int, int], flip: bool, max_bytes: int = 64 << 20) -> None:
        self.size, self.crop, self.flip, self.max_bytes = size, crop, flip, max_bytes
        self.frames: dict[int, torch.Tensor] = {}  # key -> (3, S, S) uint8
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._bytes = 0

    def add(self, key: int, rgb: np.ndarray | torch.Tensor) -> None:
        """Queue frame `key` ((H, W, 3) uint8); only its crop box is read."""
        x, y, w, h = self.crop
        frame = torch.as_tensor(rgb)
        self._pending.append((key, frame[y : y + h, x : x + w]))  # a view: the frame stays alive until flushed
        self._bytes += frame.numel()
        if self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        crops = torch.stack([c for _, c in self._pending]).permute(0, 3, 1, 2)  # (n, 3, h, w), channels-last
        out = F.interpolate(crops, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.flip:
            out = out.flip(-1)
        self.frames.update((k, out[j]) for j, (k, _) in enumerate(self._pending))
        self._pending, self._bytes = [], 0

    def result(self) -> dict[int, torch.Tensor]:
        """{key: (3, S, S) uint8} of every frame added."""
        self.flush()
        return self.frames


def normalize(
    clips: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(B, 3, T, S, S) uint8 -> (B, 3, T, S, S) `dtype` on `device`: (x / 255 - mean) / std per channel.

    On a GPU the uint8 batch is copied (4x fewer bytes than float) and normalized there. On the CPU each
    channel plane is written once, `bias + scale * x` in one pass (most of its cost is the kernel
    zero-filling the fresh float pages).
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
        for i in range(clips.shape[0]):  # one (T, S, S) plane per call: scalar scale/bias, no broadcasting
            torch.add(b, clips[i, c], alpha=scale[c], out=out[i, c])
    return out


def crop_resize(
    frames: torch.Tensor, spec: ClipSpec, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (3, T, size, size) float32: crop box, resize, flip, normalize (mean/std in 0..1).

    The loader's transform in one call (the loader splits it: `ClipResizer` in the workers, `normalize` on the
    batch).
    """
    resizer = ClipResizer(size, spec.crop, spec.flip)
    for t, frame in enumerate(frames):
        resizer.add(t, frame)
    clip = torch.stack([resizer.result()[t] for t in range(len(frames))], dim=1)  # (3, T, S, S) uint8
    return normalize(clip[None], mean, std, dtype=torch.float32, device=torch.device("cpu"))[0]


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """Empty uint8 tensor for a batch; inside a DataLoader worker, in shared memory (what default_collate does),
    so that handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def _as_is(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch  # ClipDataset.__getitems__ returns whole batches


class ClipDataset(Dataset):
    """Map-style dataset keyed by (epoch, video_index): decode, mask, crop and resize planned clips.

    The DataLoader asks for whole batches (`__getitems__`): video (B, 3, T, S, S) uint8, each frame written
    straight into the batch; CpuLoader normalizes it (`normalize`).
    """

    def __init__(self, sampler: ClipSampler, masks: MaskMaker, *, input_size: int,
                 augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:  # fmt: skip
        """augment: fine-tuning's per-clip augmentation, (3, T, S, S) uint8 and ClipSpec.aug_seed -> the same."""
        self.sampler, self.masks, self.input_size, self.augment = sampler, masks, input_size, augment

    def __len__(self) -> int:
        return len(self.sampler.paths)

    def _load(self, epoch: int, vi: int, attempt: int) -> tuple[list[dict[int, torch.Tensor]], list[ClipSpec],
                                                                  list[tuple], float]:  # fmt: skip
        """Video `vi`'s clips (data.repeat of them) from one decode of the union of their frames: per clip its
        {frame: (3, S, S) uint8}, spec and (mask, decoder mask); mask seconds per clip."""
        from mgm.motion import clips_span, read_span

        s, masks, repeat = self.sampler, self.masks, self.sampler.repeat
        path, listed = s.paths[vi], int(s.lengths[vi])
        # the indices do not depend on the frame size
        idx = [s.spec(epoch, vi, (1, 1), attempt, repeat=r).frame_indices for r in range(repeat)]
        wanted = [set(i.tolist()) for i in idx]
        resizers: dict[tuple[int, int], list[ClipResizer]] = {}
        specs_of: dict[tuple[int, int], list[ClipSpec]] = {}

        def add(i: int, rgb: np.ndarray) -> None:  # the crop boxes need the frame size: known at the first frame
            size = rgb.shape[:2]
            if size not in resizers:
                specs_of[size] = [s.spec(epoch, vi, size, attempt, repeat=r) for r in range(repeat)]
                resizers[size] = [ClipResizer(self.input_size, c.crop, c.flip) for c in specs_of[size]]
            for r, resizer in enumerate(resizers[size]):
                if i in wanted[r]:
                    resizer.add(i, rgb)

        union = np.unique(np.concatenate(idx))
        online = masks.needs_motion and masks.motion_source == "online"
        try:
            if online:  # one decode for the pixels and the motion vectors of the span (of every clip)
                start, stop = clips_span(idx, listed)
                start, stop = min(start, int(union[0])), max(stop, int(union[-1]) + 1)
                field, _ = read_span(path, start, stop, cell=masks.cell, threads=masks.threads,
                                     keep=union.tolist(), on_frame=add, num_frames=listed)  # fmt: skip
            else:  # no motion needed here (cache or a motion-blind mask): a plain decode is cheaper
                field = None
                for i, frame in iter_frames(path, union, num_frames=listed):
                    add(i, to_rgb(frame))
            frames = [{i: f for rs in resizers.values() for i, f in rs[r].result().items()} for r in range(repeat)]
        except Exception as e:  # MotionReadError, VideoError, a vanished file: name it and move on
            raise BadVideoError(f"{path}: decode failed ({type(e).__name__}: {e})") from None
        missing = sorted(set(union.tolist()) - {i for f in frames for i in f})
        if missing:
            raise BadVideoError(f"{path}: frames {missing[:4]} not decoded (of {listed} listed)")
        if len(resizers) > 1:
            raise BadVideoError(f"{path}: the frame size changes within the clip ({sorted(resizers)})")
        specs = specs_of[next(iter(resizers))]
        t0 = time.perf_counter()
        try:
            motion = field if online else masks.read_motion(specs, listed)
            pairs = [masks.make_pair(c, epoch, motion) for c in specs]  # (mask, decoder mask or None) per clip
        except Exception as e:
            raise BadVideoError(f"{path}: motion/mask failed ({type(e).__name__}: {e})") from None
        return frames, specs, pairs, (time.perf_counter() - t0) / repeat

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Batch of `keys` (epoch, video_index), data.repeat clips per key, a video's clips in a row: video
        (B, 3, T, S, S) uint8, mask (B, N) bool (True = masked), meta (B, 4) int64 [video, label, bad reads, first
        bad video or -1], frame_indices (B, T) int32, mask_time (B,) float32; with decoder masking also
        decoder_mask (B, N) bool (True = reconstructed)."""
        n, size = self.sampler.num_frames, self.input_size
        video = _new_batch((len(keys) * self.sampler.repeat, 3, n, size, size))
        masks, decs, meta, indices, secs = [], [], [], [], []
        b = 0
        for epoch, vi in keys:
            (frames, specs, pairs, sec), bad, first_bad = with_replacement(
                self.sampler, epoch, vi, lambda v, a, e=epoch: self._load(e, v, a)
            )
            for clip, spec, (mask, dec) in zip(frames, specs, pairs, strict=True):
                for t, i in enumerate(spec.frame_indices.tolist()):
                    video[b, :, t].copy_(clip[i])
                if self.augment is not None:
                    video[b] = self.augment(video[b], spec.aug_seed)
                masks.append(mask)
                decs.append(dec)
                meta.append([spec.video_index, spec.label, bad, first_bad])
                indices.append(spec.frame_indices.astype(np.int32))
                secs.append(sec)
                b += 1
        batch = {
            "video": video,
            "mask": torch.from_numpy(np.stack(masks)),
            "meta": torch.tensor(meta, dtype=torch.int64),
            "frame_indices": torch.from_numpy(np.stack(indices)),
            "mask_time": torch.tensor(secs, dtype=torch.float32),
        }
        if decs[0] is not None:
            batch["decoder_mask"] = torch.from_numpy(np.stack(decs))
        return batch

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([key]).items()}


class _PlannedBatches:
    """Batch sampler: the rest of the sampler's current epoch, as lists of (epoch, video_index) keys, one per video
    read (batch_size / data.repeat of them: each gives data.repeat clips)."""

    def __init__(self, sampler: ClipSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return (len(self.sampler) - self.sampler.position) // self.sampler.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        if s.position % s.repeat:
            raise ValueError(f"sampler position {s.position} is not at a video's first clip (data.repeat={s.repeat})")
        b, order = s.batch_size // s.repeat, s.epoch_videos(s.epoch)
        for p in range(s.position // s.repeat, len(order) - b + 1, b):
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
        start_method: str | None,
        device: torch.device,
        output_dtype: str,
        max_bad_fraction: float,
        augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> None:
        """`start_method` of the worker processes (see dali_pipes.workers.cpu_start_method); unused without workers.
        `augment`: see ClipDataset (fine-tuning's RandAugment; None = none)."""
        super().__init__(sampler, device=device, output_dtype=output_dtype, max_bad_fraction=max_bad_fraction)
        self.mean, self.std = list(mean), list(std)
        self.dataset = ClipDataset(sampler, masks, input_size=input_size, augment=augment)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=_PlannedBatches(sampler),
            collate_fn=_as_is,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,  # keys carry the epoch, so workers never go stale
            multiprocessing_context=start_method if num_workers > 0 else None,
            prefetch_factor=2 if num_workers > 0 else None,
            # its own generator: each iter() draws a worker base seed, which must not advance the global torch RNG
            # (drop path, erasing): a resumed run creates one iterator more than an uninterrupted one
            generator=torch.Generator(),
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._begin_epoch()
        for raw in self.loader:
            meta = raw["meta"].numpy()
            self._account(meta, raw["mask_time"].numpy())
            video = normalize(raw["video"], self.mean, self.std, dtype=self.dtype, device=self.device)
            dec = raw["decoder_mask"].numpy() if "decoder_mask" in raw else None
            yield self._batch(video, raw["mask"].numpy(), meta, raw["frame_indices"].numpy(),
                              raw["mask_time"].numpy(), dec)  # fmt: skip

    def close(self) -> None:
        """Stop the worker processes."""
        self.loader = None  # type: ignore[assignment]
