"""mgm.motion_cache: build (parallel, resumable, atomic), read back, equality with online reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import mgm.motion_cache as mc
from mgm.motion import read_span, span_of
from mgm.motion_cache import MotionCache, build_cache, cache_key
from mgm.prep.filelist import VideoEntry, read_list, write_list


@pytest.fixture()
def data(tmp_path: Path, synth_dir: Path) -> Path:
    """A copy of the synthetic list plus a VP9 twin and a corrupt file; returns the list CSV."""
    root = tmp_path / "data"
    shutil.copytree(synth_dir / "videos", root / "videos")
    entries = [
        VideoEntry(str(root / "videos" / Path(e.path).name), e.label, e.num_frames)
        for e in read_list(synth_dir / "train.csv")
    ]
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    entries.append(VideoEntry(str(root / "videos" / "broken.mp4"), 0, 60))
    entries.append(VideoEntry(str(root / "videos" / "clip_00000.webm"), 0, 60))
    return write_list(root / "train.csv", entries)


def test_build_then_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    s = build_cache(data, out, workers=2, cell=8, progress=False)
    assert (s["total"], s["done"], s["skipped"], s["failed"], s["no_vectors"]) == (6, 5, 0, 1, 1)
    assert s["frames"] == 5 * 60
    failures = Path(s["failures"]).read_text()
    assert "broken.mp4" in failures and "read error" in failures
    records = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz"))
    assert records == sorted([f"videos/clip_0000{i}.mp4.npz" for i in range(4)] + ["videos/clip_00000.webm.npz"])
    assert not list(out.rglob("*.tmp")) and max(p.stat().st_size for p in out.rglob("*.npz")) < 64_000
    again = build_cache(data, out, workers=0, cell=8, progress=False)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 5, 1)
    with pytest.raises(ValueError, match="cell"):
        build_cache(data, out, workers=0, cell=4, progress=False)


def test_interrupted_write_leaves_no_record(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"

    def killed(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(mc.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        build_cache(data, out, workers=0, cell=8, progress=False)
    assert not list(out.rglob("*.npz"))
    monkeypatch.undo()
    s = build_cache(data, out, workers=0, cell=8, progress=False)
    assert s["done"] == 5 and s["skipped"] == 0


def test_cache_equals_online(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    build_cache(data, out, workers=0, cell=8, progress=False)
    cache = MotionCache(out)
    root = data.parent
    for entry in read_list(data)[:4]:
        cached = cache.get(entry.path)
        assert cache.get(cache_key(entry.path, root)).energy.shape == cached.energy.shape  # key or absolute path
        assert cached.has_vectors and cached.num_frames == 60 and cached.frame_size == (240, 320)
        for start, crop, flip in [(0, (40, 0, 240, 240), False), (11, (0, 20, 300, 200), True), (27, None, False)]:
            idx = np.arange(start, start + 32, 2)
            a, b = span_of(idx, cached.num_frames)
            online, _ = read_span(entry.path, a, b)
            m_cache = cached.clip_map(idx, crop, flip, (8, 14, 14))
            m_online = online.clip_map(idx, crop, flip, (8, 14, 14))
            np.testing.assert_allclose(m_cache, m_online, rtol=2e-3, atol=1e-3)  # float16 storage
    assert not cache.get(str(root / "videos" / "clip_00000.webm")).has_vectors
    with pytest.raises(FileNotFoundError, match="broken.mp4"):
        cache.get(str(root / "videos" / "broken.mp4"))


def test_moved_dataset_and_keys(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    build_cache(data, out, workers=0, cell=8, progress=False)
    moved = tmp_path / "moved"
    shutil.move(data.parent, moved)
    cache = MotionCache(out, root=moved)
    assert cache.get(moved / "videos" / "clip_00001.mp4").has_vectors
    assert cache_key("/elsewhere/x.mp4", moved) == "_abs/elsewhere/x.mp4"
    with pytest.raises(FileNotFoundError, match="not a motion cache"):
        MotionCache(tmp_path / "nothing")
