"""Broken inputs for the fault-injection suite and what each component should conclude about them.

`make_fault_files(out)` writes every fault as the file a file list points to (H.264 `.mp4`, or MJPEG `.avi`
for the codec without motion vectors) plus a VP9 `.webm` twin carrying the same fault, which is what DALI's
CPU decoder reads. A healthy clip `good.mp4` / `good.webm` is written beside them. Nothing is stored in the
repo: the conftest calls this once per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgm.prep import synth
from mgm.prep.synth import render_clip

GOOD_FRAMES = 48  # frames of good.mp4 (and of every fault made from it)
SHORT_FRAMES = 10  # too_short: fewer than one 8-frame clip at stride 2 (15 source frames) covers
HUGE_SIZE = (4320, 7680)  # (H, W): 8K

# fault -> what a full read of the file concludes:
#   unreadable: no complete read (error naming the file), ok: readable with motion vectors,
#   short: readable, fewer frames than one clip, no_vectors: readable, the codec carries no motion vectors,
#   static: readable, vectors present but (almost) no motion, missing: the file does not exist.
EXPECT = {
    "truncated": "unreadable",  # moov at the front, stream cut at 40%: some frames then an early end
    "truncated_moov": "unreadable",  # moov at the end, cut off: no index at all
    "garbage_middle": "unreadable",  # random bytes over the middle third of the stream
    "zero_length": "unreadable",
    "not_a_video": "unreadable",
    "missing": "missing",
    "too_short": "short",  # 10 frames
    "odd_size": "ok",  # 321x241 MPEG-4 Part 2 (x264 refuses odd sizes in 4:2:0)
    "chroma_444": "ok",  # H.264 High 4:4:4 (NVDEC refuses it; PyAV decodes it)
    "vfr": "ok",  # variable frame rate: irregular timestamps
    "no_vectors": "no_vectors",  # MJPEG: intra-only, no motion vectors
    "static": "static",  # nothing moves
    "huge": "ok",  # 7680x4320: large frames must be handled or rejected clearly, never exhaust memory
}
# faults whose every read fails, whatever part of the file a clip needs
ALWAYS_BAD = ("truncated_moov", "zero_length", "not_a_video", "missing")
# faults that hold a complete, decodable stream
READABLE = tuple(k for k, v in EXPECT.items() if v in ("ok", "short", "no_vectors", "static"))

_X264 = {"preset": "ultrafast", "x264-params": "keyint=16:min-keyint=16:scenecut=0:bframes=0"}
_VP9 = {"deadline": "realtime", "cpu-used": "8", "g": "16", "crf": "30", "b": "0"}


def encode(
    path: Path,
    frames: np.ndarray,
    codec: str,
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode (F, H, W, 3) uint8 RGB frames at 12 fps (timestamps `pts` in 1/12 s, default 0, 1, 2, ...)."""
    return synth.encode(frames, path, codec, synth.EncodeSpec(fps=12), options=options or {}, pix_fmt=pix_fmt,
                        pts=pts, container_options=container_options)  # fmt: skip


def _garble(data: bytes, seed: int = 0) -> bytes:
    """Random bytes over the middle third."""
    out = bytearray(data)
    third = len(out) // 3
    out[third : 2 * third] = np.random.default_rng(seed).integers(0, 256, third, dtype=np.uint8).tobytes()
    return bytes(out)


def _both(stem: Path, frames: np.ndarray, pix_fmt: str = "yuv420p", pts: list[int] | None = None,
          main: str = "libx264", suffix: str = ".mp4") -> None:  # fmt: skip
    main_opts = _X264 if main == "libx264" else {}
    encode(stem.with_suffix(suffix), frames, main, pix_fmt, pts, options=main_opts)
    vp9_fmt = "yuv420p" if pix_fmt.startswith("yuvj") else pix_fmt
    encode(stem.with_suffix(".webm"), frames, "libvpx-vp9", vp9_fmt, pts, options=_VP9)


def make_fault_files(out: Path) -> dict[str, Path]:
    """Write good.mp4/.webm and every fault of EXPECT under `out`; returns fault -> path (".mp4"/".avi")."""
    out.mkdir(parents=True, exist_ok=True)
    frames, _ = render_clip("single", seed=3, size=(120, 160), num_frames=GOOD_FRAMES)
    good = encode(out / "good.mp4", frames, "libx264", options=_X264, container_options={"movflags": "faststart"})
    good_webm = encode(out / "good.webm", frames, "libvpx-vp9", options=_VP9)
    data, webm = good.read_bytes(), good_webm.read_bytes()

    (out / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    (out / "truncated.webm").write_bytes(webm[: int(len(webm) * 0.4)])
    moov_end = encode(out / "moov_end.mp4", frames, "libx264", options=_X264).read_bytes()
    (out / "moov_end.mp4").unlink()
    (out / "truncated_moov.mp4").write_bytes(moov_end[: int(len(moov_end) * 0.6)])
    (out / "truncated_moov.webm").write_bytes(webm[:120])  # the EBML header and little else
    (out / "garbage_middle.mp4").write_bytes(_garble(data))
    (out / "garbage_middle.webm").write_bytes(_garble(webm))
    for suffix in (".mp4", ".webm"):
        (out / f"zero_length{suffix}").write_bytes(b"")
        (out / f"not_a_video{suffix}").write_text("this is a text file, not a video\n" * 20)
    _both(out / "too_short", frames[:SHORT_FRAMES])
    odd, _ = render_clip("single", seed=4, size=(121, 161), num_frames=40)
    _both(out / "odd_size", odd, main="mpeg4")
    _both(out / "chroma_444", frames, pix_fmt="yuv444p")
    vfr_pts = np.cumsum([0] + [1 if i % 3 else 3 for i in range(1, len(frames))]).tolist()
    _both(out / "vfr", frames, pts=vfr_pts)
    _both(out / "no_vectors", frames, pix_fmt="yuvj420p", main="mjpeg", suffix=".avi")
    still, _ = render_clip("static", seed=5, size=(120, 160), num_frames=GOOD_FRAMES)
    _both(out / "static", still)
    flat = np.full((2, *HUGE_SIZE, 3), 90, np.uint8)
    encode(out / "huge.mp4", flat, "libx264", options={"preset": "ultrafast"})
    encode(out / "huge.webm", flat, "libvpx-vp9", options=_VP9)

    return fault_paths(out)


def fault_paths(out: Path) -> dict[str, Path]:
    """fault -> the path a file list names for it (".mp4", or ".avi" for no_vectors)."""
    files = {k: out / f"{k}.mp4" for k in EXPECT}
    files["no_vectors"] = out / "no_vectors.avi"
    return files
