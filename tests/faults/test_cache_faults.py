"""The motion-cache builder on a list with every fault: bad files are counted and named, the rest are done,
a rerun retries only the failures, and nothing half-written is left behind."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mgm.motion_cache import MotionCache, build_cache
from mgm.prep.filelist import VideoEntry, write_list
from mgm.prep.prepare import main

from .cases import EXPECT, GOOD_FRAMES, READABLE, SHORT_FRAMES

FAILED = tuple(k for k in EXPECT if k not in READABLE)  # unreadable + missing
FRAMES = {"too_short": SHORT_FRAMES, "odd_size": 40, "huge": 2}  # what `lists` counts for the readable ones


@pytest.fixture(scope="module")
def fault_list(fault_dir: Path, bad_videos: dict[str, Path]) -> Path:
    entries = [VideoEntry(str(p), i, FRAMES.get(k, GOOD_FRAMES)) for i, (k, p) in enumerate(bad_videos.items())]
    return write_list(fault_dir / "cache_list.csv", entries + [VideoEntry(str(fault_dir / "good.mp4"), 99, 48)])


def test_build_cache_counts_failures_names_them_and_does_the_rest(
    fault_list: Path, bad_videos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    s = build_cache(fault_list, out, workers=2, progress=False)
    assert (s["total"], s["done"], s["failed"], s["skipped"]) == (len(EXPECT) + 1, len(READABLE) + 1, len(FAILED), 0)
    assert s["no_vectors"] == 1 and sum(s["by_reason"].values()) == len(FAILED)
    with open(s["failures"], newline="") as f:
        failures = {Path(r["path"]).stem: r["reason"] for r in csv.DictReader(f)}
    assert set(failures) == set(FAILED)
    assert "No such file" in failures["missing"] and "Invalid data" in failures["zero_length"]

    cache = MotionCache(out)
    for fault in READABLE:
        field = cache.get(bad_videos[fault])
        assert np.isfinite(field.energy).all() and field.has_vectors == (fault != "no_vectors")
    for fault in FAILED:
        with pytest.raises(FileNotFoundError, match=bad_videos[fault].name):
            cache.get(bad_videos[fault])
    assert not list(out.rglob("*.tmp"))  # no half-written record

    again = build_cache(fault_list, out, workers=0, progress=False)  # a rerun retries only the failures
    assert (again["skipped"], again["done"], again["failed"]) == (len(READABLE) + 1, 0, len(FAILED))


def test_a_stale_list_count_is_a_failure_naming_both_counts(fault_dir: Path, tmp_path: Path) -> None:
    stale = write_list(tmp_path / "stale.csv", [VideoEntry(str(fault_dir / "good.mp4"), 0, GOOD_FRAMES + 12)])
    s = build_cache(stale, tmp_path / "cache", workers=0, progress=False)
    assert (s["done"], s["failed"]) == (0, 1)
    assert f"holds {GOOD_FRAMES} frames, its file list says {GOOD_FRAMES + 12}" in Path(s["failures"]).read_text()


def test_prepare_motion_cli_reports_the_counts(fault_list: Path, tmp_path: Path, capsys) -> None:
    assert main(["motion", "--list", str(fault_list), "--out", str(tmp_path / "c"), "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"failed {len(FAILED)}" in out and f"done {len(READABLE) + 1}" in out and "failures.csv" in out
