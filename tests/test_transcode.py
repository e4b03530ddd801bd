"""mgm.prep.transcode: frame count and timing kept, GOP as asked, resumable, atomic, bad inputs rejected with a reason.

Clips are tiny (64x80, 24-40 frames) and made here; `write_clip` / `truncated_copy` are reused by test_prepare.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from mgm.prep import transcode
from mgm.prep.filelist import VideoEntry, read_list, write_list
from mgm.prep.synth import EncodeSpec, encode
from mgm.prep.transcode import EncodeSettings, decoded_frames, partial_path, transcode_file, transcode_list

FAST = EncodeSettings(gop=8, preset="ultrafast")


def write_clip(
    path: Path,
    codec: str = "libx264",
    frames: int = 24,
    size: tuple[int, int] = (64, 80),
    gop: int = 250,
    bframes: int = 2,
    fps: int = 12,
    faststart: bool = False,
) -> Path:
    """A moving white box on black; H.264 defaults to a long GOP with B-frames (what transcode must fix)."""
    h, w = size
    img = np.zeros((frames, h, w, 3), np.uint8)
    for i in range(frames):
        x = (3 * i) % (w - 16)
        img[i, h // 4 : h // 4 + 16, x : x + 16] = 255
    options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:bframes={bframes}"} if codec == "libx264" else {}
    return encode(img, path, codec, EncodeSpec(gop=gop, bframes=bframes, fps=fps), options=options,
                  container_options={"movflags": "faststart"} if faststart else None)  # fmt: skip


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """The first `keep` share of the bytes of `src` (an interrupted download)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


@pytest.mark.parametrize("codec", ["libx264", "libvpx-vp9"])
def test_keeps_frames_timing_and_gop(tmp_path: Path, codec: str) -> None:
    src = write_clip(tmp_path / ("src.mp4" if codec == "libx264" else "src.webm"), codec, frames=30)
    dst = tmp_path / "out" / "src.mp4"
    dst.parent.mkdir()
    r = transcode_file(str(src), str(dst), FAST)
    assert r.ok and not r.skipped and r.num_frames == 30, r
    n, keys = decoded_frames(dst)
    assert n == 30 and keys == [0, 8, 16, 24]
    assert np.allclose(frame_times(dst), frame_times(src), atol=2e-3)
    with av.open(str(dst)) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "h264" and st.codec_context.pix_fmt == "yuv420p"
        types = [f.pict_type for f in c.decode(st)]
    assert av.video.frame.PictureType.B not in types  # no B-frames by default


def test_bframes_and_short_side(tmp_path: Path) -> None:
    src = write_clip(tmp_path / "src.mp4", frames=24, size=(64, 80))
    dst = tmp_path / "big.mp4"
    r = transcode_file(str(src), str(dst), EncodeSettings(gop=12, bframes=2, short_side=100, preset="ultrafast"))
    assert r.ok and r.num_frames == 24
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert (frames[0].height, frames[0].width) == (100, 124)  # 80 * 100/64 = 125, rounded down to even
    assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 12]
    assert transcode.output_size(241, 321) == (240, 320)


def _make_list(tmp_path: Path, names: list[str], frames: int = 24) -> Path:
    vids = tmp_path / "src" / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, name in enumerate(names):
        p = vids / name
        p.parent.mkdir(exist_ok=True)
        if not p.exists():
            write_clip(p, "libvpx-vp9" if name.endswith(".webm") else "libx264", frames=frames + i)
        entries.append(VideoEntry(str(p), i % 3, frames + i))
    return write_list(tmp_path / "src" / "train.csv", entries)


def test_list_second_run_skips(tmp_path: Path) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.webm", "sub/c.mp4"])
    out = tmp_path / "out"
    s1 = transcode_list(lst, out, FAST, workers=2, progress=False)
    assert (s1["done"], s1["skipped"], s1["failed"]) == (3, 0, 0)
    new = read_list(out / "train.csv")
    # the layout of the sources, relative to the list's folder
    assert [os.path.relpath(e.path, out) for e in new] == ["videos/a.mp4", "videos/b.mp4", "videos/sub/c.mp4"]
    assert [e.num_frames for e in new] == [24, 25, 26] and [e.label for e in new] == [0, 1, 2]
    mtimes = [os.stat(e.path).st_mtime_ns for e in new]
    s2 = transcode_list(lst, out, FAST, workers=0, progress=False)
    assert (s2["done"], s2["skipped"], s2["failed"]) == (0, 3, 0)
    assert [os.stat(e.path).st_mtime_ns for e in new] == mtimes
    assert read_list(out / "train.csv") == new


def test_same_names_in_other_folders_and_lists_never_collide(tmp_path: Path) -> None:
    """Train and val lists with the same file names, transcoded into one folder; x.avi beside x.mp4."""
    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / split / "run").mkdir(parents=True)
        write_clip(src / split / "run" / "x.mp4", frames=20 if split == "train" else 22)
    write_clip(src / "train" / "run" / "x.avi", "mpeg4", frames=24)
    train = write_list(
        src / "train.csv", [VideoEntry(str(src / "train" / "run" / n), 0, 0) for n in ("x.mp4", "x.avi")]
    )
    val = write_list(src / "val.csv", [VideoEntry(str(src / "val" / "run" / "x.mp4"), 0, 0)])
    out = tmp_path / "out"
    for lst in (train, val):
        assert transcode_list(lst, out, FAST, workers=0, progress=False, out_list=out / lst.name)["done"] == len(
            read_list(lst)
        )
    got = {os.path.relpath(e.path, out): e.num_frames for lst in ("train.csv", "val.csv") for e in read_list(out / lst)}
    assert got == {"train/run/x.mp4": 20, "train/run/x.avi.mp4": 24, "val/run/x.mp4": 22}
    assert all(decoded_frames(out / p)[0] == n for p, n in got.items())


def test_a_rerun_with_other_settings_or_a_changed_source_redoes_the_file(tmp_path: Path) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.mp4"])
    out = tmp_path / "out"
    assert transcode_list(lst, out, FAST, workers=0, progress=False)["done"] == 2
    a = out / "videos" / "a.mp4"
    record = transcode.sidecar_path(a)
    assert record.name == ".a.mp4.json" and '"gop": 8' in record.read_text()
    assert transcode_list(lst, out, EncodeSettings(gop=8, preset="ultrafast", threads=2), workers=0,
                          progress=False)["skipped"] == 2  # threads change the speed only  # fmt: skip
    s = transcode_list(lst, out, EncodeSettings(gop=4, preset="ultrafast"), workers=0, progress=False)
    assert (s["done"], s["skipped"]) == (2, 0)
    assert decoded_frames(a)[1] == [0, 4, 8, 12, 16, 20]  # not the stale GOP-8 output
    write_clip(tmp_path / "src" / "videos" / "b.mp4", frames=30)  # the source changed since
    s = transcode_list(lst, out, EncodeSettings(gop=4, preset="ultrafast"), workers=0, progress=False)
    assert (s["done"], s["skipped"]) == (1, 1) and decoded_frames(out / "videos" / "b.mp4")[0] == 30
    record.unlink()  # an output without a record (killed before writing it) is redone
    assert transcode_list(lst, out, EncodeSettings(gop=4, preset="ultrafast"), workers=0, progress=False)["done"] == 1


def _gray(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray") for f in c.decode(video=0)]


def _box_x(gray: np.ndarray) -> float:
    """Column of the white box's centre (it moves 3 px a frame)."""
    return float(np.flatnonzero(gray.max(0) > 128).mean())


def test_vp9_twins_hold_the_same_frames(tmp_path: Path) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.webm"])
    s = transcode_list(lst, tmp_path / "out", EncodeSettings(gop=8, preset="ultrafast", vp9_twin=True), workers=0,
                       progress=False)  # fmt: skip
    assert s["done"] == 2
    for e in read_list(s["list"]):
        twin = Path(e.path).with_suffix(".webm")
        h264, vp9 = _gray(e.path), _gray(twin)
        assert len(h264) == len(vp9) == e.num_frames
        assert np.allclose([_box_x(f) for f in h264], [_box_x(f) for f in vp9], atol=1.5)  # frame i = frame i


def test_exception_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.mp4"])
    out = tmp_path / "out"

    def interrupted(*args: object, **kwargs: object) -> None:  # Ctrl-C after the encode, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(transcode, "decoded_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        transcode_list(lst, out, FAST, workers=0, progress=False)
    leftovers = [p for p in out.rglob("*") if p.is_file()]
    assert leftovers == []  # no output, no partial, no list
    monkeypatch.undo()
    s = transcode_list(lst, out, FAST, workers=0, progress=False)
    assert s["done"] == 2 and s["failed"] == 0


def test_killed_worker_leaves_no_output(tmp_path: Path) -> None:
    # A slow encode (bigger clip, slow preset) in a separate process, SIGKILLed while the partial is being written.
    src = write_clip(tmp_path / "big.mp4", frames=90, size=(240, 320))
    dst = tmp_path / "out" / "big.mp4"
    dst.parent.mkdir()
    code = (
        "import sys; from mgm.prep.transcode import EncodeSettings, transcode_file;"
        "transcode_file(sys.argv[1], sys.argv[2], EncodeSettings(preset='veryslow'))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], env=env)
    part = partial_path(dst)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the encode finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()
    # The rerun replaces the stale partial and finishes the file.
    r = transcode_file(str(src), str(dst), FAST)
    assert r.ok and r.num_frames == 90 and not part.exists()


def test_bad_inputs_rejected_others_succeed(tmp_path: Path) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    vids = tmp_path / "src" / "videos"
    (vids / "garbage.mp4").write_bytes(b"not a video " * 400)
    truncated_copy(write_clip(tmp_path / "whole.mp4", frames=40, faststart=True), vids / "cut.mp4")
    entries = read_list(lst) + [VideoEntry(str(vids / n), 0, 40) for n in ("garbage.mp4", "cut.mp4", "missing.mp4")]
    write_list(lst, entries)
    s = transcode_list(lst, tmp_path / "out", FAST, workers=2, progress=False)
    assert (s["done"], s["failed"]) == (3, 3)
    assert s["by_reason"] == {"unreadable": 1, "truncated": 1, "missing": 1}
    rows = Path(s["failures"]).read_text().splitlines()
    assert rows[0] == "path,reason,detail" and any("cut.mp4,truncated" in r for r in rows)
    assert len(read_list(tmp_path / "out" / "train.csv")) == 3
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_never_overwrites_a_source(tmp_path: Path) -> None:
    lst = _make_list(tmp_path, ["a.mp4", "b.webm"])
    before = (tmp_path / "src" / "videos" / "a.mp4").read_bytes()
    s = transcode_list(lst, tmp_path / "src", FAST, workers=0, progress=False, out_list=tmp_path / "new.csv")
    assert s["by_reason"] == {"would_overwrite_source": 1} and s["done"] == 1  # a.mp4 would be its own output
    twins = EncodeSettings(gop=8, preset="ultrafast", vp9_twin=True)  # b.mp4's twin would be b.webm, a source
    s = transcode_list(lst, tmp_path / "src", twins, workers=0, progress=False, out_list=tmp_path / "new.csv")
    assert s["by_reason"] == {"would_overwrite_source": 2} and s["done"] == 0
    assert (tmp_path / "src" / "videos" / "a.mp4").read_bytes() == before
