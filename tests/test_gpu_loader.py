"""The GPU path: DALI's mixed (NVDEC) decoder on the H.264 originals, with the alignment checks of the CPU test.

Skipped without CUDA (and without DALI). Compares against the CPU fallback on the same files and ground truth.
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
    out_gpu, out_cpu = [], []
    for epoch in range(EPOCHS):
        gpu.set_epoch(epoch)
        cpu.set_epoch(epoch)
        out_gpu += [(epoch, b) for b in gpu]
        out_cpu += [(epoch, b) for b in cpu]
    gpu.close()
    return out_gpu, out_cpu, cpu.sampler


def test_gpu_batches_on_device_and_same_plan(gpu_and_cpu) -> None:
    gpu, cpu, _ = gpu_and_cpu
    assert len(gpu) == len(cpu) == EPOCHS
    for (_, a), (_, b) in zip(gpu, cpu, strict=True):
        assert a["video"].is_cuda and a["mask"].is_cuda and a["label"].is_cuda
        assert a["video"].shape == b["video"].shape and a["video"].dtype == torch.float32
        assert a["index"].tolist() == b["index"].tolist()
        assert np.array_equal(a["frame_indices"].numpy(), b["frame_indices"].numpy())
        assert torch.equal(a["mask"].cpu(), b["mask"])


def test_gpu_frames_match_fallback_and_ground_truth(gpu_and_cpu) -> None:
    gpu, cpu, sampler = gpu_and_cpu
    for (epoch, a), (_, b) in zip(gpu, cpu, strict=True):
        for i in range(len(a["index"])):
            vi = int(a["index"][i])
            truth = truth_of(sampler.paths[vi])
            spec = sampler.spec(epoch, vi, tuple(truth["size"]))
            pa, pb = to_pixels(a["video"][i]), to_pixels(b["video"][i])
            assert psnr(pa, pb) >= 30, f"NVDEC vs PyAV differ on {sampler.paths[vi]}"
            assert psnr(pa, rendered_clip(truth, spec, pa.shape[1])) >= 30, f"wrong frames/box: {sampler.paths[vi]}"


def test_gpu_mgm_mask_covers_the_moving_object(gpu_and_cpu) -> None:
    gpu, _, sampler = gpu_and_cpu
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
