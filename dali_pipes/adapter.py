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


class DaliLoader(LoaderBase):
    """Batches from the DALI graph (dali_pipes.graph) fed by DaliClipSource workers.

    `kind` is the path dali_pipes.factory.choose_path chose: "dali-gpu" (NVDEC) or "dali-cpu" (VP9 twins); the
    graph's arguments (`graph_kwargs`) were made for it there. The pipeline is built lazily at the first
    iteration, for the sampler's epoch and position; DALI's own epoch counter then follows ours. A
    `set_epoch`/`load_state_dict` that jumps elsewhere rebuilds it (a few seconds: the workers restart). A decoder
    error inside DALI loses the batch: it is counted, its planned files are named, and the pipeline is rebuilt
    after it.
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

    def _build(self) -> None:
        from dali_pipes.graph import build_pipeline
        from dali_pipes.sources import DaliClipSource

        self.close()
        s = self.sampler
        source = DaliClipSource(s, self.masks, epoch0=s.epoch, offset0=s.position, twin_suffix=self.twin_suffix)
        dali_dtype = "float16" if self.dtype == torch.float16 else "float32"
        self._pipe = build_pipeline(source, batch_size=self.batch_size, dtype=dali_dtype, **self.graph_kwargs)
        self._pipe.build()
        self._pipe_at = (s.epoch, s.position)

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        if self._pipe is not None:
            del self._pipe
            self._pipe, self._pipe_at = None, None

    def _to_torch(self, tl: Any) -> torch.Tensor:
        """DALI batch -> torch tensor: GPU outputs are copied device-to-device, CPU ones via numpy (a copy:
        DALI reuses its buffers on the next run)."""
        t = tl.as_tensor()
        if type(t).__name__ == "TensorGPU":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
            out = torch.empty(t.shape(), dtype=dtype, device=self.device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
            return out
        return torch.from_numpy(np.array(t))

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
            except RuntimeError as e:  # DALI's pipeline is unusable after this: count, name, rebuild past it
                self._lost_batch(e)
                continue
            meta_np = np.array(meta.as_tensor())
            batch = self._batch(self._to_torch(video), np.array(mask.as_tensor()), meta_np,
                                np.array(idx.as_tensor()), np.array(secs.as_tensor()),
                                np.array(dec.as_tensor()))  # fmt: skip
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
        s = self.sampler
        planned = s.epoch_indices(s.epoch)[s.position : s.position + self.batch_size]
        names = ", ".join(s.paths[i] for i in planned)
        first = str(error).strip().splitlines()
        reason = next((line for line in first if "frame" in line or "decod" in line.lower()), first[0] if first else "")
        self.stats["failed_batches"] += 1
        s.position += len(planned)
        self.close()
        self._build()
        self._record_bad(len(planned), f"DALI decode failed for a batch of [{names}] ({reason.strip()})")
