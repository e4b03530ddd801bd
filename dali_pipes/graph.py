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

    U < T exactly when the clip repeats a frame (a short video looped or clamped by the sampler).
    """
    distinct, order = np.unique(np.asarray(frame_indices), return_inverse=True)
    return distinct.astype(np.int32), order.reshape(-1).astype(np.int32)


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
) -> Any:
    """Build (not start) the pipeline. `source` is a picklable DaliClipSource; mean/std in [0, 1] pixel units.

    decode_device "mixed" needs `device_id`; "cpu" decodes VP8/VP9/MJPEG only. num_threads: the pipeline's CPU
    threads, which are also the mixed decoder's own thread pool (one NVDEC session in flight per thread);
    affine pins those decoder threads to cores (mixed only). source_prefetch: batches the source workers
    prepare ahead (DALI's default is 1: one slow sample then shows up as data wait); bytes_per_sample: the
    workers' shared-memory slot size hint (encoded file + arrays), None = DALI's guess. distinct=False asks the
    decoder for the clip's indices as they are, repeats included (the graph before it decoded each frame once;
    kept to compare against). rand_augment (n ops, magnitude bin of 31): fine-tuning's DALI RandAugment after the
    resize, one draw per clip for all its frames (None = off).
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
    plan = DecodePlan(source) if distinct else source

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
        video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=[input_size, input_size])  # (U,S,S,3)
        if rand_augment is not None:  # one draw per clip, the same ops on every frame: before the rearrange is cheaper
            from nvidia.dali.auto_aug import rand_augment as ra

            n, m = rand_augment
            video = ra.rand_augment(video, n=n, m=m, shape=[input_size, input_size], fill_value=128, seed=seed)
        if distinct:
            video = fn.sequence_rearrange(video, new_order=order)  # (T, S, S, 3) uint8
        video = fn.crop_mirror_normalize(
            video,
            mirror=mirror,
            dtype=_DTYPES[dtype],
            output_layout="CFHW",
            mean=[255.0 * m for m in mean],
            std=[255.0 * s for s in std],
        )  # (3, T, S, S)
        return video, fn.copy(mask), fn.copy(meta), fn.copy(idx), fn.copy(secs), fn.copy(dec)

    return clip_pipeline()
