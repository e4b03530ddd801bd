"""Motion cache: one small record per video with its per-frame motion energy, read back every epoch.

Layout of a cache folder (written by `build_cache`, i.e. `mgm-prepare motion --list FILE --out DIR`):

    DIR/meta.json            {"version", "cell", "camera", "root": the list's folder at build time}
    DIR/<key>.npz            energy float16 (frames, rows, cols) and meta int64 (version, cell, H, W,
                             has_vectors, num_frames, first_frame), zlib-compressed
    DIR/failures.csv         path,reason of the videos that could not be read (rewritten by every run)

The key of a video is its path relative to the folder of the list it came from (the list's own `path` column),
so a cache stays valid when the dataset folder moves; a video outside that folder gets `_abs/<absolute path>`.
Records are written atomically (temporary file, fsync, rename): an interrupted run leaves no half record, and
rerunning it skips the videos already done.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mgm.atomic import atomic_write
from mgm.motion import MotionField, MotionReadError, read_motion

VERSION = 2


def cache_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """Key of a video: its path relative to `root` (the list's folder), POSIX-style; `_abs/...` when outside."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return "_abs/" + p.resolve().as_posix().lstrip("/")


def _record_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / (key + ".npz")


def save_record(path: str | os.PathLike, field: MotionField) -> None:
    """Write one MotionField as a compressed .npz, atomically (tmp + fsync + os.replace)."""
    path = Path(path)
    meta = [VERSION, field.cell, *field.frame_size, field.has_vectors, field.num_frames, field.first_frame]
    # a per-process hidden temporary name: two runs filling one cache never write into the same file
    with atomic_write(path, "wb", tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp")) as f:
        # two members only: every extra one costs a zip lookup per read
        np.savez_compressed(
            f,
            energy=field.energy.astype(np.float16),  # cells hold pixels/frame: float16 keeps ~3 significant digits
            meta=np.asarray(meta, np.int64),  # version, cell, H, W, has_vectors, num_frames, first_frame
        )


def load_record(path: str | os.PathLike) -> MotionField:
    """Read a record written by `save_record` back into a MotionField (energy as float32)."""
    with np.load(path) as z:
        energy, meta = z["energy"], z["meta"]
    version, cell, h, w, has_vectors, num_frames, first_frame = (int(v) for v in meta)
    if version != VERSION:
        raise ValueError(f"{path}: motion record version {version}, this code reads {VERSION}; rebuild the cache")
    return MotionField(energy.astype(np.float32), cell, (h, w), bool(has_vectors), num_frames, first_frame)


class MotionCache:
    """Read side of a cache folder: `MotionCache(cache_dir).get(path) -> MotionField`.

    `path` may be a key (relative, as in the list) or an absolute path; absolute paths are made relative to
    `root`, by default the list folder recorded at build time (pass `root` if the dataset moved).
    """

    def __init__(self, cache_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
        self.dir = Path(cache_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not a motion cache (build one with `mgm-prepare motion`)")
        self.meta = json.loads(meta_path.read_text())
        self.root = Path(root) if root is not None else Path(self.meta["root"])

    def record_path(self, path: str | os.PathLike) -> Path:
        """Where the record of `path` lives (whether or not it exists)."""
        return _record_path(self.dir, cache_key(path, self.root))

    def __contains__(self, path: str | os.PathLike) -> bool:
        return self.record_path(path).is_file()

    def get(self, path: str | os.PathLike) -> MotionField:
        """MotionField of a whole video; FileNotFoundError naming the video and the record when it is missing."""
        rec = self.record_path(path)
        if not rec.is_file():
            raise FileNotFoundError(f"{path}: no motion cache record {rec} (rerun `mgm-prepare motion` for its list)")
        return load_record(rec)


def _cache_one(job: tuple[str, str, int, bool, int]) -> tuple[str, str, int]:
    """Worker: read one video (its list's frame count `num_frames` trusted, checked at the end) and write its
    record. Returns (status, reason, frames); status done|failed."""
    src, dst, cell, camera, num_frames = job
    try:
        field = read_motion(src, cell=cell, camera=camera, num_frames=num_frames)
    except MotionReadError as e:
        return "failed", f"read error: {e.reason}", e.frames_read
    except Exception as e:  # anything else a broken file can raise: counted, never fatal
        return "failed", f"{type(e).__name__}: {e}", 0
    save_record(dst, field)
    return ("done" if field.has_vectors else "done_no_vectors"), "", field.num_frames


def _check_meta(out: Path, root: Path, cell: int, camera: bool) -> None:
    meta = {"version": VERSION, "cell": cell, "camera": camera, "root": str(root)}
    path = out / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for k in ("version", "cell", "camera"):
            if old.get(k) != meta[k]:
                raise ValueError(
                    f"{path}: existing cache has {k}={old.get(k)!r}, asked for {meta[k]!r}; use a new --out"
                )
    path.write_text(json.dumps(meta, indent=1))


def build_cache(
    list_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 1,
    cell: int = 8,
    progress: bool = True,
    camera: bool = True,
) -> dict[str, Any]:
    """Write the motion record of every video of a file list into `out_dir`; skip videos already done.

    Returns a summary: total, done, skipped (record already there), failed, no_vectors (done, but the codec
    carries no motion vectors), frames (read in this run), by_reason {reason: count}, failures (CSV path).
    """
    from mgm.prep.datasets import parallel_map
    from mgm.prep.filelist import read_list

    entries = read_list(list_csv)
    root = Path(list_csv).resolve().parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_meta(out, root, cell, camera)

    jobs, skipped = [], 0
    for e in entries:
        dst = _record_path(out, cache_key(e.path, root))
        if dst.is_file():
            skipped += 1
        else:
            jobs.append((e.path, str(dst), cell, camera, e.num_frames))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="motion cache", unit="video", dynamic_ncols=True)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    frames = 0
    on_crash = lambda job: ("failed", "worker crashed (decoder fault)", 0)
    for i, (status, reason, n) in parallel_map(_cache_one, jobs, workers, on_crash):
        counts[status] += 1
        if status == "failed":
            short = reason.split(":")[0]
            reasons[short] += 1
            failures.append((jobs[i][0], reason))
        else:
            frames += n
        if bar is not None:
            bar.update()
            bar.set_postfix(failed=counts["failed"], refresh=False)
    if bar is not None:
        bar.close()

    fail_path = out / "failures.csv"
    with open(fail_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(sorted(failures))
    return {
        "total": len(entries),
        "done": counts["done"] + counts["done_no_vectors"],
        "skipped": skipped,
        "failed": counts["failed"],
        "no_vectors": counts["done_no_vectors"],
        "frames": frames,
        "by_reason": dict(reasons),
        "failures": str(fail_path),
    }
