"""mgm.masking: fixed counts, determinism, and MGM behaviour on synthetic clips with ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mgm.masking import GENERATORS, build_masking, motion_coverage, temporal_iou
from mgm.motion import read_motion

GRID = (8, 14, 14)
CROP = (40, 0, 240, 240)  # a centred square crop of the 320x240 clips
STARTS = (0, 7, 13, 28)  # clip starts: 16 frames at stride 2 span 32 source frames


@pytest.fixture(scope="session")
def clips(synth_clips: dict[str, Path]) -> dict[str, tuple[object, dict]]:
    """kind -> (MotionField, ground truth)."""
    return {k: (read_motion(str(p)), json.loads(p.with_suffix(".json").read_text())) for k, p in synth_clips.items()}


def object_tokens(boxes: list, frames: np.ndarray, crop: tuple, flip: bool, obj: int | None = None) -> np.ndarray:
    """(T2, Hp, Wp) bool: tokens with at least a quarter of their area on an object in a slot's sampled frames."""
    t2, hp, wp = GRID
    x0, y0, cw, ch = crop
    ty = y0 + np.arange(hp + 1) * ch / hp
    tx = x0 + np.arange(wp + 1) * cw / wp
    out = np.zeros(GRID, bool)
    for t in range(t2):
        for f in frames[2 * t : 2 * t + 2]:
            for i, (x, y, w, h) in enumerate(boxes[f]):
                if obj is not None and i != obj:
                    continue
                oy = np.clip(np.minimum(ty[1:], y + h) - np.maximum(ty[:-1], y), 0, None) / (ch / hp)
                ox = np.clip(np.minimum(tx[1:], x + w) - np.maximum(tx[:-1], x), 0, None) / (cw / wp)
                out[t] |= np.outer(oy, ox) >= 0.25
    return out[:, :, ::-1] if flip else out


def clip_cases(kind: str, clips: dict) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """(motion map, frame indices, truth) for several starts and both flips."""
    field, gt = clips[kind]
    cases = []
    for start in STARTS:
        idx = np.arange(start, start + 32, 2)
        for flip in (False, True):
            cases.append((field.clip_map(idx, CROP, flip, GRID), idx, flip, gt))
    return cases


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_fixed_count_and_determinism(name: str, ratio: float) -> None:
    gen = build_masking(name, ratio, GRID)
    k = round(ratio * 196) * 8
    assert gen.num_masked == k
    maps = np.random.default_rng(0).random((5, *GRID)).astype(np.float32) ** 6 * 20
    for m in [*maps, None, np.zeros(GRID, np.float32)]:
        a = gen(m, np.random.default_rng(42))
        b = gen(m, np.random.default_rng(42))
        assert a.dtype == bool and a.shape == (1568,) and a.sum() == k
        np.testing.assert_array_equal(a, b)
    if ratio > 0:
        c = gen(maps[0], np.random.default_rng(43))
        if name != "mgm":  # mgm is driven by motion: different seeds may agree
            assert not np.array_equal(gen(maps[0], np.random.default_rng(42)), c)


def test_tube_repeats_one_spatial_mask() -> None:
    m = build_masking("tube", 0.9, GRID)(None, np.random.default_rng(0)).reshape(8, 196)
    assert (m == m[0]).all() and m[0].sum() == 176
    assert temporal_iou(m.reshape(-1), GRID) == 1.0


@pytest.mark.parametrize("kind", ["single", "pan"])
def test_mgm_masks_the_moving_object(kind: str, clips: dict) -> None:
    """Ratio 0.75: >= 95% of the object's tokens masked in every slot; motion coverage >= 0.9, tube's ~ratio.

    `pan` behaves like `single` because the camera motion is subtracted in the reader.
    """
    mgm, tube = build_masking("mgm", 0.75, GRID), build_masking("tube", 0.75, GRID)
    tube_cov = []
    for m, idx, flip, gt in clip_cases(kind, clips):
        obj = object_tokens(gt["boxes"], idx, CROP, flip)
        mask = mgm(m, np.random.default_rng(1))
        per_slot = (mask.reshape(GRID) & obj).sum(axis=(1, 2)) / obj.sum(axis=(1, 2))
        assert per_slot.min() >= 0.95, per_slot
        assert motion_coverage(mask, m) >= 0.9
        tube_cov += [motion_coverage(tube(m, np.random.default_rng(s)), m) for s in range(10)]
    assert mgm.fallbacks == 0
    assert abs(np.mean(tube_cov) - 0.75) < 0.05


def test_mask_moves_with_the_object(clips: dict) -> None:
    """At a low ratio (10 tokens a slot, about the object's size) the mask sits on the object and follows it."""
    gen = build_masking("mgm", 0.05, GRID)
    for m, idx, flip, gt in clip_cases("single", clips):
        mask = gen(m, np.random.default_rng(0)).reshape(GRID)
        obj = object_tokens(gt["boxes"], idx, CROP, flip)
        rows, cols = np.indices(GRID[1:])
        mc = np.array([[rows[s].mean(), cols[s].mean()] for s in mask])  # (T2, 2) centre of masked tokens
        oc = np.array([[rows[s].mean(), cols[s].mean()] for s in obj])
        assert np.abs(mc - oc).max() < 1.5
        travel_mask, travel_obj = mc[-1] - mc[0], oc[-1] - oc[0]
        assert np.hypot(*travel_obj) > 2 and np.dot(travel_mask, travel_obj) > 0.6 * np.dot(travel_obj, travel_obj)
    assert temporal_iou(gen(m, np.random.default_rng(0)), GRID) < 1.0


def test_two_objects_are_both_masked(clips: dict) -> None:
    gen = build_masking("mgm", 0.75, GRID)
    low = build_masking("mgm", 0.25, GRID)
    for m, idx, flip, gt in clip_cases("two", clips):
        mask = gen(m, np.random.default_rng(0)).reshape(GRID)
        few = low(m, np.random.default_rng(0)).reshape(GRID)
        for obj_i in (0, 1):
            obj = object_tokens(gt["boxes"], idx, CROP, flip, obj=obj_i)
            per_slot = (mask & obj).sum(axis=(1, 2)) / obj.sum(axis=(1, 2))
            assert per_slot.min() >= 0.95
            # with room for little more than the two objects, neither is dropped for the other
            assert ((few & obj).sum(axis=(1, 2)) / obj.sum(axis=(1, 2))).min() >= 0.8


def test_static_clip_falls_back_to_tube_and_is_counted(clips: dict) -> None:
    gen = build_masking("mgm", 0.9, GRID)
    tube = build_masking("tube", 0.9, GRID)
    n = 0
    for m, _, _, _ in clip_cases("static", clips):
        np.testing.assert_array_equal(gen(m, np.random.default_rng(5)), tube(m, np.random.default_rng(5)))
        assert gen.last_fallback
        n += 1
    for bad in (None, np.full(GRID, np.nan, np.float32)):
        gen(bad, np.random.default_rng(0))
    assert gen.fallbacks == n + 2


def test_random_mix_keeps_the_top_tokens_and_draws_the_rest() -> None:
    rng = np.random.default_rng(0)
    m = np.zeros(GRID, np.float32)
    m[:, 2:6, 2:6] = 10.0  # 16 hot tokens per slot
    gen = build_masking("mgm", 0.5, GRID, random_mix=0.5, smooth=0, temporal=0.0)
    k = round(0.5 * 196)
    masks = np.stack([gen(m, rng).reshape(8, 196) for _ in range(20)])
    assert (masks.sum(axis=2) == k).all()
    hot = m.reshape(8, 196)[0] > 0
    assert masks[:, :, hot].all()  # the top K - R = 49 tokens include all 16 hot ones
    cold_rate = masks[:, :, ~hot].mean(axis=(0, 1))
    assert cold_rate.min() > 0.0 and cold_rate.max() < 1.0  # the rest varies from draw to draw


def test_pause_keeps_the_region_continuous() -> None:
    m = np.zeros(GRID, np.float32)
    m[:, 3:6, 3:6] = 5.0
    m[3:5] = 0.0  # the object stops for two slots
    mask = build_masking("mgm", 0.1, GRID)(m, np.random.default_rng(0)).reshape(GRID)
    assert mask[3:5, 3:6, 3:6].all()


def test_metrics() -> None:
    m = np.zeros(GRID, np.float32)
    m[0, 0, 0], m[1, 5, 5] = 3.0, 1.0
    mask = np.zeros(GRID, bool)
    mask[0, 0, 0] = True
    assert motion_coverage(mask.reshape(-1), m) == pytest.approx(0.75)
    assert np.isnan(motion_coverage(mask.reshape(-1), np.zeros(GRID)))
    alt = np.zeros(GRID, bool)
    alt[0::2, :7] = True
    alt[1::2, 7:] = True
    assert temporal_iou(alt.reshape(-1), GRID) == 0.0


def test_bad_names_and_knobs() -> None:
    with pytest.raises(ValueError, match="unknown mask generator"):
        build_masking("blocks", 0.9, GRID)
    with pytest.raises(ValueError, match="knobs"):
        build_masking("tube", 0.9, GRID, random_mix=0.1)
    with pytest.raises(ValueError, match="random_mix"):
        build_masking("mgm", 0.9, GRID, random_mix=1.5)
    with pytest.raises(ValueError, match="ratio"):
        build_masking("mgm", 1.0, GRID)


def test_smoothing_is_the_binomial_kernel_and_any_radius_builds() -> None:
    from mgm.masking import _smoothing_matrix

    for radius in range(7):  # the kernel of `radius` is 2*radius convolutions of [0.5, 0.5]
        kernel = np.array([1.0])
        for _ in range(2 * radius):
            kernel = np.convolve(kernel, [0.5, 0.5])
        expect = sum(np.eye(14, k=k) * w for k, w in zip(range(-radius, radius + 1), kernel, strict=True))
        assert np.array_equal(_smoothing_matrix(14, radius), expect.astype(np.float32)), radius
    # A huge radius used to stall while the kernel was built (a loop of 2 x radius convolutions); now it is a
    # nearly flat kernel, and the masks are still fixed-count.
    wide = _smoothing_matrix(14, 10**12)
    assert np.isfinite(wide).all() and wide.min() > 0.999 * wide.max()
    gen = build_masking("mgm", 0.9, GRID, smooth=10**12)
    m = np.random.default_rng(0).random(GRID).astype(np.float32) * 5
    assert gen(m, np.random.default_rng(0)).sum() == gen.num_masked


def test_visualize_writes_a_figure(synth_clips: dict[str, Path], tmp_path: Path) -> None:
    from mgm.visualize import render

    out = tmp_path / "masks.png"
    metrics = render(str(synth_clips["single"]), str(out), start=4, ratio=0.75)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    assert metrics["mgm_coverage"] >= 0.9 > metrics["tube_coverage"]
