"""A corpus of real-world video quirks, written with PyAV from synth's moving-object clips (no `ffmpeg` CLI, no
stored media): one small file per kind of camera / phone / film / web file the project is fed, each with what the
pipeline must conclude about it. `python -m mgm.prep.quirks OUT` writes it; tests/test_corpus.py runs every case
through lists -> transcode -> motion cache -> both CPU loaders.

Each `Case` says what FFmpeg outputs (`frames`: the list's num_frames, which the header need not promise),
whether the file itself carries motion vectors (`vectors`), and which notes `mgm-prepare lists` writes about it
(`notes`: "header" the header promises another frame count; "timestamps" timestamps that do not follow output
order; "nvdec" DALI's GPU decoder cannot decode it; "rotation" a display rotation, read as stored).
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mgm.prep.synth import EncodeSpec, encode, render_clip

SIZE, FRAMES, GOP, FPS = (120, 160), 40, 16, 12  # (H, W): tiny clips, so the whole corpus runs in seconds


def _x264(params: str = "", **kw: object) -> Callable[[np.ndarray, Path], None]:
    """libx264 at GOP 16 without scene cuts, plus `params`; kw go to synth.encode (pix_fmt, pts)."""

    def make(frames: np.ndarray, path: Path) -> None:
        x264 = f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0" + (f":{params}" if params else "")
        encode(frames, path, "libx264", EncodeSpec(gop=GOP, fps=FPS), options={"crf": "18", "preset": "veryfast",
               "x264-params": x264}, **kw)  # fmt: skip

    return make


def _plain(codec: str, pix_fmt: str = "yuv420p", **options: str) -> Callable[[np.ndarray, Path], None]:
    def make(frames: np.ndarray, path: Path) -> None:
        encode(frames, path, codec, EncodeSpec(gop=GOP, fps=FPS), options=options, pix_fmt=pix_fmt)

    return make


def _pts_equal_dts(frames: np.ndarray, path: Path) -> None:
    """A B-frame H.264 remuxed with every packet's pts set to its dts (a muxer that only knew decode times): the
    first packet's timestamp now lies before the edit list's start, so FFmpeg decodes it but shows one frame
    fewer than the container holds, and the shown frames' timestamps run out of order."""
    tmp = path.with_name(path.stem + ".src.mp4")
    _x264("bframes=2:b-pyramid=none")(frames, tmp)
    with av.open(str(tmp)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.pts, packet.stream = packet.dts, out
                dst.mux(packet)
    tmp.unlink()


def _by_hand(audio_first: bool = False, rotation: int = 0) -> Callable[[np.ndarray, Path], None]:
    """H.264 like `_x264`, written stream by stream: with an AAC tone as stream 0 (the video is stream 1) and/or
    a display rotation on the video stream."""

    def make(frames: np.ndarray, path: Path) -> None:
        with av.open(str(path), "w") as c:
            audio = c.add_stream("aac", rate=12000) if audio_first else None
            s = c.add_stream("libx264", rate=FPS)
            s.height, s.width = frames.shape[1:3]
            s.pix_fmt, s.time_base = "yuv420p", Fraction(1, FPS)
            s.options = {"crf": "18", "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
            if rotation:
                s.set_display_rotation(rotation)
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                c.mux(s.encode(frame))
                if audio is not None:  # 1/12 s of a tone per frame
                    t = (np.arange(i * 1000, (i + 1) * 1000) / 12000).astype(np.float32)
                    tone = av.AudioFrame.from_ndarray(np.sin(2 * np.pi * 440 * t)[None], "fltp", "mono")
                    tone.sample_rate, tone.pts = 12000, i * 1000
                    c.mux(audio.encode(tone))
            c.mux(s.encode(None))
            if audio is not None:
                c.mux(audio.encode(None))

    return make


def _avi(codec: str, pix_fmt: str = "yuv420p", bframes: int = 0, drop: tuple[int, ...] = (), lie: int = 1):
    """An AVI of `codec`; `drop`: frames written as empty chunks (a capture card's dropped frames: the header
    counts them, FFmpeg outputs nothing for them); `lie`: multiply the header's frame counts (the main header's
    and the stream header's) by this, as some muxers leave them."""

    def make(frames: np.ndarray, path: Path) -> None:
        with av.open(str(path), "w", format="avi") as c:
            s = c.add_stream(codec, rate=FPS)
            s.height, s.width = frames.shape[1:3]
            s.pix_fmt = pix_fmt
            s.codec_context.gop_size = GOP
            if bframes:
                s.codec_context.max_b_frames = bframes
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                for packet in s.encode(frame):
                    if packet.pts in drop:
                        empty = av.Packet(b"")
                        empty.stream, empty.pts, empty.dts, empty.time_base = (
                            s,
                            packet.pts,
                            packet.dts,
                            packet.time_base,
                        )
                        packet = empty
                    c.mux(packet)
            c.mux(s.encode(None))
        if lie > 1:
            patch_avi_frames(path, lie)

    return make


def patch_avi_frames(path: Path, factor: int) -> None:
    """Multiply the frame counts an AVI's headers promise (avih dwTotalFrames, the video strh dwLength, OpenDML
    dmlh dwTotalFrames) by `factor`, in place; the data and its index stay as they are."""
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 8 + 16), (b"strh", 8 + 32), (b"dmlh", 8)):
        pos = data.find(tag)
        if pos >= 0:
            (n,) = struct.unpack_from("<I", data, pos + offset)
            struct.pack_into("<I", data, pos + offset, n * factor)
    path.write_bytes(bytes(data))


@dataclass(frozen=True)
class Case:
    """One quirk: the file `name + suffix`, what it stands for, and what the pipeline must conclude."""

    suffix: str
    about: str
    make: Callable[[np.ndarray, Path], None]
    frames: int = FRAMES  # frames FFmpeg outputs: the list's num_frames
    vectors: bool = True  # the file itself carries motion vectors (before transcoding)
    notes: frozenset[str] = field(default_factory=frozenset)  # what `mgm-prepare lists` notes about it


def _notes(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


_VFR = np.cumsum([0] + [1 if i % 3 else 3 for i in range(1, FRAMES)]).tolist()  # gaps of 3 ticks every 3rd frame
# 1/1000 s ticks with repeats, one of them on the key frame 16 (a muxer rounding a high frame rate): DALI sorts
# its index by timestamp, so a repeated key-frame timestamp tests its seek, too
_REPEATS = [0, 1, 1, 2, 3, 3, 3] + list(range(4, 13)) + [12] + list(range(13, 36))

CASES: dict[str, Case] = {
    "h264_bframes": Case(".mp4", "H.264 with B-frames in a pyramid (phones, YouTube)",
                         _x264("bframes=3:b-pyramid=normal")),
    "h264_pts_eq_dts": Case(".mp4", "H.264 B-frames muxed with pts == dts: one packet more than FFmpeg shows",
                            _pts_equal_dts, frames=FRAMES - 1, notes=_notes("header", "timestamps")),
    "avi_header_lies": Case(".avi", "MPEG-4 AVI whose headers promise 10x the frames it holds",
                            _avi("mpeg4", lie=10), notes=_notes("header")),
    "mp4_edit_list": Case(".mp4", "trimmed phone MP4: an edit list starts 3 frames into the stream",
                          _x264(pts=list(range(-3, FRAMES - 3))), frames=FRAMES - 3,
                          notes=_notes("header", "timestamps")),
    "open_gop": Case(".mp4", "open GOP: B-frames before a key frame refer to the GOP before it",
                     _x264("bframes=3:open-gop=1")),
    "long_gop": Case(".mp4", "one key frame in 250 (web video)", _x264("keyint=250:min-keyint=250:bframes=3")),
    "mpeg4_bframes_avi": Case(".avi", "MPEG-4 Part 2 with B-frames in AVI (DivX/Xvid)", _avi("mpeg4", bframes=2)),
    "msmpeg4_avi": Case(".avi", "MS-MPEG4 v3 in AVI (old Windows captures)", _avi("msmpeg4"), notes=_notes("nvdec")),
    "mjpeg_avi": Case(".avi", "MJPEG in AVI (cameras): intra-only, no vectors", _avi("mjpeg", "yuvj420p"),
                      vectors=False),
    "cinepak_avi": Case(".avi", "Cinepak AVI with 3 dropped frames (empty chunks the header counts)",
                        _avi("cinepak", "rgb24", drop=(10, 11, 25)), frames=FRAMES - 3, vectors=False,
                        notes=_notes("header", "nvdec")),
    "h264_10bit": Case(".mp4", "10-bit H.264 (High 10)", _x264(pix_fmt="yuv420p10le"), notes=_notes("nvdec")),
    "h264_422": Case(".mp4", "4:2:2 H.264 (High 4:2:2, camera intermediates)", _x264(pix_fmt="yuv422p"),
                     notes=_notes("nvdec")),
    "h264_fullrange": Case(".mp4", "full-range yuvj420p H.264 (phones)", _x264(pix_fmt="yuvj420p")),
    "rotated": Case(".mp4", "phone video with a 90 degree display rotation", _by_hand(rotation=90),
                    notes=_notes("rotation")),
    "vfr": Case(".mp4", "variable frame rate (phones)", _x264(pts=_VFR)),
    "hevc": Case(".mp4", "HEVC (phones): a transcode source", _plain("libx265", **{"x265-params": "log-level=none"}),
                 vectors=False),
    "vp9_odd_timestamps": Case(".webm", "VP9 WebM (SSv2) with repeated and uneven timestamps",
                               lambda f, p: encode(f, p, "libvpx-vp9", EncodeSpec(gop=GOP, fps=1000), pts=_REPEATS),
                               vectors=False, notes=_notes("timestamps")),
    "av1": Case(".mkv", "AV1 in Matroska: a transcode source", _plain("libsvtav1", preset="12"), vectors=False),
    "audio_first": Case(".mp4", "an audio stream before the video stream (stream 0 is audio)",
                        _by_hand(audio_first=True)),
}  # fmt: skip


def make_corpus(out: str | Path, names: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write the files of `names` (default: every case) into `out`; returns name -> path. Every case shows the
    same moving object (synth's "single" clip, 160x120, 40 frames), so the cases compare."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames, _ = render_clip("single", seed, SIZE, FRAMES)
    paths = {}
    for name in names or list(CASES):
        case = CASES[name]
        path = out / (name + case.suffix)
        if not path.exists():
            case.make(frames, path)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    """`python -m mgm.prep.quirks OUT [NAME ...]`: write the quirk corpus."""
    p = argparse.ArgumentParser(prog="python -m mgm.prep.quirks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("out")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"cases (default: all): {', '.join(CASES)}")
    a = p.parse_args(argv)
    unknown = sorted(set(a.names) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    for name, path in make_corpus(a.out, a.names or None).items():
        print(f"{name:20s} {path}  {CASES[name].about}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
