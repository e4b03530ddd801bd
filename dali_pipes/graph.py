"""The DALI pipeline: encoded bytes + sampler decisions in, normalized CFHW clips + masks out. No torch here.

Graph (one sample; the batch is `batch_size` of these)::

    external_source (parallel workers, DecodePlan(DaliClipSource), `source_prefetch` batches ahead)
      -> bytes, frame indices, ROI start/end, mirror, mask, meta, mask seconds, distinct frames, order
    decoders.video(bytes, frames=distinct frames, pad_mode="none")  # "mixed" = NVDEC on GPU, "cpu" = VP8/VP9/MJPEG
      -> resize(roi_start, roi_end, size=[S, S])              # exactly the sampler's crop box, every frame
      -> sequence_rearrange(new_order=order)                 # the clip's frame order, repeats restored
      -> crop_mirror_normalize(mirror, mean, std, "CFHW")    # flip + normalize + layout + dtype
    mask, meta, indices, mask seconds, decoder mask -> fn.copy  # outputs go through an operator, not the source

Why the decoder gets each frame once: it sorts the requested frames and decodes forward, but a repeated index
(short clips under data.short_video=loop/clamp) sends it back to the previous key frame to decode that frame
again (DALI's FramesDecoderBase::SeekFrame). The distinct frames, resized, are put back in the clip's order by
`sequence_rearrange`, on the GPU for the mixed path: the same pixels, one decode per frame.

The pipeline runs under DALI's dynamic executor (`exec_dynamic=True`): its outputs stay valid for as long as
they are referenced, so dali_pipes.adapter hands them to torch without a copy (DLPack), as DALI's own PyTorch
iterator does.

Repeated sampling (data.repeat = R > 1): a sample is one video and its R clips (dali_pipes.sources.DaliClipSource),
so the pipeline's batch is batch_size / R videos. The source reads and checks the file once and hands the bytes
once; the decoder gets the sorted union of the R clips' frames and decodes it in one forward pass: a frame two
clips share is decoded once, and a gap between clips is decoded through unless it is more than 10 frames long and
holds a key frame, which DALI's decoder then seeks to (FramesDecoderBase::SeekFrame; the fallback does the same).
Then, per clip, `sequence_rearrange` picks its T frames out of the union (a gather of uint8 frames; on the GPU
path a device copy), `resize` applies its own crop box and `crop_mirror_normalize` its flip, and `stack` joins
the R clips: (R, 3, T, S, S) per video, which the adapter views as R consecutive clips of the batch. What it
costs: one read, demux and decode of the union per video instead of R (NVDEC's share, the costly part on the
GPU, shrinks most when the clips overlap), and R resizes of T frames, as without repetition; the per-clip
operators are R instances in the graph (DALI's batch size is fixed per graph, so the clips cannot become
samples of their own after the decoder). The masks are made per clip in the workers, on one motion read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types

OUTPUTS = ("video", "mask", "meta", "frame_indices", "mask_time", "decoder_mask")
_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}  # crop_mirror_normalize has no bfloat16
_FRAMES = 1  # position of the frame indices among the source's outputs (dali_pipes.sources.DaliClipSource)


def distinct_frames(frame_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) frame indices -> (distinct frames (U,) int32 ascending, order (T,) int32) with distinct[order] == indices.

    U < T exactly when the clip repeats a frame (a short video looped or clamped by the sampler). (R, T) indices (the
    R clips of one video) give their union (U,) and (R, T) positions in it.
    """
    idx = np.asarray(frame_indices)
    distinct, order = np.unique(idx, return_inverse=True)
    return distinct.astype(np.int32), order.reshape(idx.shape).astype(np.int32)


class DecodePlan:
    """The parallel source DALI calls: the wrapped source's outputs, then the decoder's frames and their order.

    Picklable (DALI's spawned workers receive it) as long as the wrapped source is.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.NUM_OUTPUTS = source.NUM_OUTPUTS + 2

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        out = self.source(info)
        return (*out, *distinct_frames(out[_FRAMES]))


def build_pipeline(
    source: Any,
    *,
    batch_size: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    decode_device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 2,
    affine: bool = False,
    py_num_workers: int = 2,
    dtype: str = "float32",
    prefetch: int = 2,
    source_prefetch: int = 3,
    bytes_per_sample: int | None = None,
    distinct: bool = True,
    seed: int = 0,
    rand_augment: tuple[int, int] | None = None,
    repeat: int = 1,
) -> Any:
    """Build (not start) the pipeline. `source` is a picklable DaliClipSource; mean/std in [0, 1] pixel units.

    decode_device "mixed" needs `device_id`; "cpu" decodes VP8/VP9/MJPEG only. num_threads: the pipeline's CPU
    threads, which are also the mixed decoder's own thread pool (one NVDEC session in flight per thread);
    affine pins those decoder threads to cores (mixed only). source_prefetch: batches the source workers
    prepare ahead (DALI's default is 1: one slow sample then shows up as data wait); bytes_per_sample: the
    workers' shared-memory slot size hint (encoded file + arrays), None = DALI's guess. distinct=False asks the
    decoder for the clip's indices as they are, repeats included (the graph before it decoded each frame once;
    kept to compare against). rand_augment (n ops, magnitude bin of 31): fine-tuning's DALI RandAugment after the
    resize, one draw per clip for all its frames (None = off). repeat: clips per video (data.repeat; the module
    docstring): `batch_size` is then in videos, and every output carries a clip axis after the batch axis.
    Outputs in OUTPUTS order: video (3, T, S, S) `dtype` (on the GPU for "mixed"), mask (N,) bool (True =
    masked), meta (4,) int64, frame indices (T,) int32, mask seconds (1,) float32, decoder mask (N,) bool (True =
    reconstructed; (0,) when decoder masking is off).
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device={decode_device!r}: 'mixed' (GPU) or 'cpu'")
    if decode_device == "mixed" and device_id is None:
        raise ValueError("the GPU (mixed) decoder needs a device_id")
    if dtype not in _DTYPES:
        raise ValueError(f"DALI output dtype {dtype!r}: one of {sorted(_DTYPES)} (convert to bf16 in torch)")
    decoder_args = {"affine": affine} if decode_device == "mixed" else {}
    if repeat > 1 and not distinct:
        raise ValueError("repeat > 1 decodes the clips' union once: it needs distinct=True")
    plan = DecodePlan(source) if distinct else source
    normalize = {"dtype": _DTYPES[dtype], "output_layout": "CFHW", "mean": [255.0 * m for m in mean],
                 "std": [255.0 * s for s in std]}  # fmt: skip

    def augment(video: Any, r: int = 0) -> Any:  # one RandAugment draw per clip, the same ops on every frame
        from nvidia.dali.auto_aug import rand_augment as ra

        n, m = rand_augment  # clip r of a video: an operator instance of its own, seeded apart from the others
        return ra.rand_augment(video, n=n, m=m, shape=[input_size, input_size], fill_value=128, seed=seed + 7919 * r)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
        exec_dynamic=True,  # outputs live as long as they are referenced: the adapter keeps them without a copy
        py_num_workers=py_num_workers,
        py_start_method="spawn",  # workers must not inherit a CUDA context
        enable_conditionals=rand_augment is not None,  # auto_aug picks its ops with `if` on DataNodes
    )
    def clip_pipeline():  # noqa: ANN202 - DALI graph function
        outputs = fn.external_source(
            source=plan,
            batch=False,
            parallel=True,
            num_outputs=plan.NUM_OUTPUTS,
            prefetch_queue_depth=source_prefetch,
            bytes_per_sample_hint=bytes_per_sample,
        )
        enc, idx, roi_start, roi_end, mirror, mask, meta, secs, dec = outputs[: source.NUM_OUTPUTS]
        frames, order = outputs[source.NUM_OUTPUTS :] if distinct else (idx, None)
        video = fn.decoders.video(enc, device=decode_device, frames=frames, pad_mode="none", **decoder_args)
        if repeat > 1:  # (U, H, W, 3) union of the R clips' frames -> per clip: its frames, its box, its flip
            clips = []
            for r in range(repeat):
                clip = fn.sequence_rearrange(video, new_order=order[r])  # (T, H, W, 3)
                clip = fn.resize(clip, roi_start=roi_start[r], roi_end=roi_end[r], size=[input_size, input_size])
                clip = augment(clip, r) if rand_augment is not None else clip
                clips.append(fn.crop_mirror_normalize(clip, mirror=mirror[r], **normalize))  # (3, T, S, S)
            outs = (mask, meta, idx, secs, dec)
            return (fn.stack(*clips), *(fn.copy(x) for x in outs))  # video (R, 3, T, S, S), the rest (R, ...)
        video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=[input_size, input_size])  # (U,S,S,3)
        if rand_augment is not None:  # before the rearrange: fewer frames to augment
            video = augment(video)
        if distinct:
            video = fn.sequence_rearrange(video, new_order=order)  # (T, S, S, 3) uint8
        video = fn.crop_mirror_normalize(video, mirror=mirror, **normalize)  # (3, T, S, S)
        return video, fn.copy(mask), fn.copy(meta), fn.copy(idx), fn.copy(secs), fn.copy(dec)

    return clip_pipeline()
