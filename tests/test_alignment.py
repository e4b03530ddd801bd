"""Masks and pixels line up: DALI's CPU path (VP9 twin) vs the PyAV fallback (H.264 original), every CI run.

Both loaders get the same sampler decisions; the test checks that (1) their frames agree after the same crop/resize
/flip (PSNR >= 30 dB), (2) both match the synthetic clip re-rendered through that crop/resize/flip, so the right
frames and box were used, and (3) the MGM mask (ratio 0.75) covers >= 95% of the object's tokens at its known
position, with the ground-truth boxes mapped through the same crop and flip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from alignment_util import loader_overrides, object_tokens, psnr, rendered_clip, to_pixels, truth_of

from dali_pipes import build_loader
from mgm.config import load_config

pytest.importorskip("nvidia.dali")
EPOCHS = 3  # one batch of the 4 synthetic clips per epoch; a few epochs vary crops and flips


def collect(loader, epochs: int = EPOCHS) -> list[tuple[int, dict]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += [(epoch, b) for b in loader]
    return out


@pytest.fixture(scope="module")
def both(synth_list: Path) -> tuple[list, list, object]:
    """Batches of DALI CPU (VP9 twins) and of the CPU fallback (H.264), built from the same config."""
    dali = build_loader(load_config(None, loader_overrides(synth_list, "dali", "cpu")))
    cpu = build_loader(load_config(None, loader_overrides(synth_list, "cpu")))
    assert dali.kind == "dali-cpu" and cpu.kind == "cpu"
    got = collect(dali), collect(cpu), cpu.sampler
    dali.close()
    return got


def test_same_samples_and_masks(both) -> None:
    dali, cpu, _ = both
    assert len(dali) == len(cpu) == EPOCHS
    for (_, a), (_, b) in zip(dali, cpu, strict=True):
        assert a["index"].tolist() == b["index"].tolist()
        assert np.array_equal(a["frame_indices"].numpy(), b["frame_indices"].numpy())
        # motion from the H.264 original in both: identical masks, whatever decoded the pixels
        assert np.array_equal(a["mask"].numpy(), b["mask"].numpy())


def test_frames_agree_after_crop_resize(both) -> None:
    dali, cpu, sampler = both
    flipped = 0
    for (epoch, a), (_, b) in zip(dali, cpu, strict=True):
        for i in range(len(a["index"])):
            vi = int(a["index"][i])
            spec = sampler.spec(epoch, vi, tuple(truth_of(sampler.paths[vi])["size"]))
            flipped += spec.flip
            pa, pb = to_pixels(a["video"][i]), to_pixels(b["video"][i])
            assert psnr(pa, pb) >= 30, f"DALI VP9 vs PyAV H.264 differ on {sampler.paths[vi]}"
            want = rendered_clip(truth_of(sampler.paths[vi]), spec, pa.shape[1])
            assert psnr(pa, want) >= 30 and psnr(pb, want) >= 30, f"not the planned frames/box: {sampler.paths[vi]}"
            if spec.flip:  # the flip is really applied: the unflipped rendering must match worse
                assert psnr(pa, want[:, :, ::-1]) < psnr(pa, want) - 3
    assert flipped > 0, "no flipped clip in the sample: the flip path went untested"


def test_mgm_mask_covers_the_moving_object(both) -> None:
    dali, _, sampler = both
    coverages, mirrored = [], []
    for epoch, batch in dali:
        for i in range(len(batch["index"])):
            vi = int(batch["index"][i])
            truth = truth_of(sampler.paths[vi])
            if truth["kind"] == "static":  # nothing moves: the mask falls back to tube, nothing to find
                continue
            spec = sampler.spec(epoch, vi, tuple(truth["size"]))
            obj = object_tokens(truth, spec, size=224, patch=16)  # (T2, Hp, Wp)
            if not obj.any():  # the object is outside this crop
                continue
            mask = batch["mask"][i].numpy().reshape(obj.shape)
            coverages.append((mask[obj].mean(), f"{sampler.paths[vi]} epoch {epoch}"))
            mirrored.append(mask[:, :, ::-1][obj].mean())
    assert len(coverages) >= EPOCHS
    for coverage, where in coverages:
        assert coverage >= 0.95, f"{where}: the MGM mask covers {coverage:.1%} of the object's tokens"
    # control: the same masks mirrored (a flip applied to pixels but not to motion) miss the object
    assert min(mirrored) < 0.95
