"""Sampler: fine-tuning's random views (segments, RandomResizedCrop) and evaluation's fixed views over the ranks."""

from __future__ import annotations

import numpy as np
import pytest
from _entries import entries

from dali_pipes.sampler import ClipSampler, EvalViews, resized_crop, segment_indices, view_crop, view_indices


def sampler(n: int, **kw) -> ClipSampler:
    kw.setdefault("frame_size", lambda i: (240, 320))
    return ClipSampler(entries(n), num_frames=8, input_size=112, **kw)


@pytest.mark.parametrize("n,world,batch", [(5, 1, 4), (5, 2, 4), (7, 3, 2), (4, 4, 3)])
def test_eval_views_cover_every_video_once_over_the_ranks(n: int, world: int, batch: int) -> None:
    views = EvalViews(clips=2, crops=3)
    seen: list[int] = []
    for rank in range(world):
        s = sampler(n, views=views, rank=rank, world_size=world, batch_size=batch)
        order = s.epoch_indices(0)
        assert len(order) == len(s) and len(s) % batch == 0  # full batches: padding fills the last one
        real = order[: s.real_samples]
        assert set(order[s.real_samples :].tolist()) <= set(real.tolist())  # padding repeats a sample of this rank
        seen += real.tolist()
    assert sorted(seen) == list(range(n * views.count))  # every (video, view) once, none dropped, none twice


def test_eval_views_are_fixed_and_spread() -> None:
    s = sampler(3, views=EvalViews(2, 3), stride=2, seed=1)
    specs = [s.spec(e, i, (240, 320)) for e in (0, 5) for i in range(6)]
    first, later = specs[:6], specs[6:]
    for a, b in zip(first, later, strict=True):  # the epoch (and the seed) do not move a test view
        assert (a.frame_indices.tolist(), a.crop, a.flip) == (b.frame_indices.tolist(), b.crop, b.flip)
    # sample id = video * 6 + clip * 3 + crop: clip 0 starts at the first frame, clip 1 ends at the last
    assert first[0].frame_indices[0] == 0 and first[3].frame_indices[-1] == 59
    assert [sp.crop for sp in first[:3]] == [(0, 0, 240, 240), (40, 0, 240, 240), (80, 0, 240, 240)]
    assert not any(sp.flip for sp in specs) and all(sp.label == 0 for sp in first)


def test_view_helpers() -> None:
    assert view_crop((240, 320), 0, 1) == (40, 0, 240, 240)  # one crop: the centre square
    assert view_crop((320, 240), 2, 3) == (0, 80, 240, 240)  # portrait: along the height
    assert view_indices(60, 8, 2, 0, 1, "stride", "loop").tolist() == list(range(22, 38, 2))  # centred
    assert view_indices(10, 8, 2, 0, 1, "stride", "clamp").tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
    # segments: 2 test clips at offsets 1/2 and 0 of each segment (VideoMAE's SSv2 test)
    assert view_indices(16, 4, 2, 0, 2, "segment", "loop").tolist() == [2, 6, 10, 14]
    assert view_indices(16, 4, 2, 1, 2, "segment", "loop").tolist() == [0, 4, 8, 12]


def test_segment_sampling_spans_the_video() -> None:
    rng = np.random.default_rng(0)
    for frames in (3, 16, 100, 1000):
        idx = segment_indices(frames, 16, rng.random(16))
        assert len(idx) == 16 and idx.min() >= 0 and idx.max() < frames and (np.diff(idx) >= 0).all()
        if frames >= 16:
            assert idx[0] < frames / 16 and idx[-1] >= frames * 15 / 16 - 1  # one frame per equal segment
    s = sampler(4, temporal="segment", seed=3)
    a, b = s.spec(0, 1, (240, 320)), s.spec(0, 1, (240, 320))
    assert a.frame_indices.tolist() == b.frame_indices.tolist()  # deterministic per (seed, epoch, video)
    assert a.frame_indices.tolist() != s.spec(1, 1, (240, 320)).frame_indices.tolist()


def test_resized_crop_follows_area_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y, w, h = resized_crop((240, 320), (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert min(x, y) >= 0 and x + w <= 320 and y + h <= 240
        assert 0.07 * 240 * 320 <= w * h <= 240 * 320
    # impossible area: the fallback is the largest centred box with a ratio inside the range
    assert resized_crop((100, 1000), (0.99, 1.0), (0.5, 2.0), rng) == (400, 0, 200, 100)
    s = sampler(6, crop="resized", crop_area=(0.3, 1.0), flip=True, seed=2)
    specs = list(s)
    assert len({sp.crop for sp in specs}) == len(specs) and any(sp.flip for sp in specs)
    assert len({sp.aug_seed for sp in specs}) == len(specs)  # one RandAugment seed per sample


def test_pretraining_views_are_unchanged_by_the_new_options() -> None:
    # The default training view draws exactly what it drew before fine-tuning's options existed.
    s = sampler(4, seed=5)
    spec = s.spec(2, 3, (240, 320))
    rng = np.random.default_rng([5, 2, 3, 0])
    from dali_pipes.sampler import clip_indices, multiscale_crop

    idx = clip_indices(60, 8, 2, rng, "loop")
    pair_u, pos_u, _ = rng.random(3)
    assert spec.frame_indices.tolist() == idx.tolist()
    assert spec.crop == multiscale_crop((240, 320), 112, (1.0, 0.875, 0.75, 0.66), pair_u, pos_u)


def test_bad_view_options_are_named() -> None:
    with pytest.raises(ValueError, match="temporal='tsn'"):
        sampler(4, temporal="tsn")
    with pytest.raises(ValueError, match="crop='random'"):
        sampler(4, crop="random")
    with pytest.raises(ValueError, match="3 videos to evaluate over 4 ranks"):
        sampler(3, views=EvalViews(), world_size=4, rank=0)
