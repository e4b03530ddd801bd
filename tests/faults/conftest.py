"""Broken inputs for the fault-injection suite, generated once per session (never stored in the repo).

`bad_videos` maps a fault name to a file that has it; `GOOD` files are made beside them so every test can
check that the good ones still go through while the bad ones are reported.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mgm.synth import make_clip, render_clip

# fault -> what a reader should conclude about it
EXPECT = {
    "truncated": "unreadable",  # moov at the front, stream cut at 40%: some frames then an error / early end
    "truncated_moov": "unreadable",  # moov at the end, cut off: no index at all
    "garbage_middle": "unreadable",  # random bytes over the middle third of the stream
    "zero_length": "unreadable",
    "not_a_video": "unreadable",
    "missing": "missing",
    "too_short": "short",  # 10 frames: fewer than one 16-frame clip at stride 2 covers
    "odd_size": "ok",  # 321x241 MPEG-4 Part 2 (x264 refuses odd sizes in 4:2:0)
    "chroma_444": "ok",  # H.264 High 4:4:4 (NVDEC refuses it; PyAV decodes it)
    "vfr": "ok",  # variable frame rate: irregular timestamps
    "no_vectors": "no_vectors",  # MJPEG: intra-only, no motion vectors
    "static": "static",  # nothing moves
    "huge": "ok",  # 7680x4320: large frames must be handled or rejected clearly, never exhaust memory
}


def _encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str = "yuv420p", pts: list[int] | None = None,
            options: dict | None = None, container_options: dict | None = None) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=12)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        s.time_base = Fraction(1, 12)
        s.options = options or {}
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i if pts is None else pts[i]
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


@pytest.fixture(scope="session")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults")
    frames, _ = render_clip("single", seed=3, size=(240, 320), num_frames=48)
    x264 = {"preset": "veryfast", "x264-params": "keyint=16:min-keyint=16:scenecut=0:bframes=0"}

    good = _encode(out / "good.mp4", frames, "libx264", options=x264, container_options={"movflags": "faststart"})
    data = good.read_bytes()
    (out / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    moov_end = _encode(out / "moov_end.mp4", frames, "libx264", options=x264)
    (out / "truncated_moov.mp4").write_bytes(moov_end.read_bytes()[: int(moov_end.stat().st_size * 0.6)])
    moov_end.unlink()
    rng = np.random.default_rng(0)
    garbage = bytearray(data)
    third = len(garbage) // 3
    garbage[third : 2 * third] = rng.integers(0, 256, third, dtype=np.uint8).tobytes()
    (out / "garbage_middle.mp4").write_bytes(bytes(garbage))
    (out / "zero_length.mp4").write_bytes(b"")
    (out / "not_a_video.mp4").write_text("this is a text file, not a video\n" * 20)
    _encode(out / "too_short.mp4", frames[:10], "libx264", options=x264)
    odd, _ = render_clip("single", seed=4, size=(241, 321), num_frames=40)
    _encode(out / "odd_size.mp4", odd, "mpeg4")
    _encode(out / "chroma_444.mp4", frames, "libx264", pix_fmt="yuv444p", options=x264)
    vfr_pts = np.cumsum([0] + [1 if i % 3 else 3 for i in range(1, len(frames))]).tolist()
    _encode(out / "vfr.mp4", frames, "libx264", pts=vfr_pts, options=x264)
    _encode(out / "no_vectors.avi", frames, "mjpeg", pix_fmt="yuvj420p")
    make_clip(out / "static", "static", seed=5, num_frames=48, vp9_twin=False)
    flat = np.full((2, 4320, 7680, 3), 90, np.uint8)
    _encode(out / "huge.mp4", flat, "libx264", options={"preset": "ultrafast"})
    return out


@pytest.fixture(scope="session")
def bad_videos(fault_dir: Path) -> dict[str, Path]:
    """fault name -> path (see EXPECT); "missing" points at a file that does not exist."""
    files = {p.stem: p for p in fault_dir.iterdir() if p.suffix in (".mp4", ".avi") and p.stem != "good"}
    files["missing"] = fault_dir / "missing.mp4"
    assert set(files) == set(EXPECT), set(files) ^ set(EXPECT)
    return files


@pytest.fixture()
def good_video(fault_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a healthy 48-frame H.264 clip."""
    return Path(shutil.copy(fault_dir / "good.mp4", tmp_path / "good.mp4"))
