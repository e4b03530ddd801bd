"""Repeated sampling on the DALI path (CPU decoder, VP9 twins; the GPU path runs the same graph with NVDEC): one
external-source sample per video, its clips' union decoded once and split per clip; the same plan, masks and
(up to the two codecs) pixels as the fallback; clip 0 bit-identical to R = 1; exact mid-epoch resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mgm.config import load_config

pytest.importorskip("nvidia.dali")
from dali_pipes import build_loader  # noqa: E402
from dali_pipes.graph import DecodePlan  # noqa: E402
from dali_pipes.sources import DaliClipSource  # noqa: E402


def cfg(csv: Path, repeat: int, loader: str = "dali", *extra: str) -> Any:
    base = [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu", "data.batch_size=4",
            f"data.repeat={repeat}", "data.num_workers=1", "data.num_frames=8", "data.input_size=64",
            "data.flip=true", "data.output_dtype=float32", "mask.name=mgm", "mask.ratio=0.75",
            "mask.decoder_target_ratio=0.3"]  # fmt: skip
    return load_config(None, base + list(extra))


def run_epoch(loader: Any, epoch: int) -> list[dict]:
    loader.set_epoch(epoch)
    try:
        return list(loader)
    finally:
        loader.close()


class Info:
    """What DALI hands a parallel source: the sample's place in the epoch."""

    def __init__(self, idx: int, epoch: int = 0) -> None:
        self.idx_in_epoch, self.epoch_idx, self.iteration = idx, epoch, idx


def test_a_source_sample_is_one_read_video_with_the_union_of_its_clips(synth_list: Path) -> None:
    lo = build_loader(cfg(synth_list, 2))
    plan = DecodePlan(DaliClipSource(lo.sampler, lo.masks, twin_suffix=lo.twin_suffix))
    out = plan(Info(1))
    n = DaliClipSource.NUM_OUTPUTS
    idx, frames, order = out[1], out[n], out[n + 1]
    assert idx.shape == (2, 8) and out[2].shape == (2, 2) and out[4].shape == (2,) and out[5].shape == (2, 64)
    assert out[6].shape == (2, 4) and out[6][0, 0] == out[6][1, 0] == lo.sampler.epoch_videos(0)[1]
    assert frames.tolist() == sorted(set(idx.reshape(-1).tolist()))  # each frame of the two clips once, ascending
    assert np.array_equal(frames[order], idx)  # and every clip's frames found in it
    assert out[0].nbytes == Path(lo.sampler.paths[int(out[6][0, 0])]).with_suffix(".webm").stat().st_size  # bytes once


def test_dali_batches_match_the_fallback_and_clip_0_matches_r1(synth_list: Path) -> None:
    dali2 = run_epoch(build_loader(cfg(synth_list, 2)), 1)
    cpu2 = run_epoch(build_loader(cfg(synth_list, 2, "cpu", "data.num_workers=0")), 1)
    dali1 = run_epoch(build_loader(cfg(synth_list, 1)), 1)
    assert len(dali2) == len(cpu2) == 2 and len(dali1) == 1  # 4 videos: 8 clips in batches of 4, or 4 clips
    for d, c in zip(dali2, cpu2, strict=True):
        assert d["video"].shape == (4, 3, 8, 64, 64) and d["decoder_mask"].shape == (4, 64)
        for name in ("index", "frame_indices", "mask", "decoder_mask"):
            assert torch.equal(d[name], c[name]), name  # the same plan and masks as the fallback
        near = (d["video"] - c["video"]).abs().mean(dim=(1, 2, 3, 4))  # VP9 twin vs H.264 original
        apart = (d["video"][0::2] - d["video"][1::2]).abs().mean(dim=(1, 2, 3, 4))  # a video's two clips
        assert near.max() < 0.08 and apart.min() > 4 * near.max(), (near, apart)
        assert d["index"][0::2].tolist() == d["index"][1::2].tolist()
    for name in ("video", "mask", "decoder_mask", "frame_indices", "index"):
        r2 = torch.cat([b[name] for b in dali2])
        assert torch.equal(r2[0::2], dali1[0][name]), name  # clip 0 of each video is the R = 1 clip, bit for bit


def test_dali_resume_mid_epoch_with_repeat(synth_list: Path) -> None:
    a = build_loader(cfg(synth_list, 2))
    a.set_epoch(3)
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = list(it)
    a.close()
    assert state["sampler"]["position"] == 4 and len(rest) == 1
    b = build_loader(cfg(synth_list, 2))
    b.load_state_dict(state)
    again = run_epoch(b, 3)
    assert len(again) == 1
    for name in ("video", "mask", "decoder_mask", "index", "frame_indices"):
        assert torch.equal(again[0][name], rest[0][name]), name


@pytest.mark.gpu
def test_nvdec_repeat_clip_0_matches_r1_and_the_fallbacks_plan(synth_list: Path) -> None:
    # the GPU path of the same graph: the union decoded once by NVDEC, each clip cut, resized and flipped on the GPU
    gpu = ("data.dali_device=gpu", "data.num_workers=2")
    two = run_epoch(build_loader(cfg(synth_list, 2, "dali", *gpu), device="cuda"), 1)
    one = run_epoch(build_loader(cfg(synth_list, 1, "dali", *gpu), device="cuda"), 1)
    cpu = run_epoch(build_loader(cfg(synth_list, 2, "cpu", "data.num_workers=0")), 1)
    assert len(two) == len(cpu) == 2 and two[0]["video"].is_cuda
    for g, c in zip(two, cpu, strict=True):
        for name in ("index", "frame_indices", "mask", "decoder_mask"):
            assert torch.equal(g[name].cpu(), c[name]), name
        near = (g["video"].cpu() - c["video"]).abs().mean(dim=(1, 2, 3, 4))  # NVDEC vs PyAV on the same H.264
        assert near.max() < 0.05, near
    r2 = torch.cat([b["video"] for b in two])[0::2]
    torch.testing.assert_close(r2, one[0]["video"], atol=1e-2, rtol=0)  # same frames, boxes and flips as R = 1
