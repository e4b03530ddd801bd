"""Both loaders (PyAV fallback, DALI's CPU path on VP9 twins) on a list holding every fault.

What must hold: missing files are reported once, at start-up, in one message; a bad file is skipped with a
warning naming it, replaced by a deterministic stand-in and counted in `loader.stats`; readable oddities
(odd size, 4:4:4, VFR, no motion vectors, static, 8K) are delivered; every batch is full; past
`data.max_bad_fraction` the run stops with a clear error.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from dali_pipes import TooManyBadVideos, build_loader
from mgm.config import Config, load_config
from mgm.prep.filelist import VideoEntry, write_list

from .cases import ALWAYS_BAD, EXPECT, GOOD_FRAMES, READABLE, SHORT_FRAMES

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
LISTED = {"too_short": SHORT_FRAMES, "odd_size": 40, "huge": 2}  # what `mgm-prepare lists` would write
NUM_GOOD = 16
BATCH = 4


@pytest.fixture(scope="module")
def loader_list(fault_dir: Path, bad_videos: dict[str, Path]) -> Path:
    """Every fault (as a list made before the files broke would name it) + NUM_GOOD healthy clips."""
    entries = [VideoEntry(str(p), i, LISTED.get(k, GOOD_FRAMES)) for i, (k, p) in enumerate(bad_videos.items())]
    for i in range(NUM_GOOD):
        for suffix in (".mp4", ".webm"):
            shutil.copy(fault_dir / f"good{suffix}", fault_dir / f"good_{i:02d}{suffix}")
        entries.append(VideoEntry(str(fault_dir / f"good_{i:02d}.mp4"), 100 + i, GOOD_FRAMES))
    return write_list(fault_dir / "loader_list.csv", entries)


def cfg_for(csv: Path, loader: str, *extra: str) -> Config:
    workers = 2 if loader == "dali" else 0
    base = [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu", f"data.batch_size={BATCH}",
            f"data.num_workers={workers}", "data.num_frames=8", "data.input_size=32", "mask.name=mgm",
            "mask.ratio=0.5", "data.max_bad_fraction=0.5", "model.size=tiny"]  # fmt: skip
    return load_config(None, base + list(extra))


def run_epoch(cfg: Config) -> dict[str, Any]:
    """One epoch: the batches' video indices, the loader's stats and paths, every warning raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = build_loader(cfg)
        at_start = [str(w.message) for w in caught]
        batches = []
        try:
            for b in loader:
                assert b["video"].shape == (cfg.data.batch_size, 3, 8, 32, 32) and torch.isfinite(b["video"]).all()
                assert (b["mask"].sum(1) == cfg.derived.num_masked).all()
                batches.append(b["index"].tolist())
        finally:
            getattr(loader, "close", lambda: None)()
    return {"batches": batches, "stats": dict(loader.stats), "paths": list(loader.sampler.paths),
            "planned": loader.sampler.epoch_indices(0).tolist(), "at_start": at_start,
            "warnings": [str(w.message) for w in caught], "length": len(loader)}  # fmt: skip


_RUNS: dict[str, dict[str, Any]] = {}


def epoch_of(loader: str, csv: Path) -> dict[str, Any]:
    if loader not in _RUNS:
        _RUNS[loader] = run_epoch(cfg_for(csv, loader))
    return _RUNS[loader]


LOADERS = ["cpu", pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali"))]


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_files_are_reported_once_at_start_up(loader: str, loader_list: Path) -> None:
    run = epoch_of(loader, loader_list)
    missing = [w for w in run["warnings"] if "missing" in w and "file list" in w]
    assert len(missing) == 1 and missing[0] in run["at_start"]  # one message, before the first batch
    assert "missing.mp4" in missing[0]
    assert not any(Path(p).stem == "missing" for p in run["paths"])  # dropped from the run


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_files_are_skipped_named_counted_and_the_epoch_completes(loader: str, loader_list: Path) -> None:
    run = epoch_of(loader, loader_list)
    stem = {i: Path(p).stem for i, p in enumerate(run["paths"])}
    delivered = {stem[i] for batch in run["batches"] for i in batch}
    planned = {stem[i] for i in run["planned"]}
    assert len(run["batches"]) == run["length"] == len(run["paths"]) // BATCH  # every batch full, none lost
    assert run["stats"]["samples"] == BATCH * run["length"] and run["stats"]["failed_batches"] == 0
    named = " ".join(run["stats"]["bad_videos"])
    for fault in ALWAYS_BAD:
        assert fault not in delivered
        if fault in planned:
            assert f"{fault}.mp4 (replaced by " in named  # the planned file is named with its stand-in
            assert any(f"{fault}.mp4 (replaced by" in w and "unreadable video" in w for w in run["warnings"])
    for fault in READABLE:  # odd size, 4:4:4, VFR, MJPEG, static, 8K: handled, not dropped
        if fault in planned:
            assert fault in delivered, (fault, named)
    assert run["stats"]["bad_files"] >= len(named.split("(replaced by")) - 1 >= 1


def test_replacements_are_deterministic_and_the_same_for_both_loaders(loader_list: Path) -> None:
    first = epoch_of("cpu", loader_list)
    again = run_epoch(cfg_for(loader_list, "cpu"))
    assert again["batches"] == first["batches"] and again["stats"]["bad_videos"] == first["stats"]["bad_videos"]
    if HAS_DALI:
        assert epoch_of("dali", loader_list)["batches"] == first["batches"]


@pytest.mark.parametrize("loader", LOADERS)
def test_too_many_bad_files_stop_the_run_with_a_clear_error(loader: str, loader_list: Path) -> None:
    with pytest.warns(UserWarning, match="missing"):
        lo = build_loader(cfg_for(loader_list, loader, "data.max_bad_fraction=0.05"))
    try:
        with pytest.warns(UserWarning), pytest.raises(TooManyBadVideos, match=r"max_bad_fraction=0\.05.*last: .*\.mp4"):
            for _ in lo:
                pass
    finally:
        getattr(lo, "close", lambda: None)()
    assert lo.stats["bad_files"] > 0.05 * len(lo.sampler)


def test_missing_files_past_the_limit_stop_at_start_up(loader_list: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)missing\.mp4.*max_bad_fraction"):
        build_loader(cfg_for(loader_list, "cpu", "data.max_bad_fraction=0.01"))


def test_a_list_that_overstates_frame_counts_is_a_counted_skip(fault_dir: Path, tmp_path: Path) -> None:
    # the files changed after listing: the list promises 48 frames, the files hold 10 and 2
    entries = [VideoEntry(str(fault_dir / f"{k}.mp4"), 0, GOOD_FRAMES) for k in ("too_short", "huge")]
    entries += [VideoEntry(str(fault_dir / f"good_{i:02d}.mp4"), 1, GOOD_FRAMES) for i in range(6)]
    csv = write_list(tmp_path / "stale.csv", entries)
    run = run_epoch(cfg_for(csv, "cpu", "data.batch_size=2", "data.max_bad_fraction=1.0"))
    assert len(run["batches"]) == 4
    named = " ".join(run["stats"]["bad_videos"])
    assert "too_short.mp4" in named or "huge.mp4" in named
    assert run["stats"]["bad_files"] >= 1


_HUGE_SCRIPT = """
import json, sys
from dali_pipes import build_loader
from mgm.config import load_config

def status_mb(key):  # VmHWM belongs to this process image (ru_maxrss would include the forking parent's peak)
    line = next(x for x in open("/proc/self/status") if x.startswith(key))
    return int(line.split()[1]) / 1024

cfg = load_config(None, sys.argv[1:])
loader = build_loader(cfg)
before = status_mb("VmRSS:")
batch = next(iter(loader))
grown = status_mb("VmHWM:") - before
print(json.dumps({"shape": list(batch["video"].shape), "bad": loader.stats["bad_files"], "grown_mb": grown}))
"""


def test_cpu_loader_memory_on_8k_frames_stays_bounded(fault_dir: Path, tmp_path: Path) -> None:
    csv = write_list(tmp_path / "huge.csv", [VideoEntry(str(fault_dir / "huge.mp4"), 0, 2)])
    args = [f"data.train_list={csv}", "data.loader=cpu", "data.batch_size=1", "data.num_workers=0",
            "data.num_frames=8", "data.input_size=32", "mask.name=tube", "mask.ratio=0.5"]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_HUGE_SCRIPT), *args], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).parents[2])  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["shape"] == [1, 3, 8, 32, 32] and r["bad"] == 0  # handled, not rejected ...
    decoded_mb = 2 * 7680 * 4320 * 3 / 2**20  # the two distinct decoded RGB frames
    assert r["grown_mb"] < 4 * decoded_mb, r  # ... within a few times the decoded frames' size


def test_expectations_cover_every_fault() -> None:
    assert set(ALWAYS_BAD) | set(READABLE) | {"truncated", "garbage_middle"} == set(EXPECT)
