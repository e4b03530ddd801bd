"""Motion vectors -> motion-energy grids: the numpy half of `mgm.motion.read_motion` (the other half is FFmpeg).

`field_energy` turns one read's AVMotionVector records into float32 (frames, rows, cols) energy: each vector's
velocity (pixels per frame, from its reference distance), minus the frame's dominant (camera) motion, spread over
its block onto cells of `cell` pixels (see `mgm.motion` for the conventions). It runs once per file or span read
over hundreds of thousands of vectors, so it avoids sorts and per-piece index arithmetic where the structure of
FFmpeg's export allows (each shortcut is checked on the data and falls back to the general computation):
- vectors are processed a few dozen frames (~32k vectors) at a time: every step is per frame, and arrays that fit
  the CPU caches make the whole ~1.5x faster than one pass over a file's worth;
- a bi-predicted block is exported once per direction, both records inside its macroblock's run of records
  (FFmpeg writes a frame's macroblocks in raster order), so duplicates are found by comparing neighbours within
  the longest run, not by sorting every record;
- the camera's weighted median is (0, 0) in every frame whose still blocks (and zero components) hold the middle
  of the weight; all weights are whole or half blocks, so sums are exact and this is decided from per-frame sums:
  only the other frames are sorted;
- blocks of whole cells inside the frame are rasterized shape by shape (a handful of shapes: one index per cell,
  no per-piece arithmetic); the others are split into `_UNIT`-pixel squares. Power-of-2 cells sum weights in
  cells (exact scaling), so only partial border cells are divided by their area.
Results equal the straightforward computation bit for bit (tests/test_motion_field.py; tests/test_real_clips.py on
real clips): each cell of a frame receives at most two terms at the default cell size (one per prediction
direction), so adding them in another order gives the same sums.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mgm.vectors import MV_DTYPE, VectorRecords

_UNIT = 4  # rasterization step: the smallest H.264 block side
_CHUNK = 32768  # vectors processed together (see field_energy)


@functools.lru_cache(maxsize=16)
def _cell_area(cell: int, h: int, w: int) -> np.ndarray:
    """(rows, cols) pixels of each cell inside the frame (border cells can be partial)."""
    ys = np.minimum(np.arange(-(-h // cell)) * cell + cell, h) - np.arange(-(-h // cell)) * cell
    xs = np.minimum(np.arange(-(-w // cell)) * cell + cell, w) - np.arange(-(-w // cell)) * cell
    return (ys[:, None] * xs[None, :]).astype(np.float64)


def _pieces(fid, x0, y0, bw_px, bh_px, cell, h, w, rows, cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split blocks into whole cells (aligned blocks) or `unit`-pixel squares, pieces of a block in row-major
    order: (flat cell index, owner = index of the block, pixels of the piece) per piece inside the frame."""
    unit = math.gcd(cell, _UNIT)
    if cell & (cell - 1) == 0:  # OR of the coordinates: powers of 2 only
        on_grid = ((x0 | y0 | bw_px | bh_px) & (cell - 1)) == 0
    else:
        on_grid = (x0 % cell == 0) & (y0 % cell == 0) & (bw_px % cell == 0) & (bh_px % cell == 0)
    aligned = on_grid & (x0 >= 0) & (y0 >= 0) & (x0 + bw_px <= w) & (y0 + bh_px <= h)
    u = np.where(aligned, cell, unit)
    bw, bh = np.maximum(bw_px // u, 1), np.maximum(bh_px // u, 1)
    n = bw * bh
    owner = np.repeat(np.arange(len(n)), n)  # one entry per piece of every block
    k = np.arange(owner.size) - np.repeat(np.cumsum(n) - n, n)
    uo = u[owner]
    px = (x0 // u)[owner] * uo + (k % bw[owner]) * uo  # piece's top-left corner in pixels
    py = (y0 // u)[owner] * uo + (k // bw[owner]) * uo
    inside = (px >= 0) & (py >= 0) & (px < w) & (py < h)
    flat = (fid[owner] * rows + py // cell) * cols + px // cell
    return flat[inside], owner[inside], (uo * uo)[inside]


def _rasterize(
    fid: np.ndarray,
    dst_x: np.ndarray,
    dst_y: np.ndarray,
    bw_px: np.ndarray,
    bh_px: np.ndarray,
    mag: np.ndarray,
    n_frames: int,
    cell: int,
    size: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sum each vector's magnitude over its block onto (n_frames, rows, cols) float32 cells, as a per-pixel mean.

    All (V,): fid = output row of each vector; dst_x, dst_y = block centre (FFmpeg's convention); bw_px, bh_px =
    block size in pixels; mag = magnitude (zeros add nothing). size = (H, W) of the frame. out: a float32 array
    of that shape to write the cells into (returned), else a new one.
    """
    h, w = size
    rows, cols = -(-h // cell), -(-w // cell)
    keep = mag > 0  # zero vectors add nothing: most of a still background
    if not keep.any():
        return np.zeros((n_frames, rows, cols), np.float32) if out is None else out
    if not keep.all():
        k = np.flatnonzero(keep)
        fid, dst_x, dst_y, bw_px, bh_px, mag = fid[k], dst_x[k], dst_y[k], bw_px[k], bh_px[k], mag[k]
    fid, mag = fid.astype(np.int64, copy=False), mag.astype(np.float64)
    bw_px, bh_px = bw_px.astype(np.int32), bh_px.astype(np.int32)
    x0, y0 = dst_x - (bw_px >> 1), dst_y - (bh_px >> 1)  # int32 top-left corners
    idx, wts = [], []
    pow2 = cell & (cell - 1) == 0
    if pow2:
        # Blocks of whole cells inside the frame (nearly all): one index per cell, laid out slot by slot so every
        # numpy loop runs over all blocks at once. The others are split into `unit`-pixel squares (`_pieces`).
        s = cell.bit_length() - 1
        whole = (((x0 | y0 | bw_px | bh_px) & (cell - 1)) == 0) & (x0 >= 0) & (y0 >= 0)
        whole &= (x0 <= w - bw_px) & (y0 <= h - bh_px) & (bw_px <= 16 * cell) & (bh_px <= 16 * cell)
        a = np.flatnonzero(whole)
        a = a if len(a) < len(whole) else slice(None)
        base = (fid[a] * rows + (y0[a] >> s)) * cols + (x0[a] >> s)
        wide, tall, m = bw_px[a] >> s, bh_px[a] >> s, mag[a]  # cells across / down
        if len(base) and max(wide.max(), tall.max()) <= 2:  # 1 or 2 cells a side: four slots, unused ones weigh 0
            idx.append((base + np.array([[0], [1], [cols], [cols + 1]])).reshape(-1))
            slot = np.empty((4, len(m)))
            slot[0] = m
            np.multiply(m, wide > 1, out=slot[1])
            np.multiply(m, tall > 1, out=slot[2])
            np.multiply(slot[1], tall > 1, out=slot[3])
            wts.append(slot.reshape(-1))  # (adding 0.0 leaves every sum as it is)
        else:
            shape = (tall - 1) * 16 + wide - 1  # (cells down - 1, cells across - 1), 4 bits each
            codes = np.flatnonzero(np.bincount(shape))
            for code in codes:  # a handful of block shapes
                k = np.flatnonzero(shape == code) if len(codes) > 1 else slice(None)
                offsets = (np.arange(code // 16 + 1)[:, None] * cols + np.arange(code % 16 + 1)).reshape(-1, 1)
                idx.append((base[k] + offsets).reshape(-1))
                wts.append(np.broadcast_to(m[k], (len(offsets), len(m[k]))).reshape(-1))
        r = np.flatnonzero(~whole)
    else:
        r = np.arange(len(mag))
    if len(r):
        flat, owner, pixels = _pieces(fid[r], x0[r], y0[r], bw_px[r], bh_px[r], cell, h, w, rows, cols)
        idx.append(flat)
        # power-of-2 cells: weights in cells (pixels / cell area, exact), so only partial border cells need dividing
        wts.append(mag[r[owner]] * (pixels / (cell * cell) if pow2 else pixels))
    flat, weights = (idx[0], wts[0]) if len(idx) == 1 else (np.concatenate(idx), np.concatenate(wts))
    # (the unused slots of blocks on the last row point past the end: cut off)
    sums = np.bincount(flat, weights=weights, minlength=n_frames * rows * cols + cols + 1)
    sums = sums[: n_frames * rows * cols].reshape(n_frames, rows, cols)
    area = _cell_area(cell, h, w)
    if not pow2:
        sums = sums / area
    else:
        rr, cc = np.nonzero(area < cell * cell)  # partial cells on the bottom / right border
        sums[:, rr, cc] = sums[:, rr, cc] * (cell * cell) / area[rr, cc]  # = pixel sums / area, as for the others
    if out is None:
        return sums.astype(np.float32)
    out[...] = sums  # rounded to float32 as astype does
    return out


def _fill_gaps(energy: np.ndarray, has: np.ndarray) -> None:
    """Frames without vectors (key frames) copy the next frame with vectors, else the previous one (in place).

    Next-first keeps a span read starting at a key frame identical to the full read.
    """
    if has.all() or not has.any():
        return
    n = len(has)
    idx = np.where(has, np.arange(n), n)
    nxt = np.minimum.accumulate(idx[::-1])[::-1]
    prv = np.maximum.accumulate(np.where(has, np.arange(n), -1))
    src = np.where(nxt < n, nxt, prv)
    gaps = ~has
    energy[gaps] = energy[src[gaps]]


def _sorted_median(group: np.ndarray, value: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """(groups,) weighted median of `value` within each group id (0 .. groups-1); 0 for empty groups.

    The element where the group's cumulative weight, in (1/64-pixel value, position) order, reaches half its total.
    """
    q = np.round(value * 64).astype(np.int64)  # 1/64 px is far finer than quarter-pel vectors / distances
    order = np.argsort((group.astype(np.int64) << 32) + q + 2**31, kind="stable")
    cum = np.cumsum(weight[order])
    total = np.bincount(group, weights=weight, minlength=groups)
    before = np.cumsum(total) - total
    pos = np.searchsorted(cum, before + total / 2)
    out = value[order][np.minimum(pos, len(order) - 1)]
    return np.where(total > 0, out, 0.0)


def _camera_motion(
    group: np.ndarray, vx: np.ndarray, vy: np.ndarray, weight: np.ndarray, still: np.ndarray, exact: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame (cam_x, cam_y), each (n,): the weighted median (`_sorted_median`) of the moving vectors' (vx, vy)
    (group = their frame 0 .. n-1, weight = their area) and one (0, 0) vote per frame weighing `still` (n,),
    placed after all vectors.

    exact: all weights are sums of binary fractions of pixels (whole or half blocks), so every partial sum is
    exact and the crossing of half a frame's weight can be placed from two sums, below 0 and at 0: a frame whose
    crossing lies among values that round to 0 has median 0 (when those are exactly 0, checked). Only the other
    frames are sorted; without camera motion that is none. Frames whose still blocks outweigh the moving ones
    (most, with a still camera) are settled first: None when that is all of them.
    """
    n = len(still)
    moving = np.bincount(group, weights=weight, minlength=n)
    if exact:
        quiet = (still > moving) | (moving == 0)  # the (0, 0) vote holds the middle: median (0, 0)
        if quiet.all():
            return None
        if quiet.any():  # the others alone, renumbered (vectors keep their order within a frame)
            busy = np.flatnonzero(~quiet)
            pick = np.flatnonzero(~quiet[group])
            renumber = np.cumsum(~quiet) - 1
            part = _camera_motion(renumber[group[pick]], vx[pick], vy[pick], weight[pick], still[busy], exact)
            cam_x, cam_y = np.zeros(n), np.zeros(n)
            if part is not None:
                cam_x[busy], cam_y[busy] = part
            return cam_x, cam_y
    total = moving + still
    out = []
    for v in (vx, vy):
        if not exact:
            out.append(_sorted_median(np.concatenate([group, np.arange(n)]), np.concatenate([v, np.zeros(n)]),
                                      np.concatenate([weight, still]), n))  # fmt: skip
            continue
        q = np.round(v * 64)
        below = np.bincount(group, weights=np.where(q < 0, weight, 0), minlength=n)
        at = np.bincount(group, weights=np.where(q == 0, weight, 0), minlength=n) + still
        sort = (total > 0) & ~((below < total / 2) & (below + at >= total / 2))
        tiny = (q == 0) & (v != 0)  # rounds to 0 but is not 0 (a vector over a long reference distance)
        sort[group[tiny]] = True
        med = np.zeros(n)
        ids = np.flatnonzero(sort)
        if len(ids):
            pick = np.flatnonzero(sort[group])
            g = np.concatenate([(np.cumsum(sort) - 1)[group[pick]], np.arange(len(ids))])  # sorted frames renumbered
            med[ids] = _sorted_median(g, np.concatenate([v[pick], np.zeros(len(ids))]),
                                      np.concatenate([weight[pick], still[ids]]), len(ids))  # fmt: skip
        out.append(med)
    return out[0], out[1]


def _block_counts(rec: VectorRecords) -> np.ndarray:
    """(V,) int64 records of each record's block, (frame, dst_x, dst_y, w, h): 2 for a bi-predicted block, which
    is exported once per direction.

    FFmpeg exports a frame's macroblocks in raster order, all records of one macroblock together, so equal blocks
    lie within one macroblock's run of records: each record is compared with the next one (a bi-predicted 16x16
    block) and, inside runs of more than two records (partitioned macroblocks), with those up to the longest run's
    length away; no sort. Records in another order (checked) are counted by sorting.
    """
    v = len(rec)
    if v == 0:
        return np.ones(0, np.int64)
    seg = np.repeat(np.arange(len(rec.counts)), rec.counts)  # which frame's record list (frames are distinct)
    dx, dy = rec.dst_x.astype(np.int64), rec.dst_y.astype(np.int64)
    mb = (seg << 32) | ((dy >> 4) + 2**15 << 16) | ((dx >> 4) + 2**15)  # the macroblock holding the block centre
    step = np.diff(mb)
    key = (rec.wh.astype(np.int64) << 32) | (dx + 2**15 << 16) | (dy + 2**15)
    if (step < 0).any() or seg[-1] >= 2**15:  # another order (or over 2**15 frames at once): count by sorting
        _, inv, counts = np.unique(np.stack([seg, key], 1), axis=0, return_inverse=True, return_counts=True)
        return counts[inv.reshape(-1)]
    runs = np.diff(np.flatnonzero(step) + 1, prepend=0, append=v)  # records of each macroblock
    key |= seg << 48
    counts = np.ones(v, np.int64)
    same = key[1:] == key[:-1]  # neighbours: a 16x16 bi-predicted block, the most common pair
    counts[1:] += same
    counts[:-1] += same
    if len(runs) and runs.max() > 2:  # farther apart only inside longer runs (partitioned macroblocks)
        inside = np.flatnonzero(np.repeat(runs > 2, runs))
        k, c = key[inside], np.zeros(len(inside), np.int64)
        for d in range(2, int(runs.max())):
            same = k[d:] == k[:-d]  # equal keys are in one run: pairs across runs never match
            c[d:] += same
            c[:-d] += same
        counts[inside] += c
    return counts


def _velocities(rec: VectorRecords, sel: np.ndarray, f: np.ndarray, past: np.ndarray, fut: np.ndarray) -> tuple:
    """(vx, vy) float64 pixels per frame of vectors `sel` (relative frames `f`); past / fut: per-frame distance (in
    frames) to the reference before / after. Vectors into the future point the other way."""
    src = rec.source[sel] > 0
    dist = np.maximum(np.where(src, fut[f], past[f]), 1)
    step = np.where(src, -1.0, 1.0) / (dist * np.maximum(rec.motion_scale[sel], 1))
    return rec.motion_x[sel] * step, rec.motion_y[sel] * step


def field_energy(
    records: list[np.ndarray],
    rec_frame: list[int],
    start: int,
    n: int,
    distances: tuple[np.ndarray, np.ndarray],
    has_b: bool,
    camera: bool,
    cell: int,
    size: tuple[int, int],
) -> np.ndarray:
    """float32 (n, rows, cols) motion energy of frames start .. start + n - 1 from their vector records.

    records: raw AVMotionVector bytes of each frame with vectors (`mgm.vectors.motion_vectors`), rec_frame: the
    absolute frame of each (distinct frames). distances: (past, fut), (n,) int64 frames from each frame to the
    previous / next anchor (I or P frame), 1 where there is none. has_b: the stream has B-frames (bi-predicted
    blocks come twice). camera: subtract each frame's dominant (area-weighted median) motion, so a camera pan does
    not light up the whole frame. Frames are processed a few dozen at a time (see the module docstring).
    """
    rows, cols = -(-size[0] // cell), -(-size[1] // cell)
    energy = np.zeros((n, rows, cols), np.float32)
    past, fut = distances
    if len(set(rec_frame)) < len(rec_frame):  # a frame listed twice (not expected): one list per frame
        merged: dict[int, list[np.ndarray]] = {}
        for r, f in zip(records, rec_frame, strict=True):
            merged.setdefault(f, []).append(r)
        records, rec_frame = [np.concatenate(v) for v in merged.values()], list(merged)
    i = done = 0  # frames below `done` hold an earlier chunk's energy
    while i < len(records):
        j, count = i, 0
        while j < len(records) and (count < _CHUNK or j == i):
            count += len(records[j]) // MV_DTYPE.itemsize
            j += 1
        rec = VectorRecords(records[i:j], rec_frame[i:j])
        lo, hi = int(rec.frame.min()) - start, int(rec.frame.max()) + 1 - start
        args = (rec, lo + start, hi - lo, (past[lo:hi], fut[lo:hi]), has_b, camera, cell, size)
        if lo >= done:  # frames in order (the rule): written in place
            _chunk_energy(*args, out=energy[lo:hi])
        else:  # frames listed out of order: a frame's records are in one chunk, the others give it 0
            energy[lo:hi] += _chunk_energy(*args)
        done, i = max(done, hi), j
    return energy


def _chunk_energy(
    rec: VectorRecords,
    start: int,
    n: int,
    distances: tuple[np.ndarray, np.ndarray],
    has_b: bool,
    camera: bool,
    cell: int,
    size: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """`field_energy` of the frames of `rec` (start .. start + n - 1), written into `out` when given."""
    fid = np.repeat(rec.frame - start, rec.counts)  # (V,) relative frame of every record
    counts = _block_counts(rec) if has_b else None
    share_all = 1.0 / counts if counts is not None else None
    sel = np.flatnonzero(rec.motion_xy)  # vectors that move; the rest are counted per frame (their area)
    f = fid[sel]
    vx, vy = _velocities(rec, sel, f, *distances)
    share = share_all[sel] if share_all is not None else 1.0
    if not camera:
        mag = (np.hypot(vx, vy) * share).astype(np.float32)
        return _rasterize(f, rec.dst_x[sel], rec.dst_y[sel], rec.w[sel], rec.h[sel], mag, n, cell, size, out)
    # the frame's dominant (area-weighted median) motion is the camera's: keep what moves on top of it
    area = rec.area[sel] * share  # float64
    if share_all is not None:
        still_area = np.bincount(fid, weights=rec.area * share_all, minlength=n)
    else:  # whole-pixel areas: per-frame sums are exact, whichever way they are added up
        still_area = np.zeros(n)
        still_area[rec.frame - start] = np.add.reduceat(rec.area, rec.offsets)
    still_area = np.maximum(still_area - np.bincount(f, weights=area, minlength=n), 0)
    exact = counts is None or bool(((counts & (counts - 1)) == 0).all())  # 1 / count exact for powers of 2
    cams = _camera_motion(f, vx, vy, area, still_area, exact)
    if cams is None:  # a still camera in every frame
        mag, cam = np.hypot(vx, vy) * share, None
    else:
        cam_x, cam_y = cams
        mag = np.hypot(vx - cam_x[f], vy - cam_y[f]) * share
        cam = np.hypot(cam_x, cam_y)
    if cam is not None and cam.any():  # with the camera moving, still blocks move against it
        moving_frames = np.flatnonzero(cam[rec.frame - start] > 0)  # indices into the per-frame record lists
        first, count = rec.offsets[moving_frames], rec.counts[moving_frames]
        idx = np.repeat(first - np.cumsum(count) + count, count) + np.arange(count.sum())
        extra = idx[rec.motion_xy[idx] == 0]
        extra_mag = cam[fid[extra]] * (share_all[extra] if share_all is not None else 1.0)
        sel, mag, f = np.concatenate([sel, extra]), np.concatenate([mag, extra_mag]), np.concatenate([f, fid[extra]])
    mag = mag.astype(np.float32)
    return _rasterize(f, rec.dst_x[sel], rec.dst_y[sel], rec.w[sel], rec.h[sel], mag, n, cell, size, out)
