"""ClipSampler: determinism, sharding, resume, VideoMAE clip sampling and multi-scale crop."""

from __future__ import annotations

import numpy as np
import pytest
from _entries import entries

from dali_pipes.sampler import ClipSampler, clip_indices, multiscale_crop


def make(n: int = 16, **kw) -> ClipSampler:
    kw.setdefault("frame_size", lambda i: (240, 320))
    return ClipSampler(entries(n), **kw)


def key(spec) -> tuple:
    return spec.video_index, tuple(spec.frame_indices.tolist()), spec.crop, spec.flip


def test_deterministic_for_seed_epoch_rank() -> None:
    a, b = make(seed=3, flip=True), make(seed=3, flip=True)
    assert [key(s) for s in a] == [key(s) for s in b]
    a.set_epoch(1)
    c = make(seed=4, flip=True)
    first = [key(s) for s in make(seed=3, flip=True)]
    assert [key(s) for s in a] != first  # a new epoch reshuffles and redraws
    assert [key(s) for s in c] != first  # so does a new seed


@pytest.mark.parametrize("n,world,policy", [(16, 2, "drop"), (17, 2, "drop"), (17, 3, "pad"), (40, 4, "drop")])
def test_ranks_disjoint_and_cover_the_epoch(n: int, world: int, policy: str) -> None:
    shards = [make(n, rank=r, world_size=world, shard_policy=policy).epoch_indices(5) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    flat = np.concatenate(shards)
    if policy == "drop":
        assert len(set(flat.tolist())) == len(flat)  # disjoint
        assert len(flat) == n - n % world  # only the stated remainder is dropped
    else:
        assert set(flat.tolist()) == set(range(n))  # padded: everything is seen
        assert len(flat) == -(-n // world) * world


def test_batch_multiple_and_too_small() -> None:
    s = make(10, batch_size=4)
    assert len(s) == 8 and len(s.epoch_indices(0)) == 8
    with pytest.raises(ValueError, match="no full batch"):
        make(3, batch_size=4)


def test_resume_mid_epoch_continues_with_what_was_left() -> None:
    a = make(20, seed=1, flip=True, rank=1, world_size=2, batch_size=2)
    a.set_epoch(2)
    it = iter(a)
    seen = [key(next(it)) for _ in range(4)]
    state = a.state_dict()
    rest = [key(s) for s in it]
    b = make(20, seed=1, flip=True, rank=1, world_size=2, batch_size=2)
    b.load_state_dict(state)
    b.set_epoch(2)  # the usual loop calls set_epoch again: it must not rewind a restored epoch
    assert [key(s) for s in b] == rest
    assert len(seen) + len(rest) == len(a)
    with pytest.raises(ValueError, match="seed"):
        make(20, seed=2, rank=1, world_size=2, batch_size=2).load_state_dict(state)


def test_clip_indices_videomae_stride() -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = clip_indices(60, 16, 2, rng, "loop")
        assert idx.dtype == np.int32 and len(idx) == 16
        assert np.all(np.diff(idx) == 2) and idx[0] >= 0 and idx[-1] <= 59
        starts.add(int(idx[0]))
    assert starts == set(range(0, 60 - 31 + 1))  # every start of the VideoMAE range occurs
    idx4 = clip_indices(64, 16, 4, rng, "clamp")
    assert np.all(np.diff(idx4) == 4) and idx4[-1] <= 63


def test_short_video_policies() -> None:
    rng = np.random.default_rng(0)
    loop = clip_indices(20, 16, 2, rng, "loop")
    assert loop.max() < 20 and np.all((np.diff(loop) == 2) | (np.diff(loop) < 0))  # wraps around
    clamp = clip_indices(20, 16, 2, rng, "clamp")
    assert clamp[0] == 0 and clamp.max() == 19 and np.all(clamp[10:] == 19)
    with pytest.raises(ValueError):
        clip_indices(20, 16, 2, rng, "pad")


def test_multiscale_crop_matches_videomae_choices() -> None:
    boxes = {multiscale_crop((240, 320), 224, (1.0, 0.875, 0.75, 0.66), u, v) for u in np.linspace(0, 0.999, 40)
             for v in np.linspace(0, 0.999, 60)}  # fmt: skip
    sizes = {(w, h) for _, _, w, h in boxes}
    # int(240 * s) = 240, 210, 180, 158; pairs whose scale index differs by at most one
    assert sizes == {(a, b) for a in (240, 210, 180, 158) for b in (240, 210, 180, 158)
                     if abs((240, 210, 180, 158).index(a) - (240, 210, 180, 158).index(b)) <= 1}  # fmt: skip
    w, h = 180, 210
    xs = {x for x, _, bw, bh in boxes if (bw, bh) == (w, h)}
    assert xs == {k * ((320 - w) // 4) for k in range(5)}  # the 4x4 step grid of fixed offsets
    assert multiscale_crop((240, 320), 224, (1.0,), 0.0, 0.0) == (0, 0, 240, 240)
    # a side within 3 px of the input size snaps to it (VideoMAE)
    assert multiscale_crop((226, 300), 224, (1.0,), 0.0, 0.0)[2:] == (224, 224)


def test_flip_and_label() -> None:
    specs = list(make(200, flip=True))
    share = np.mean([s.flip for s in specs])
    assert 0.35 < share < 0.65
    assert not any(s.flip for s in make(200, flip=False))
    assert all(s.label == s.video_index % 5 and s.path == f"v{s.video_index}.mp4" for s in specs)


def test_replacement_is_deterministic_and_elsewhere() -> None:
    s = make(50)
    r = [s.replacement(0, 7, k) for k in range(1, 6)]
    assert r == [s.replacement(0, 7, k) for k in range(1, 6)]
    assert 7 not in r and all(0 <= x < 50 for x in r)
