"""DALI -> torch: an iterable loader whose batches a training loop cannot tell from the CPU fallback's.

Batch (a dict; B = batch size, T frames, S = input size, N = T/tubelet * (S/patch)^2 tokens):
    video          (B, 3, T, S, S) float32 | float16 | bfloat16, normalized, on `device`
    mask           (B, N) bool on `device`, True = masked (hidden from the encoder)
    decoder_mask   (B, N) bool on `device`, True = reconstructed (a loss target), a subset of mask; only with decoder
                   masking (mask.decoder_target_ratio > 0)
    label          (B,) int64 on `device`
    index          (B,) int64 (CPU): the video actually loaded (a replacement when the planned one was bad)
    frame_indices  (B, T) int32 (CPU): source frame numbers of the clip
    mask_time      (B,) float32 (CPU): seconds the worker spent making each mask (motion read + generator)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dali_pipes.sampler import ClipSampler

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TooManyBadVideos(RuntimeError):
    """More than max_bad_fraction of an epoch's samples failed to load."""


# How DALI 2.4 words a failed run(). An operator's failure: "Error in CPU|MIXED|GPU operator `nvidia.dali.fn.<op>`
# ... encountered:\n\n<message>". CUDA failures: "CUDA driver API error <name>" / "CUDA runtime API error <name>"
# (dali/core/cuda_error.h), allocations "Can't allocate N bytes"; a missing libnvcuvid fails the first cuvid call
# (a driver API error) after "dlopen libnvcuvid.so failed"; a dead worker pool is "Worker data receiving
# interrupted", from no operator at all. Only the decoder failing on a stream (unreadable data, a codec setting
# NVDEC refuses) is about the batch's videos; everything else is about the machine or the code and must stop the
# run as itself, not be counted as unreadable videos while the pipeline is rebuilt again and again.
DECODER_OP = "decoders.video"
SYSTEMIC = ("cuda driver api error", "cuda runtime api error", "cuda_error", "cudaerror", "nvcuvid", "can't allocate",
            "cuda allocation failed", "out of memory", "nvml")  # fmt: skip
MAX_LOST_IN_A_ROW = 3  # decoder failures on consecutive batches: a systemic fault, not bad files


def is_bad_video_error(error: BaseException) -> bool:
    """Whether an error of DALI's run() is the decoder failing on the batch's streams (True: lose the batch, go
    on) rather than CUDA, NVDEC's library, memory, the worker pool or another operator (False: stop)."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and DECODER_OP in text and not any(m in text for m in SYSTEMIC)


def dali_reason(error: BaseException) -> str:
    """The operator's own message out of DALI's wrapping (the text after "encountered:"), one line."""
    text = str(error)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1].split("C++ context:", 1)[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return next((line for line in lines if "frame" in line or "decod" in line.lower()), lines[0] if lines else "")


LAYOUTS = ("BCTHW", "BTCHW")  # VideoMAE's and timm's (B, 3, T, H, W); Hugging Face's VideoMAE (B, T, 3, H, W)


class _Tuples:
    """`loader.as_tuples(layout, videomae_v2)`: the same batches as (video, bool_masked_pos) in the layout a model
    expects, or (video, bool_masked_pos, decode_masked_pos) for VideoMAE V2's loop."""

    def __init__(self, loader: LoaderBase, layout: str, videomae_v2: bool = False) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: one of {', '.join(LAYOUTS)}")
        self.loader, self.layout, self.videomae_v2 = loader, layout, videomae_v2

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.loader:
            video = batch["video"]  # (B, 3, T, H, W)
            out = (video.transpose(1, 2) if self.layout == "BTCHW" else video), batch["mask"]
            if self.videomae_v2:  # V2's decode_masked_pos: True = NOT reconstructed; ~mask without decoder masking
                out += (~batch.get("decoder_mask", batch["mask"]),)
            yield out


class LoaderBase:
    """What both loaders share: length, epochs, resume state, bad-file accounting and stats."""

    kind = "base"

    def __init__(self, sampler: ClipSampler, *, device: torch.device, output_dtype: str, max_bad_fraction: float):
        if output_dtype not in _TORCH_DTYPES:
            raise ValueError(f"output_dtype={output_dtype!r}: one of {sorted(_TORCH_DTYPES)}")
        self.sampler, self.device = sampler, torch.device(device)
        self.dtype, self.max_bad_fraction = _TORCH_DTYPES[output_dtype], max_bad_fraction
        self.batch_size = sampler.batch_size
        self.stats: dict[str, Any] = {
            "loader": self.kind,
            "batches": 0,
            "samples": 0,
            "bad_files": 0,  # reads that failed (each replaced by another video)
            "bad_videos": [],  # paths named in warnings, first seen first
            "failed_batches": 0,  # batches lost whole (decoder error inside DALI)
            "mask_seconds": 0.0,
        }
        self._bad_in_epoch = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration runs (reshuffles; a restored mid-epoch position is kept)."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Resume point: take it after consuming a batch; a fresh loader given it yields exactly what was left."""
        return {"sampler": self.sampler.state_dict(), "stats": {k: self.stats[k] for k in ("bad_files",)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def as_tuples(self, layout: str = "BCTHW", *, videomae_v2: bool = False) -> _Tuples:
        """Iterable of (video, bool_masked_pos (B, N), True = masked), for VideoMAE-style loops.

        layout "BCTHW": video (B, 3, T, S, S), VideoMAE's format; "BTCHW": (B, T, 3, S, S), what Hugging Face's
        `VideoMAEForPreTraining(pixel_values=...)` takes (a view of the same memory, no copy).
        videomae_v2: yield (video, bool_masked_pos, decode_masked_pos), VideoMAE V2's batch, whose third mask is
        True where the decoder does NOT reconstruct (the inverse of batch["decoder_mask"]; ~bool_masked_pos without
        decoder masking, as V2's own dataset does). A VideoMAE (V1) loop keeps the default 2-tuples, and trains
        without decoder masking.
        """
        return _Tuples(self, layout, videomae_v2)

    def _begin_epoch(self) -> None:
        # Iterating again after an epoch ran out starts the next one, like calling set_epoch(epoch + 1).
        if self.sampler.position >= len(self.sampler):
            self.sampler.set_epoch(self.sampler.epoch + 1)
        if self.sampler.position == 0:
            self._bad_in_epoch = 0

    def _account(self, meta: np.ndarray, mask_time: np.ndarray) -> None:
        """Book-keep one batch: meta (B, 4) int64 [video, label, bad reads, first bad video or -1]."""
        self.stats["batches"] += 1
        self.stats["samples"] += len(meta)
        self.stats["mask_seconds"] += float(mask_time.sum())
        self.sampler.position += len(meta)
        for video, _, bad, first_bad in meta.tolist():
            if bad:
                self._record_bad(bad, f"{self.sampler.paths[first_bad]} (replaced by {self.sampler.paths[video]})")

    def _record_bad(self, count: int, what: str) -> None:
        self.stats["bad_files"] += count
        self._bad_in_epoch += count
        if len(self.stats["bad_videos"]) < 1000:
            self.stats["bad_videos"].append(what)
        warnings.warn(f"skipped unreadable video: {what}", stacklevel=3)
        limit = self.max_bad_fraction * len(self.sampler)
        if self._bad_in_epoch > limit:
            raise TooManyBadVideos(
                f"{self._bad_in_epoch} unreadable videos in epoch {self.sampler.epoch} on this rank, more than "
                f"data.max_bad_fraction={self.max_bad_fraction} of {len(self.sampler)} samples; last: {what}. "
                "Check the files (mgm-prepare probe) or raise data.max_bad_fraction."
            )

    def _batch(self, video: torch.Tensor, mask: np.ndarray, meta: np.ndarray, idx: np.ndarray, secs: np.ndarray,
               decoder_mask: np.ndarray | None = None):  # fmt: skip
        nb = self.device.type == "cuda"
        batch = {
            "video": video.to(self.device, self.dtype, non_blocking=nb),
            "mask": torch.from_numpy(mask).to(self.device, non_blocking=nb),
            "label": torch.from_numpy(meta[:, 1].copy()).to(self.device, non_blocking=nb),
            "index": torch.from_numpy(meta[:, 0].copy()),
            "frame_indices": torch.from_numpy(idx),
            "mask_time": torch.from_numpy(secs.reshape(-1)),
        }
        if decoder_mask is not None and decoder_mask.shape[-1]:  # DALI sends (B, 0) when decoder masking is off
            batch["decoder_mask"] = torch.from_numpy(decoder_mask).to(self.device, non_blocking=nb)
        return batch


def _clips(x: Any, repeat: int) -> Any:
    """(B / R, R, ...) per-video outputs of a repeated-sampling graph -> (B, ...) clips, video-major (a view);
    `x` as it is when repeat = 1."""
    return x if repeat == 1 else x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class DaliLoader(LoaderBase):
    """Batches from the DALI graph (dali_pipes.graph) fed by DaliClipSource workers.

    `kind` is the path dali_pipes.factory.choose_path chose: "dali-gpu" (NVDEC) or "dali-cpu" (VP9 twins); the
    graph's arguments (`graph_kwargs`) were made for it there. The pipeline is built lazily at the first
    iteration, for the sampler's epoch and position; DALI's own epoch counter then follows ours. A
    `set_epoch`/`load_state_dict` that jumps elsewhere rebuilds it (a few seconds: the workers restart). A decoder
    error inside DALI loses the batch: it is counted, its planned files are named, and the pipeline is rebuilt
    after it; any other error of the run (CUDA, NVDEC's library, memory, dead workers), or decoder failures on
    MAX_LOST_IN_A_ROW batches in a row, stop the iteration as themselves.
    """

    kind = "dali"

    def __init__(self, sampler: ClipSampler, masks: Any, *, kind: str, graph_kwargs: dict[str, Any],
                 twin_suffix: str | None, device: torch.device, output_dtype: str,
                 max_bad_fraction: float) -> None:  # fmt: skip
        if kind not in ("dali-gpu", "dali-cpu"):
            raise ValueError(f"DaliLoader kind={kind!r}: 'dali-gpu' or 'dali-cpu'")
        self.kind = kind  # before LoaderBase.__init__, which records it in stats
        super().__init__(sampler, device=device, output_dtype=output_dtype, max_bad_fraction=max_bad_fraction)
        self.masks, self.twin_suffix, self.graph_kwargs = masks, twin_suffix, graph_kwargs
        self._pipe: Any = None
        self._pipe_at: tuple[int, int] | None = None  # (epoch, position) the pipeline delivers next
        self._lost_in_a_row = 0

    def _build(self) -> None:
        from dali_pipes.graph import build_pipeline
        from dali_pipes.sources import DaliClipSource

        self.close()
        s = self.sampler
        source = DaliClipSource(s, self.masks, epoch0=s.epoch, offset0=s.position, twin_suffix=self.twin_suffix)
        # float16 out of DALI for a bfloat16 batch too (crop_mirror_normalize has no bfloat16): half the bytes,
        # and the one cast in _batch is the batch's only copy
        dali_dtype = "float32" if self.dtype == torch.float32 else "float16"
        # data.repeat = R: DALI's samples are videos, R clips each (dali_pipes.graph), B / R of them per batch
        self._pipe = build_pipeline(source, batch_size=self.batch_size // s.repeat, dtype=dali_dtype,
                                    repeat=s.repeat, **self.graph_kwargs)  # fmt: skip
        self._pipe.build()
        self._pipe_at = (s.epoch, s.position)

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        if self._pipe is not None:
            del self._pipe
            self._pipe, self._pipe_at = None, None

    def _to_torch(self, tl: Any) -> torch.Tensor:
        """DALI batch -> torch tensor on the same memory (DLPack), no copy, as DALI's own PyTorch iterator does.

        Safe because the graph runs under DALI's dynamic executor: an output stays valid while referenced, DALI
        does not reuse it. A GPU output is handed over on torch's current stream (DALI makes it wait for the
        pipeline's work).
        """
        return torch.from_dlpack(tl.as_tensor())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._begin_epoch()
        s = self.sampler
        if self._pipe is None or self._pipe_at != (s.epoch, s.position):
            self._build()
        while s.position < len(s):
            try:
                video, mask, meta, idx, secs, dec = self._pipe.run()
            except StopIteration:
                break
            except RuntimeError as e:  # DALI's pipeline is unusable after any error
                if not is_bad_video_error(e):
                    e.add_note(f"dali_pipes: DALI failed on the batch at position {s.position} of epoch {s.epoch} "
                               "(not a video decoding error: stopped, nothing counted as a bad video)")  # fmt: skip
                    raise
                self._lost_batch(e)
                continue
            self._lost_in_a_row = 0
            meta_np = _clips(np.array(meta.as_tensor()), s.repeat)
            batch = self._batch(_clips(self._to_torch(video), s.repeat), _clips(np.array(mask.as_tensor()), s.repeat),
                                meta_np, _clips(np.array(idx.as_tensor()), s.repeat),
                                _clips(np.array(secs.as_tensor()), s.repeat),
                                _clips(np.array(dec.as_tensor()), s.repeat))  # fmt: skip
            self._account(meta_np, batch["mask_time"].numpy())
            self._pipe_at = (s.epoch, s.position)
            yield batch
        # the epoch ran out: DALI's next epoch (after reset) is our next one
        if self._pipe is not None and s.position >= len(s):
            try:
                self._pipe.run()  # the source's StopIteration, right after the last planned batch
            except StopIteration:
                pass
            else:
                raise RuntimeError("DALI delivered more batches than the sampler planned for this epoch")
            self._pipe.reset()
            self._pipe_at = (s.epoch + 1, 0)

    def _lost_batch(self, error: Exception) -> None:
        """Count and name the failed batch's files (which may stop the run), then rebuild past the batch."""
        s = self.sampler
        planned = s.epoch_indices(s.epoch)[s.position : s.position + self.batch_size]
        names = ", ".join(dict.fromkeys(s.paths[i] for i in planned))  # a video once, not once per clip
        self.stats["failed_batches"] += 1
        self._lost_in_a_row += 1
        s.position += len(planned)
        self.close()
        what = f"DALI decode failed for a batch of [{names}] ({dali_reason(error)})"
        self._record_bad(len(planned), what)  # TooManyBadVideos before any worker is spawned again
        if self._lost_in_a_row >= MAX_LOST_IN_A_ROW:
            raise RuntimeError(
                f"DALI's decoder failed on {self._lost_in_a_row} batches in a row, last: {what}. Every file of a "
                "batch being unreadable is unlikely: check the decoder (codec, GPU, driver) on one of these files."
            ) from error
        self._build()
