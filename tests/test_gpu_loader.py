"""The GPU path: DALI's mixed (NVDEC) decoder on the H.264 originals, with the alignment checks of the CPU test.

Skipped without CUDA (and without DALI). Compares against the CPU fallback on the same files and ground truth;
checks that batches are float16 DALI memory handed over without a copy and that short clips (repeated frames)
decode each frame once with the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from alignment_util import loader_overrides, object_tokens, psnr, rendered_clip, to_pixels, truth_of

from dali_pipes import build_loader
from mgm.config import load_config

pytestmark = pytest.mark.gpu
EPOCHS = 3


@pytest.fixture(scope="module")
def gpu_and_cpu(synth_list: Path):
    pytest.importorskip("nvidia.dali")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = build_loader(load_config(None, loader_overrides(synth_list, "dali", "gpu")), device="cuda")
    cpu = build_loader(load_config(None, loader_overrides(synth_list, "cpu")))
    assert gpu.kind == "dali-gpu"
    to_torch, dali_ptrs = gpu._to_torch, []
    gpu._to_torch = lambda tl: dali_ptrs.append(tl.as_tensor().data_ptr()) or to_torch(tl)  # where DALI put it
    out_gpu, out_cpu = [], []
    for epoch in range(EPOCHS):
        gpu.set_epoch(epoch)
        cpu.set_epoch(epoch)
        out_gpu += [(epoch, b) for b in gpu]
        out_cpu += [(epoch, b) for b in cpu]
    gpu.close()
    return out_gpu, out_cpu, cpu.sampler, dali_ptrs


def test_gpu_batches_on_device_and_same_plan(gpu_and_cpu) -> None:
    gpu, cpu, _, dali_ptrs = gpu_and_cpu
    assert len(gpu) == len(cpu) == len(dali_ptrs) == EPOCHS
    for (_, a), (_, b), ptr in zip(gpu, cpu, dali_ptrs, strict=True):
        assert a["video"].is_cuda and a["mask"].is_cuda and a["label"].is_cuda
        assert a["video"].shape == b["video"].shape and a["video"].dtype == torch.float16  # data.output_dtype=auto
        assert a["video"].data_ptr() == ptr  # DALI's output buffer itself (DLPack), no copy
        assert a["index"].tolist() == b["index"].tolist()
        assert np.array_equal(a["frame_indices"].numpy(), b["frame_indices"].numpy())
        assert torch.equal(a["mask"].cpu(), b["mask"])


def test_gpu_frames_match_fallback_and_ground_truth(gpu_and_cpu) -> None:
    gpu, cpu, sampler, _ = gpu_and_cpu
    for (epoch, a), (_, b) in zip(gpu, cpu, strict=True):
        for i in range(len(a["index"])):
            vi = int(a["index"][i])
            truth = truth_of(sampler.paths[vi])
            spec = sampler.spec(epoch, vi, tuple(truth["size"]))
            pa, pb = to_pixels(a["video"][i]), to_pixels(b["video"][i])
            assert psnr(pa, pb) >= 30, f"NVDEC vs PyAV differ on {sampler.paths[vi]}"
            assert psnr(pa, rendered_clip(truth, spec, pa.shape[1])) >= 30, f"wrong frames/box: {sampler.paths[vi]}"


def test_gpu_mgm_mask_covers_the_moving_object(gpu_and_cpu) -> None:
    gpu, _, sampler, _ = gpu_and_cpu
    checked = 0
    for epoch, batch in gpu:
        for i in range(len(batch["index"])):
            vi = int(batch["index"][i])
            truth = truth_of(sampler.paths[vi])
            if truth["kind"] == "static":
                continue
            spec = sampler.spec(epoch, vi, tuple(truth["size"]))
            obj = object_tokens(truth, spec, size=224, patch=16)
            if not obj.any():
                continue
            mask = batch["mask"][i].cpu().numpy().reshape(obj.shape)
            assert mask[obj].mean() >= 0.95, f"{sampler.paths[vi]} epoch {epoch}: object not covered"
            checked += 1
    assert checked >= EPOCHS


def test_gpu_half_precision_output(synth_list: Path) -> None:
    pytest.importorskip("nvidia.dali")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    over = loader_overrides(synth_list, "dali", "gpu") + ["data.output_dtype=bfloat16", "mask.name=tube"]
    loader = build_loader(load_config(None, over), device="cuda")
    batch = next(iter(loader))
    assert batch["video"].dtype == torch.bfloat16 and batch["video"].is_cuda
    assert torch.isfinite(batch["video"].float()).all()
    loader.close()


def test_gpu_short_clips_decode_each_frame_once_with_the_same_pixels(tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from mgm.prep.filelist import VideoEntry, write_list
    from mgm.prep.synth import make_clip

    entries = []
    for i, kind in enumerate(("single", "pan")):  # 12 frames: 16 at stride 2 loop over them, repeating frames
        truth = make_clip(tmp_path / f"short_{i}", kind, seed=i, num_frames=12, vp9_twin=False)
        entries.append(VideoEntry(str(tmp_path / f"short_{i}.mp4"), truth["label"], 12))
    csv = write_list(tmp_path / "short.csv", entries * 2)
    cfg = load_config(None, loader_overrides(csv, "dali", "gpu") + ["mask.name=tube", "data.short_video=loop"])
    once, every = build_loader(cfg, device="cuda"), build_loader(cfg, device="cuda")
    every.graph_kwargs = {**every.graph_kwargs, "distinct": False}  # the decoder gets the indices, repeats and all
    a, b = list(once), list(every)
    once.close()
    every.close()
    assert len(a) == len(b) == 1
    assert all(len(set(f.tolist())) < len(f) for f in a[0]["frame_indices"])  # every clip repeats frames
    assert torch.equal(a[0]["video"], b[0]["video"])  # sequence_rearrange on the GPU puts the repeats back exactly
