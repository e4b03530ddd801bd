"""mgm.motion_field: the fast field math equals the straightforward computation bit for bit.

`reference_energy` is the plain version of `field_energy` (one pass over all vectors; np.unique for bi-predicted
duplicates; one stable sort for every frame's camera median; every block split into pieces one by one). The
records are laid out the way FFmpeg exports them (macroblocks in raster order, a bi-predicted macroblock's
records together, direction 0 then 1), and also in other orders, which must take the general paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mgm import motion_field
from mgm.motion_field import _camera_motion, _sorted_median, field_energy
from mgm.vectors import MV_DTYPE, VectorRecords


def reference_energy(records, rec_frame, start, n, distances, has_b, camera, cell, size) -> np.ndarray:
    rec = VectorRecords(records, rec_frame)
    mv, frame = rec.all()
    fid = frame - start
    share_all = np.ones(len(mv))
    if has_b:
        key = np.stack([fid, mv["dst_x"], mv["dst_y"], mv["w"], mv["h"]], 1)
        _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        share_all = 1.0 / counts[inv.reshape(-1)]
    past, fut = distances
    src = mv["source"] > 0
    dist = np.maximum(np.where(src, fut[fid], past[fid]), 1)
    step = np.where(src, -1.0, 1.0) / (dist * np.maximum(mv["motion_scale"], 1))
    vx, vy = mv["motion_x"] * step, mv["motion_y"] * step
    moving = (mv["motion_x"] != 0) | (mv["motion_y"] != 0)
    mag = np.hypot(vx, vy) * share_all
    if camera:
        area = mv["w"].astype(np.float64) * mv["h"] * share_all
        still = np.bincount(fid[~moving], weights=area[~moving], minlength=n)
        groups = np.concatenate([fid[moving], np.arange(n)])
        weights = np.concatenate([area[moving], still])
        cam_x = _sorted_median(groups, np.concatenate([vx[moving], np.zeros(n)]), weights, n)
        cam_y = _sorted_median(groups, np.concatenate([vy[moving], np.zeros(n)]), weights, n)
        mag = np.hypot(vx - cam_x[fid], vy - cam_y[fid]) * share_all
        # the order the reader has always added them in: moving vectors, then the still ones
        order = np.concatenate([np.flatnonzero(moving), np.flatnonzero(~moving)])
    else:
        order = np.flatnonzero(moving)
    return reference_rasterize(fid[order], mv[order], mag[order].astype(np.float32), n, cell, size)


def reference_rasterize(fid, mv, mag, n, cell, size) -> np.ndarray:
    """Every block split into pieces one by one: whole cells when it is aligned and inside, else squares of
    gcd(cell, 4) pixels; pieces added in the order of the vectors (the reader's rasterizer before this module)."""
    h, w = size
    rows, cols = -(-h // cell), -(-w // cell)
    keep = mag > 0
    bw_px, bh_px = mv["w"][keep].astype(np.int64), mv["h"][keep].astype(np.int64)
    x0, y0 = mv["dst_x"][keep] - bw_px // 2, mv["dst_y"][keep] - bh_px // 2
    mag, fid = mag[keep], fid[keep]
    on_grid = (x0 % cell == 0) & (y0 % cell == 0) & (bw_px % cell == 0) & (bh_px % cell == 0)
    aligned = on_grid & (x0 >= 0) & (y0 >= 0) & (x0 + bw_px <= w) & (y0 + bh_px <= h)
    u = np.where(aligned, cell, math.gcd(cell, 4))
    bw, bh = np.maximum(bw_px // u, 1), np.maximum(bh_px // u, 1)
    owner = np.repeat(np.arange(len(bw)), bw * bh)
    k = np.arange(owner.size) - np.repeat(np.cumsum(bw * bh) - bw * bh, bw * bh)
    uo = u[owner]
    px = (x0 // u)[owner] * uo + (k % bw[owner]) * uo
    py = (y0 // u)[owner] * uo + (k // bw[owner]) * uo
    inside = (px >= 0) & (py >= 0) & (px < w) & (py < h)
    flat = (fid[owner] * rows + py // cell) * cols + px // cell
    sums = np.bincount(flat[inside], weights=(mag[owner] * (uo * uo))[inside], minlength=n * rows * cols)
    return (sums.reshape(n, rows, cols) / motion_field._cell_area(cell, h, w)).astype(np.float32)


def ffmpeg_like_records(rng, n, size, b_every=3, pan=(), dup3=False, scale=4, p_zero=0.5):
    """Per-frame AVMotionVector records laid out as FFmpeg exports them, for frames 0..n-1 (every 8th without
    vectors, as a key frame): 16x16, 16x8, 8x16 and 8x8 partitions of 16x16 macroblocks in raster order, some
    intra (no record); B-frames (every `b_every`-th) bi-predict a third of their macroblocks (the partition
    exported for direction 0, then again for direction 1). Frames in `pan` move by a common vector."""
    h, w = size
    records, frames = [], []
    parts = {0: [(8, 8, 16, 16)], 1: [(8, 4, 16, 8), (8, 12, 16, 8)], 2: [(4, 8, 8, 16), (12, 8, 8, 16)],
             3: [(4, 4, 8, 8), (12, 4, 8, 8), (4, 12, 8, 8), (12, 12, 8, 8)]}  # fmt: skip
    for f in range(n):
        if f % 8 == 0:
            continue
        is_b = b_every and f % b_every == 1
        common = rng.integers(-40, 40, 2) if f in pan else None
        out = []
        for my in range(-(-h // 16)):
            for mx in range(-(-w // 16)):
                if rng.random() < 0.1:
                    continue  # intra macroblock: no vector
                layout = parts[int(rng.choice(4, p=[0.7, 0.1, 0.1, 0.1]))]
                dirs = [-1, 1] if is_b and rng.random() < 0.33 else [int(rng.choice([-1, 1])) if is_b else -1]
                if dup3 and is_b and len(dirs) == 2 and rng.random() < 0.05:
                    dirs = [-1, 1, 1]  # a block exported three times: 1/3 weights are not exact
                for src in dirs:
                    for cx, cy, bw, bh in layout:
                        r = np.zeros(1, MV_DTYPE)
                        r["source"], r["w"], r["h"] = src, bw, bh
                        r["dst_x"], r["dst_y"] = mx * 16 + cx, my * 16 + cy
                        if common is not None and rng.random() < 0.8:
                            r["motion_x"], r["motion_y"] = common
                        elif rng.random() > p_zero:
                            r["motion_x"], r["motion_y"] = rng.integers(-64, 64, 2)
                        r["motion_scale"] = scale
                        out.append(r)
        records.append(np.concatenate(out).view(np.uint8))
        frames.append(f)
    return records, frames


def distances(n: int, b_every: int) -> tuple[np.ndarray, np.ndarray]:
    past = np.where(np.arange(n) % b_every == 1, 1, 2) if b_every else np.ones(n, np.int64)
    return past.astype(np.int64), np.where(np.arange(n) % b_every == 1, 2, 1).astype(np.int64) if b_every else past


@pytest.mark.parametrize("cell", [4, 8, 16, 6, 12])
@pytest.mark.parametrize("camera", [True, False])
def test_field_energy_equals_the_reference(cell: int, camera: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(cell)
    size = (120, 168)  # not multiples of 16 or of most cells: partial macroblocks and border cells
    n = 20
    records, frames = ffmpeg_like_records(rng, n, size, pan={2, 3, 4, 5, 9, 10})
    args = (0, n, distances(n, 3), True, camera, cell, size)
    ref = reference_energy(records, frames, *args)
    assert ref.max() > 0.5 and (ref == 0).mean() > 0.05
    np.testing.assert_array_equal(field_energy(records, frames, *args), ref)
    monkeypatch.setattr(motion_field, "_CHUNK", 500)  # a few frames at a time: the same numbers
    np.testing.assert_array_equal(field_energy(records, frames, *args), ref)


@pytest.mark.parametrize("case", ["p_only", "shuffled", "unsorted_frames", "three_copies", "mpeg4_scale", "span"])
def test_general_paths_equal_the_reference(case: str) -> None:
    rng = np.random.default_rng(1)
    size, n, b_every = (96, 128), 24, 3
    records, frames = ffmpeg_like_records(
        rng, n, size, b_every=0 if case == "p_only" else 3, pan={3, 4, 11}, dup3=case == "three_copies",
        scale=2 if case == "mpeg4_scale" else 4,
    )  # fmt: skip
    if case == "p_only":
        b_every = 0
    if case == "shuffled":  # records of a frame in no particular order: duplicates are counted by sorting
        records = [r.reshape(-1, 40)[rng.permutation(len(r) // 40)].reshape(-1) for r in records]
    if case == "unsorted_frames":  # frames listed out of order (as some numbering quirks give)
        order = rng.permutation(len(frames))
        records, frames = [records[i] for i in order], [frames[i] for i in order]
    start = 5 if case == "span" else 0
    if start:
        keep = [i for i, f in enumerate(frames) if f >= start]
        records, frames = [records[i] for i in keep], [frames[i] for i in keep]
    dist = distances(n, b_every)
    args = (start, n - start, (dist[0][start:], dist[1][start:]), b_every > 0, True, 8, size)
    np.testing.assert_array_equal(field_energy(records, frames, *args), reference_energy(records, frames, *args))


def test_camera_median_shortcut_equals_sorting_every_frame() -> None:
    rng = np.random.default_rng(3)
    n, k = 50, 4000
    group = np.sort(rng.integers(0, n - 2, k))  # the last frames have no moving vector
    # quarter-pel vectors over reference distances 1..3, many exactly 0 in one component, ties, half areas
    pan = rng.choice([0, 0, 6, -9], (n, 2))[group] * (rng.random((k, 1)) < 0.7)  # frames panning, or not
    vx, vy = (rng.integers(-12, 12, (2, k)) * (rng.random((2, k)) < 0.6) + pan.T) / (4.0 * rng.integers(1, 4, k))
    weight = rng.choice([64.0, 128.0, 256.0, 32.0], k)
    still = rng.choice([0.0, 500.0, 20000.0], n)  # none, some, most of the frame still
    got = _camera_motion(group, vx, vy, weight, still, exact=True)
    g = np.concatenate([group, np.arange(n)])
    for v, out in zip((vx, vy), got, strict=True):
        ref = _sorted_median(g, np.concatenate([v, np.zeros(n)]), np.concatenate([weight, still]), n)
        np.testing.assert_array_equal(out, ref)
        assert (ref != 0).sum() > 5 and (ref == 0).sum() > 5  # both kinds of frame are exercised
    vx[:3] = 1e-3  # rounds to 0 at 1/64 px but is not 0: that frame is sorted
    ref_x = _sorted_median(g, np.concatenate([vx, np.zeros(n)]), np.concatenate([weight, still]), n)
    np.testing.assert_array_equal(_camera_motion(group, vx, vy, weight, still, exact=True)[0], ref_x)


def test_camera_median_at_exact_halves() -> None:
    # frame 0: the negative vector holds exactly half the weight -> it is the median; frame 1: below + at 0 hold
    # exactly half -> 0; frame 2: still only -> 0; frame 3: nothing -> 0; frame 4: a pan over most blocks
    group = np.array([0, 0, 1, 1, 1, 4, 4, 4])
    vx = np.array([-1.0, 0.5, -0.25, 0.0, 2.0, 1.25, 1.25, -3.0])
    weight = np.array([100.0, 50.0, 30.0, 70.0, 100.0, 256.0, 256.0, 64.0])
    still = np.array([50.0, 0.0, 300.0, 0.0, 128.0])
    cam_x, cam_y = _camera_motion(group, vx, np.zeros(8), weight, still, exact=True)
    np.testing.assert_array_equal(cam_x, [-1.0, 0.0, 0.0, 0.0, 1.25])
    assert not cam_y.any()
    ref = _sorted_median(np.concatenate([group, np.arange(5)]), np.concatenate([vx, np.zeros(5)]),
                         np.concatenate([weight, still]), 5)  # fmt: skip
    np.testing.assert_array_equal(cam_x, ref)


def test_half_still_frame_is_not_taken_for_a_still_camera() -> None:
    # one frame, two 16x16 blocks: one moving left, one still. The moving one holds exactly half the area, so it
    # is the weighted median (the camera's motion): it ends up still and the still block moves against it.
    r = np.zeros(2, MV_DTYPE)
    r["source"], r["w"], r["h"], r["motion_scale"] = -1, 16, 16, 4
    r["dst_x"], r["dst_y"] = [8, 24], 8
    r["motion_x"] = [-8, 0]
    args = (0, 1, (np.ones(1, np.int64), np.ones(1, np.int64)), False, True, 8, (16, 32))
    got = field_energy([r.view(np.uint8)], [0], *args)
    np.testing.assert_array_equal(got, reference_energy([r.view(np.uint8)], [0], *args))
    np.testing.assert_array_equal(got[0], [[0, 0, 2, 2], [0, 0, 2, 2]])
