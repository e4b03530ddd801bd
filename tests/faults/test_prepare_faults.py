"""`mgm-prepare lists` on broken videos: every file gets a verdict, bad ones a one-word reason, good ones go on."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from mgm.prep.datasets import probe
from mgm.prep.filelist import VideoEntry, read_list, write_list
from mgm.prep.prepare import main

from .cases import EXPECT, GOOD_FRAMES, SHORT_FRAMES

# what the probe behind `mgm-prepare lists` says about each unusable file
REJECT_REASON = {
    "truncated": "truncated",
    "truncated_moov": "unreadable",
    "garbage_middle": "decode_error",
    "zero_length": "empty",
    "not_a_video": "unreadable",
    "missing": "missing",
}
FRAMES = {"too_short": SHORT_FRAMES, "odd_size": 40, "huge": 2}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("fault", sorted(EXPECT))
def test_probe_gives_every_fault_a_verdict(fault: str, bad_videos: dict[str, Path]) -> None:
    r = probe(str(bad_videos[fault]))  # never raises
    if fault in REJECT_REASON:
        assert not r.ok and r.reason == REJECT_REASON[fault], (r.reason, r.detail)
        assert r.detail  # says more than the one word
    else:
        assert r.ok, (r.reason, r.detail)
        assert r.num_frames == FRAMES.get(fault, GOOD_FRAMES)
        assert r.has_mvs == (fault != "no_vectors")
    if fault == "truncated":
        assert "after 16 frames" in r.detail  # how far the file got


@pytest.fixture(scope="module")
def folder_list(fault_dir: Path, bad_videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`mgm-prepare lists --format folder` over a class folder holding every existing fault + one good clip."""
    root = tmp_path_factory.mktemp("lists")
    (root / "videos" / "faulty").mkdir(parents=True)
    (root / "videos" / "good").mkdir()
    for fault, path in bad_videos.items():
        if fault != "missing":
            shutil.copy(path, root / "videos" / "faulty" / path.name)
    shutil.copy(fault_dir / "good.mp4", root / "videos" / "good" / "good.mp4")
    out = root / "train.csv"
    return root, out


def test_lists_keeps_the_usable_and_rejects_the_rest_with_a_reason(
    folder_list: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = folder_list
    cmd = ["lists", "--format", "folder", "--video-dir", str(root / "videos"), "--out", str(out), "--workers", "2"]
    assert main([*cmd, "--quiet"]) == 0  # some usable: the command succeeds
    kept = {Path(e.path).stem: e.num_frames for e in read_list(out)}
    usable = {k for k in EXPECT if k not in REJECT_REASON}
    assert kept == {**{k: FRAMES.get(k, GOOD_FRAMES) for k in usable}, "good": GOOD_FRAMES}
    rejects = {Path(r["path"]).stem: r["reason"] for r in _rows(out.with_name("train.rejects.csv"))}
    assert rejects == {k: v for k, v in REJECT_REASON.items() if k != "missing"}
    summary = capsys.readouterr().out
    assert f"{len(kept)}/{len(kept) + len(rejects)} usable" in summary
    assert "without motion vectors: 1" in summary and "transcode" in summary  # the MJPEG file


def test_lists_reports_files_the_annotations_promise_but_the_disk_lacks(
    fault_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vids = tmp_path / "k400"
    vids.mkdir()
    shutil.copy(fault_dir / "good.mp4", vids / "abc_000000_000010.mp4")
    ann = tmp_path / "train.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\nrun,abc,0,10,train\nrun,gone,0,10,train\n")
    out = tmp_path / "list.csv"
    cmd = f"lists --format k400 --annotations {ann} --video-dir {vids} --out {out} --workers 0 --quiet"
    assert main(cmd.split()) == 0
    assert [Path(e.path).name for e in read_list(out)] == ["abc_000000_000010.mp4"]
    assert [(Path(r["path"]).name, r["reason"]) for r in _rows(tmp_path / "list.rejects.csv")] == [
        ("gone_000000_000010.mp4", "missing")
    ]
    assert "missing 1" in capsys.readouterr().out


def test_lists_of_only_bad_files_fails_with_status_1(bad_videos: dict[str, Path], tmp_path: Path) -> None:
    cls = tmp_path / "videos" / "a"
    cls.mkdir(parents=True)
    for fault in ("zero_length", "not_a_video", "truncated"):
        shutil.copy(bad_videos[fault], cls / bad_videos[fault].name)
    out = tmp_path / "list.csv"
    assert main(["lists", "--format", "folder", "--video-dir", str(tmp_path / "videos"), "--out", str(out),
                 "--workers", "0", "--quiet"]) == 1  # fmt: skip
    assert read_list(out) == []
    assert len(_rows(tmp_path / "list.rejects.csv")) == 3


def test_transcode_gives_intra_only_files_vectors_and_rejects_the_broken(
    bad_videos: dict[str, Path], tmp_path: Path
) -> None:
    from mgm.motion import read_motion
    from mgm.prep.transcode import EncodeSettings, decoded_frames, transcode_list

    faults = ("no_vectors", "odd_size", "zero_length", "truncated", "missing")
    lst = write_list(tmp_path / "list.csv", [VideoEntry(str(bad_videos[k]), 0, GOOD_FRAMES) for k in faults])
    s = transcode_list(lst, tmp_path / "out", EncodeSettings(preset="ultrafast"), workers=0, progress=False)
    assert (s["done"], s["failed"]) == (2, 3)
    assert s["by_reason"] == {"empty": 1, "truncated": 1, "missing": 1}
    out = {Path(e.path).stem: e for e in read_list(s["list"])}
    assert set(out) == {"no_vectors", "odd_size"}
    mjpeg = out["no_vectors"].path  # the remedy `mgm-prepare lists` points to for codecs without vectors
    assert probe(mjpeg).has_mvs and read_motion(mjpeg).has_vectors
    assert decoded_frames(mjpeg)[1] == [0, 16, 32]  # key frames on the GOP grid, not copied from the source
    assert probe(out["odd_size"].path).size == (120, 160)  # 4:2:0 H.264 needs even sides
