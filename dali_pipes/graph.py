"""The DALI pipeline: encoded bytes + sampler decisions in, normalized CFHW clips + masks out. No torch here.

Graph (one sample; the batch is `batch_size` of these)::

    external_source (parallel workers, DaliClipSource)
      -> bytes, frame indices, ROI start/end, mirror, mask, meta, mask seconds
    decoders.video(bytes, frames=indices, pad_mode="none")   # "mixed" = NVDEC on GPU, "cpu" = VP8/VP9/MJPEG
      -> resize(roi_start, roi_end, size=[S, S])              # exactly the sampler's crop box, every frame
      -> crop_mirror_normalize(mirror, mean, std, "CFHW")    # flip + normalize + layout + dtype
    mask, meta, indices, mask seconds, decoder mask -> fn.copy  # outputs go through an operator, not the source
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nvidia.dali import fn, pipeline_def, types

OUTPUTS = ("video", "mask", "meta", "frame_indices", "mask_time", "decoder_mask")
_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}


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
    py_num_workers: int = 2,
    dtype: str = "float32",
    prefetch: int = 2,
    seed: int = 0,
    rand_augment: tuple[int, int] | None = None,
) -> Any:
    """Build (not start) the pipeline. `source` is a picklable DaliClipSource; mean/std in [0, 1] pixel units.

    decode_device "mixed" needs `device_id`; "cpu" decodes VP8/VP9/MJPEG only. Outputs in OUTPUTS order:
    video (3, T, S, S) `dtype` (on the GPU for "mixed"), mask (N,) bool (True = masked), meta (4,) int64,
    frame indices (T,) int32, mask seconds (1,) float32, decoder mask (N,) bool (True = reconstructed; (0,) when
    decoder masking is off). rand_augment (n ops, magnitude bin of 31): fine-tuning's DALI RandAugment after the
    resize, one draw per clip for all its frames (None = off).
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device={decode_device!r}: 'mixed' (GPU) or 'cpu'")
    if decode_device == "mixed" and device_id is None:
        raise ValueError("the GPU (mixed) decoder needs a device_id")
    if dtype not in _DTYPES:
        raise ValueError(f"DALI output dtype {dtype!r}: one of {sorted(_DTYPES)} (convert to bf16 in torch)")

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
        py_num_workers=py_num_workers,
        py_start_method="spawn",  # workers must not inherit a CUDA context
        enable_conditionals=rand_augment is not None,  # auto_aug picks its ops with `if` on DataNodes
    )
    def clip_pipeline():  # noqa: ANN202 - DALI graph function
        enc, idx, roi_start, roi_end, mirror, mask, meta, secs, dec = fn.external_source(
            source=source, batch=False, parallel=True, num_outputs=source.NUM_OUTPUTS
        )
        video = fn.decoders.video(enc, device=decode_device, frames=idx, pad_mode="none")  # (T, H, W, 3) uint8
        video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=[input_size, input_size])
        if rand_augment is not None:
            from nvidia.dali.auto_aug import rand_augment as ra

            n, m = rand_augment
            video = ra.rand_augment(video, n=n, m=m, shape=[input_size, input_size], fill_value=128, seed=seed)
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
