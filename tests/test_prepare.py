"""mgm-prepare: SSv2 / Kinetics / folder annotations -> file lists with probed frame counts, rejects with reasons."""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys
import types
from pathlib import Path

import pytest
from test_transcode import truncated_copy, write_clip

from mgm.prep import datasets
from mgm.prep.filelist import read_list
from mgm.prep.prepare import main


def cli(command: str) -> int:
    """Run `mgm-prepare <command>` in-process; returns its exit status."""
    return main(shlex.split(command))


def _rejects(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}


def test_ssv2_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    vids = tmp_path / "20bn-something-something-v2"
    vids.mkdir()
    write_clip(vids / "101.webm", "libvpx-vp9", frames=20)
    write_clip(vids / "102.webm", "libvpx-vp9", frames=22)
    (vids / "104.webm").write_bytes(b"\x1a\x45\xdf\xa3 broken")
    labels = {"Pushing something from left to right": "0", "Putting something on a surface": "1"}
    train = [
        {"id": "101", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": "102", "label": "pushing pen from left to right", "template": "Pushing [something] from left to right",
         "placeholders": ["pen"]},
        {"id": "103", "label": "x", "template": "Pushing [something] from left to right", "placeholders": ["x"]},
        {"id": "104", "label": "x", "template": "Putting [something] on a surface", "placeholders": ["x"]},
        {"id": "105", "label": "x", "template": "Spinning [something] that quickly stops", "placeholders": ["x"]},
    ]  # fmt: skip
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text(json.dumps(train))
    out = tmp_path / "lists" / "ssv2_train.csv"
    monkeypatch.chdir(tmp_path)
    args = "lists --format ssv2 --labels labels.json --annotations train.json --video-dir 20bn-something-something-v2"
    assert main([*args.split(), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    entries = read_list(out)
    assert [(Path(e.path).name, e.label, e.num_frames) for e in entries] == [("101.webm", 1, 20), ("102.webm", 0, 22)]
    assert out.read_text().splitlines()[1].startswith("../20bn-something-something-v2/101.webm")  # relative
    rej = _rejects(out.with_name("ssv2_train.rejects.csv"))
    assert rej == {"103.webm": "missing", "104.webm": "unreadable", "105": "unknown_label"}
    summary = capsys.readouterr().out
    assert "2/5 usable" in summary and "missing 1" in summary and "unknown_label 1" in summary
    assert "without motion vectors: 2" in summary  # VP9 carries none: the summary points to transcode


def test_ssv2_test_split_and_bad_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    (tmp_path / "test.json").write_text(json.dumps([{"id": 7}]))
    cands, bad = datasets.ssv2_candidates(tmp_path / "labels.json", tmp_path / "test.json", tmp_path, ext="mp4")
    assert [(Path(c.path).name, c.label) for c in cands] == [("7.mp4", -1)] and bad == []
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(datasets.AnnotationError, match="broken.json"):
        datasets.ssv2_candidates(tmp_path / "labels.json", tmp_path / "broken.json", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli("lists --format ssv2 --labels labels.json --annotations no.json --video-dir . --out l.csv") == 2


def test_kinetics_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "k400" / "train"
    (root / "abseiling").mkdir(parents=True)
    (root / "air drumming").mkdir()
    write_clip(root / "abseiling" / "aaa_000010_000020.mp4", frames=20)
    write_clip(root / "air drumming" / "bbb_000000_000010.mp4", frames=21)
    write_clip(tmp_path / "whole.mp4", frames=40, faststart=True)
    truncated_copy(tmp_path / "whole.mp4", root / "abseiling" / "ccc_000001_000011.mp4")
    with (tmp_path / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        w.writerow(["air drumming", "bbb", "0", "10", "train", "0"])
        w.writerow(["abseiling", "aaa", "10", "20", "train", "0"])
        w.writerow(["abseiling", "ccc", "1", "11", "train", "0"])
        w.writerow(["zumba", "ddd", "5", "15", "train", "0"])  # never downloaded
        w.writerow(["zumba", "eee", "5", "15", "val", "0"])  # another split
    out = tmp_path / "k400_train.csv"
    monkeypatch.chdir(tmp_path)
    args = "lists --format k400 --annotations train.csv --split train --video-dir k400 --workers 0 --quiet"
    assert main([*args.split(), "--out", str(out)]) == 0
    got = [(Path(e.path).name, e.label, e.num_frames) for e in read_list(out)]
    # ids: alphabetical over the CSV's labels (abseiling 0, air drumming 1, zumba 2), in CSV order
    assert got == [("bbb_000000_000010.mp4", 1, 21), ("aaa_000010_000020.mp4", 0, 20)]
    assert out.with_name("k400_train.classes.txt").read_text().splitlines() == ["abseiling", "air drumming", "zumba"]
    assert _rejects(out.with_name("k400_train.rejects.csv")) == {
        "ccc_000001_000011.mp4": "truncated",
        "ddd_000005_000015.mp4": "missing",
    }
    # validation reuses the training classes, so ids agree even when a class is absent there
    cands, bad, classes = datasets.kinetics_candidates(
        tmp_path / "train.csv", tmp_path / "k400", split="val", classes=["abseiling", "zumba"]
    )
    assert [(c.key, c.label) for c in cands] == [("eee_000005_000015", 1)] and classes == ["abseiling", "zumba"]


def test_folder_lists_and_probe(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    for cls in ("walk", "run"):
        (root / cls).mkdir(parents=True)
    write_clip(root / "run" / "r1.mp4", frames=18)
    write_clip(root / "walk" / "w1.webm", "libvpx-vp9", frames=19)
    write_clip(root / "walk" / "w2.mp4", frames=20)
    (root / "walk" / "notes.txt").write_text("not a video")
    out = tmp_path / "folder.csv"
    assert main(["lists", "--format", "folder", "--video-dir", str(root), "--out", str(out), "--quiet"]) == 0
    got = [(os.path.relpath(e.path, root), e.label, e.num_frames) for e in read_list(out)]
    assert got == [("run/r1.mp4", 0, 18), ("walk/w1.webm", 1, 19), ("walk/w2.mp4", 1, 20)]
    with pytest.raises(datasets.AnnotationError, match="no class subfolders"):
        datasets.folder_candidates(root / "run")
    h264, vp9 = datasets.probe(str(root / "run" / "r1.mp4")), datasets.probe(str(root / "walk" / "w1.webm"))
    assert (h264.codec, h264.size, h264.has_mvs) == ("h264", (64, 80), True)
    assert (vp9.codec, vp9.has_mvs) == ("vp9", False)


def _crash_on_three(x: int) -> int:
    if x == 3:
        os._exit(7)  # a decoder segfault, as far as the pool can tell
    return x * 10


def test_parallel_map_survives_a_crashing_worker() -> None:
    got = dict(datasets.parallel_map(_crash_on_three, list(range(8)), workers=2, on_crash=lambda x: -1))
    assert got == {i: (-1 if i == 3 else i * 10) for i in range(8)}


def test_synth_and_motion_commands_pass_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls: dict[str, tuple] = {}

    def make_dataset(out: str, num: int, seed: int, **kw: object) -> Path:
        calls["synth"] = (out, num, seed, kw)
        return Path(out) / "train.csv"

    def build_cache(list_csv: str, out_dir: str, workers: int, cell: int, progress: bool = True) -> dict:
        calls["motion"] = (list_csv, out_dir, workers, cell, progress)
        return {"videos": 3, "failed": 0}

    monkeypatch.setitem(sys.modules, "mgm.motion_cache", types.SimpleNamespace(build_cache=build_cache))
    monkeypatch.setattr("mgm.prep.synth.make_dataset", make_dataset)
    assert main(["synth", "--out", "d", "--num", "5", "--seed", "3", "--size", "120x160", "--frames", "30"]) == 0
    assert calls["synth"] == (tmp_path / "d", 5, 3, {"size": (120, 160), "num_frames": 30, "gop": 16, "bframes": 0})
    assert main(["motion", "--list", "l.csv", "--out", "c", "--workers", "2", "--cell", "4", "--quiet"]) == 0
    assert calls["motion"] == ("l.csv", "c", 2, 4, False)
    with pytest.raises(SystemExit):
        main(["synth", "--out", "d", "--num", "5", "--size", "big"])


def test_synth_then_transcode_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synth_dir = tmp_path / "synth"
    monkeypatch.chdir(tmp_path)
    assert cli("synth --out synth --num 2 --seed 1 --size 64x96 --frames 20 --gop 30 --bframes 2") == 0
    csv_path = synth_dir / "train.csv"
    out = tmp_path / "nvdec"
    assert cli("transcode --list synth/train.csv --out nvdec --gop 8 --workers 0 --preset ultrafast --quiet") == 0
    src, new = read_list(csv_path), read_list(out / "train.csv")
    assert [e.num_frames for e in new] == [e.num_frames for e in src] == [20, 20]
    assert [e.label for e in new] == [e.label for e in src]
    assert all(datasets.probe(e.path).has_mvs for e in new)
