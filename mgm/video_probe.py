"""Probing a whole file, as `mgm-prepare lists` and `transcode` do: every frame decoded once, in output order, to
count them (the list's `num_frames`, see mgm.video for the rule), judge truncation and damage, and describe the
stream (codec, pixel format, key frames, motion vectors, rotation, whether the timestamps follow output order).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import av

from mgm.vectors import has_vectors
from mgm.video import VideoError, open_video, source_name


def head_bytes(source: str | os.PathLike | bytes, n: int = 256) -> bytes:
    """The first `n` bytes of a file (path or bytes); b"" when unreadable."""
    if isinstance(source, bytes | bytearray):
        return bytes(source[:n])
    try:
        with open(source, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _vint(data: bytes, pos: int) -> tuple[int | None, int]:
    """An EBML variable-length size at `pos`: (value or None when "unknown", its length in bytes)."""
    if pos >= len(data) or data[pos] == 0:
        return None, 1
    length = 8 - data[pos].bit_length() + 1
    value = data[pos] & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = value << 8 | b
    return (None if value == (1 << (7 * length)) - 1 else value), length


def declared_end(container: av.container.InputContainer, head: bytes) -> int:
    """Bytes the container's own structure says the file holds (0 when it does not say): where the last video
    sample of an MP4/MOV index ends, the RIFF size of an AVI, the end of a Matroska/WebM Segment. `head`: the
    file's first bytes. More than the file's size means data the container points to was cut off."""
    fmt = container.format.name
    if "mp4" in fmt or "mov" in fmt:
        return max((e.pos + e.size for e in container.streams.video[0].index_entries), default=0)
    if fmt == "avi" and head[:4] == b"RIFF" and len(head) >= 8:
        return 8 + int.from_bytes(head[4:8], "little")
    if "matroska" in fmt:  # EBML header element, then the Segment holding everything else
        pos = 0
        for element in (b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67"):
            if head[pos : pos + 4] != element:
                return 0
            size, length = _vint(head, pos + 4)
            if size is None:  # unknown size (a live stream): nothing promised
                return 0
            pos += 4 + length + size
        return pos
    return 0


def _read_of(n: int, promised: int | None) -> str:
    return f"after {n} frames" + (f" (the header promises {promised})" if promised else "")


@dataclass
class VideoInfo:
    """What `probe` found in a file's first video stream."""

    codec: str  # FFmpeg's codec name (h264, hevc, vp9, av1, mpeg4, msmpeg4, mjpeg, cinepak, ...)
    size: tuple[int, int]  # (H, W): of the last decoded frame when decoded, else from the headers (0 if unknown)
    packets: int | None = None  # packets with data, counted without decoding (a hint of the frame count)
    frames: int | None = None  # frames FFmpeg outputs, counted by decoding them all: THE frame count
    promised: int | None = None  # frames the header promises (a hint; None when it says nothing)
    key_frames: list[int] = field(default_factory=list)  # indices of the key frames (when decoded)
    has_mvs: bool = False  # the first `mv_frames` inter frames carry motion vectors (when decoded)
    pix_fmt: str = ""  # of the decoded frames (yuv420p, yuv420p10le, yuv422p, yuvj420p, ...)
    rotation: int = 0  # display rotation in degrees the file asks for; frames are always read as stored
    pts_order: bool = True  # (when decoded) every packet gives one frame, output in the order of its timestamp
    short_by: int = 0  # bytes the container's own size fields promise beyond the end of the file (cut short)


def probe(
    source: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    decode: bool = False,
    mv_frames: int = 0,
    format: str | None = None,
) -> VideoInfo:
    """Frame size, codec and frame count of a file's first video stream; VideoError (naming it) if unusable.

    decode=False only demuxes (~1 ms for a short clip) and counts packets; decode=True decodes every frame
    (`decode_checked`: truncation and damage are errors) and counts the frames, the key frames, whether the first
    `mv_frames` inter frames carry motion vectors (`has_vectors`: read from the data, whatever the codec) and
    whether the timestamps follow output order.
    """
    name = source_name(source, name)
    with open_video(source, name=name, format=format) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        info = VideoInfo(cc.codec.canonical_name, (cc.height, cc.width), promised=stream.frames or None)
        info.short_by = max(0, declared_end(container, head_bytes(source)) - container.size)
        if not decode:
            try:
                info.packets = sum(1 for p in container.demux(stream) if p.size)
            except (av.FFmpegError, OSError) as e:
                raise VideoError(name, "decode_error", str(e)) from None
            return info
        if mv_frames > 0:
            cc.options = {"flags2": "+export_mvs"}
        seen: list[tuple[int | None, bool]] = []
        out_pts: list[int | None] = []
        inter: list[av.VideoFrame] = []
        n = 0
        try:
            for n, frame in enumerate(decode_checked(container, name, seen), start=1):
                if n == 1:
                    info.pix_fmt, info.rotation = frame.format.name, int(frame.rotation or 0)
                info.size = (frame.height, frame.width)
                out_pts.append(frame.pts)
                if frame.key_frame:
                    info.key_frames.append(n - 1)
                elif len(inter) < mv_frames:
                    inter.append(frame)
        except (av.FFmpegError, OSError) as e:  # anything else the container throws
            raise VideoError(name, "decode_error", f"after {n} frames: {e}", n) from None
        info.frames, info.has_mvs = n, has_vectors(inter)
        kept = [p for p, discard in seen if not discard]
        info.pts_order = (
            len(kept) == len(seen) == n
            and None not in out_pts
            and all(a < b for a, b in zip(out_pts, out_pts[1:], strict=False))
        )
    return info


def decode_checked(
    container: av.container.InputContainer, path: str, seen: list[tuple[int | None, bool]] | None = None
) -> Iterator[av.VideoFrame]:
    """Every frame FFmpeg outputs from the first video stream, in output order. Raises VideoError: `truncated`
    for a packet cut off by the end of the file (a short read; decodable or not), `decode_error` for other corrupt
    data, `no_frames` when nothing decodes. How many frames the header promises does not matter, nor whether the
    container's size fields promise more bytes (`VideoInfo.short_by`: a note, not an error, when every packet
    reads and decodes). `seen` collects (pts, discarded) of every packet."""
    stream = container.streams.video[0]
    promised, size = stream.frames or None, container.size
    n, cut = 0, False
    for packet in container.demux(stream):
        cut = cut or packet.is_corrupt
        if seen is not None and packet.size:
            seen.append((packet.pts, packet.is_discard))
        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as e:
            if cut or (packet.pos is not None and packet.pos + packet.size >= size):
                raise VideoError(path, "truncated", f"data ends at byte {size}: {_read_of(n, promised)}", n) from None
            raise VideoError(path, "decode_error", f"{_read_of(n, promised)}: {e}", n) from None
        for frame in frames:
            n += 1
            yield frame
    if n == 0:
        raise VideoError(path, "no_frames", "no frame decodes")
    if cut:
        detail = f"data ends at byte {size}, in the middle of a packet: {_read_of(n, promised)}"
        raise VideoError(path, "truncated", detail, n)
