"""The generated inputs really carry their faults (otherwise every other test here proves nothing)."""

from __future__ import annotations

from pathlib import Path

import av

from .cases import EXPECT, HUGE_SIZE, SHORT_FRAMES


def _stream(path: Path) -> av.VideoStream:
    with av.open(str(path)) as c:
        return c.streams.video[0]


def _frame_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def test_fault_files_have_the_fault(bad_videos: dict[str, Path]) -> None:
    assert set(bad_videos) == set(EXPECT)
    assert not bad_videos["missing"].exists() and not bad_videos["missing"].with_suffix(".webm").exists()
    for twin in (bad_videos["zero_length"], bad_videos["zero_length"].with_suffix(".webm")):
        assert twin.stat().st_size == 0
    good = bad_videos["truncated"].with_name("good.mp4")
    assert bad_videos["truncated"].stat().st_size < 0.5 * good.stat().st_size
    assert bad_videos["garbage_middle"].stat().st_size == good.stat().st_size
    assert bad_videos["garbage_middle"].read_bytes() != good.read_bytes()
    for suffix in (".mp4", ".webm"):
        assert _stream(bad_videos["odd_size"].with_suffix(suffix)).codec_context.width == 161
        assert _stream(bad_videos["chroma_444"].with_suffix(suffix)).format.name == "yuv444p"
        assert len(_frame_pts(bad_videos["too_short"].with_suffix(suffix))) == SHORT_FRAMES
        pts = _frame_pts(bad_videos["vfr"].with_suffix(suffix))
        assert len({b - a for a, b in zip(pts, pts[1:], strict=False)}) > 1  # irregular frame durations
    assert _stream(bad_videos["no_vectors"]).codec_context.name == "mjpeg"
    huge = _stream(bad_videos["huge"])
    assert (huge.codec_context.height, huge.codec_context.width) == HUGE_SIZE
