"""The video layer: with mgm.video_probe (whole-file probing for `lists` and `transcode`), the one place that reads
video with PyAV: open, frame numbering, span decode, RGB (the motion-vector records FFmpeg exports with the
frames: mgm.vectors).

Frames of a file: the frames FFmpeg outputs when it decodes the file from its start, in output order; frame i is
the i-th of them, counting from 0. `mgm-prepare lists` counts them once (`mgm.video_probe.probe`, the list's
`num_frames`) and every reader trusts that count. A header's or container's frame count is a hint, never a
verdict: B-frame tails, edit lists (FFmpeg discards the frames before the edit's start), pts == dts muxes and AVI
headers make it differ from the truth. Only a read or decode error (a packet cut off by the end of the file
among them) makes a file `truncated` / `decode_error`.

Frame order: the decoder's output order, which needs no timestamps. Timestamps only serve to start decoding at a
key frame and still know which frame comes out: `frame_numbers` gives each packet (decode order) the rank of its
timestamp among the packets whose frames FFmpeg outputs, which is the frame's output index when the timestamps
are sound. `Packets.frames` checks that as it decodes: a frame whose timestamp goes backwards (pts == dts with
B-frames, say) raises `FrameOrderError`, and the read starts again from the first packet, counting frames
(`demux(count=True)`). Missing or repeated timestamps, or a packet count that differs from the list's frame count,
mean counting from the start right away. The same index is then the same picture in every reader and in DALI's
CPU decoder, `decoders.video(frames=...)`: it sorts its packet index by timestamp, seeks to the key frame before a
wanted frame and counts the frames the decoder outputs from there (tests/test_corpus.py: VP9 with repeated and
uneven timestamps, one repeat on a key frame, and MJPEG, seeking forward and back). DALI's GPU decoder, as its
source reads (frames_decoder_gpu.cc), matches each decoded picture to its packet's timestamp instead, so a file
whose timestamps do not follow output order (`VideoInfo.pts_order` False) is one `lists` tells you to transcode.

Errors are one type, `VideoError`, naming the file with a one-word `reason` (for rejects lists) and a `detail`;
callers wrap it in their own (`MotionReadError`, the loaders' `BadVideoError`, `mgm-prepare`'s reject reasons).
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np

# Probing when opening: headers only, no decoding (see `open_video`)
_OPEN_OPTIONS = {"skip_frame": "all", "analyzeduration": "1"}
_OPEN_ERRORS = (av.FFmpegError, OSError, UnicodeDecodeError, ValueError)  # what av.open raises on a bad file
SEEK_LEAP = 10  # a wanted frame further ahead, past a key frame: restart there (DALI's decoder does the same)
_REORDER = 16  # packets a frame can be decoded after its place in output order (the deepest B-frame pyramid)


class VideoError(RuntimeError):
    """A video cannot be read (fully). `path` names it; `reason` is one word for rejects lists (missing, empty,
    unreadable, no_video_stream, no_frames, truncated, decode_error; changed: fewer frames than its file list
    says), `detail` says more, `frames_read` counts the frames decoded before the error."""

    def __init__(self, path: str, reason: str, detail: str, frames_read: int = 0) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail, self.frames_read = path, reason, detail, frames_read


def open_video(
    source: str | os.PathLike | bytes, *, name: str | None = None, format: str | None = None
) -> av.container.InputContainer:
    """Open a file (path, or its encoded bytes held in memory; `name` then names it) with a video stream.

    FFmpeg's stream probing decodes the first frames (a whole key frame: most of the cost of opening) only to
    learn things the decoder works out again; `skip_frame=all` lets it parse the headers and stop there (FFmpeg
    then logs, when its logging is on, that the pixel format is unknown: the decoder finds it). A file whose
    stream parameters only come from decoding is opened again the ordinary way. Raises VideoError: missing,
    empty, unreadable, no_video_stream.
    """
    in_memory, name = isinstance(source, bytes | bytearray), source_name(source, name)
    for options in (_OPEN_OPTIONS, None):
        try:
            container = av.open(io.BytesIO(source) if in_memory else os.fspath(source), format=format, options=options)
        except _OPEN_ERRORS as e:
            if not in_memory and not os.path.isfile(source):
                raise VideoError(name, "missing", str(e)) from None
            if (len(source) if in_memory else os.path.getsize(source)) == 0:  # FFmpeg only says "Invalid data"
                raise VideoError(name, "empty", f"file is empty (0 bytes): {e}") from None
            raise VideoError(name, "unreadable", str(e)) from None
        video = container.streams.video
        if video and (options is None or (video[0].codec_context is not None and video[0].codec_context.width > 0)):
            return container
        container.close()
    raise VideoError(name, "no_video_stream", "container has no video stream")


def source_name(source: str | os.PathLike | bytes, name: str | None) -> str:
    """What messages call `source`: `name` if given, else its path, else "<bytes>"."""
    return name or ("<bytes>" if isinstance(source, bytes | bytearray) else os.fspath(source))


# --------------------------------------------------------------------------------------------- frame numbering
class FrameOrderError(RuntimeError):
    """Frames came out of the decoder in an order their timestamps contradict: numbering by timestamp is wrong for
    this file, so the read starts again counting frames from the first packet (`demux(count=True)`)."""


def frame_numbers(pts: Sequence[int | None], discard: Sequence[bool] | None = None) -> np.ndarray | None:
    """The frame index of each packet (packets in decode order): the rank of its timestamp among the packets whose
    frames FFmpeg outputs, i.e. its place in output order; -1 for a discarded packet (before an edit list's
    start: decoded, as a reference, but never output). None when a timestamp is missing or repeated."""
    keep = np.ones(len(pts), bool) if discard is None else ~np.asarray(discard, bool)
    kept = [p for p, k in zip(pts, keep.tolist(), strict=True) if k]
    if not kept or any(p is None for p in kept) or len(set(kept)) != len(kept):
        return None
    index = np.full(len(pts), -1, np.int64)
    index[np.flatnonzero(keep)[np.argsort(np.asarray(kept, np.int64), kind="stable")]] = np.arange(len(kept))
    return index


@dataclass
class Packets:
    """A file's video packets in decode order, numbered by the frame each one gives (`frame_numbers`), or not
    numbered (index None): frames are then counted from the first packet."""

    path: str
    stream: av.VideoStream
    packets: list[av.Packet]
    index: np.ndarray | None  # (P,) frame index of each packet (-1: its frame is discarded), or None: counted
    complete: bool  # demuxing reached the end of the file with no sign of missing data
    error: str = ""
    counted_seeks: bool = False  # counted frames may start at clean key frames (see `_count_starts`)

    @functools.cached_property
    def frames_hint(self) -> int:
        """Packets whose frames FFmpeg outputs: the frame count when every packet decodes to one frame."""
        return sum(1 for p in self.packets if not p.is_discard)

    def check_listed(self, num_frames: int | None) -> None:
        """VideoError (`changed`) naming both counts when the file holds fewer frames than its file list says
        (truncated or replaced since `mgm-prepare lists`): a packet gives at most one frame."""
        if num_frames is not None and self.frames_hint < num_frames:
            why = f" ({self.error})" if self.error else ""
            detail = f"the file holds {self.frames_hint} frames, its file list says {num_frames}{why}"
            raise VideoError(self.path, "changed", detail)

    @property
    def reordered(self) -> bool:
        """Some packet is presented before one decoded earlier: the stream has B-frames."""
        if self.index is None:
            return False
        kept = self.index[self.index >= 0]
        return bool((np.diff(kept) < 0).any())

    def packet_of(self, i: int) -> int:
        """Position of frame i's packet (the packets must be numbered)."""
        return int(np.flatnonzero(self.index == i)[0])

    @functools.cached_property
    def _count_starts(self) -> dict[int, int]:
        """{packet position: frame index} of the key frames a counted read may start at: clean random-access points
        (`clean_key`) with every packet before them giving one frame, so the frames before one are the packets
        before it that FFmpeg shows. Empty unless `counted_seeks` (a list count equal to those packets)."""
        if not self.counted_seeks:
            return {}
        cc = self.stream.codec_context
        starts, n = {}, 0
        for j, p in enumerate(self.packets):
            if j and p.is_keyframe and clean_key(p, cc.name, cc.extradata):
                starts[j] = n
            n += not p.is_discard
        return starts

    def key_before(self, i: int) -> int:
        """Position of the key frame packet presented last at or before frame i: where decoding frame i starts
        (0, the first packet, when frames are counted and no clean key frame comes before it)."""
        if i <= 0:
            return 0
        if self.index is None:
            return max((j for j, n in self._count_starts.items() if n <= i), default=0)
        keys = [j for j, p in enumerate(self.packets) if p.is_keyframe and 0 <= self.index[j] <= i]
        return max(keys, key=lambda j: self.index[j]) if keys else 0

    def frames(self, first: int = 0, skip_keys: bool = False) -> Iterator[tuple[int, av.VideoFrame | None]]:
        """(index, frame) of every frame decoded from packet `first` (a key frame) on, in output order; frames
        presented before packet `first`'s (leading frames of an open GOP) are dropped. skip_keys: see
        `decode_packets` (a key frame comes as (index, None)). VideoError (decode_error) on corrupt data;
        FrameOrderError when numbered packets turn out to contradict the output order. A counted read whose key
        frame does not come out first starts again from the first packet (before yielding anything)."""
        if self.index is None and first and first not in self._count_starts:
            raise ValueError(f"{self.path}: frames are counted from the first packet or a clean key frame, not {first}")
        try:
            yield from self._frames(first, skip_keys)
        except _UncleanStart:
            self.stream.codec_context.flush_buffers()
            yield from self._frames(0, skip_keys)

    def _frames(self, first: int, skip_keys: bool) -> Iterator[tuple[int, av.VideoFrame | None]]:
        numbers = None
        if self.index is not None:
            numbers = dict(zip([p.pts for p in self.packets], self.index.tolist(), strict=True))
        first_index = int(self.index[first]) if numbers is not None and first else 0
        last, decoded = (self._count_starts.get(first, 0) if numbers is None else 0) - 1, 0
        try:
            for frame, key_pts in decode_packets(self.stream.codec_context, self.packets[first:], skip_keys):
                if numbers is None:
                    if first and not decoded and frame is not None and not frame.key_frame:
                        raise _UncleanStart
                    i = last + 1
                else:
                    pts = frame.pts if frame is not None else key_pts
                    i = numbers.get(pts, -2)
                    if i == -2:
                        raise FrameOrderError(f"{self.path}: a frame with timestamp {pts}, which no packet has")
                    if i < first_index:
                        continue  # a leading frame of an open GOP, or a discarded one
                    if i <= last:
                        raise FrameOrderError(f"{self.path}: frame {i} (timestamp {pts}) came out after frame {last}")
                last = i
                decoded += 1
                yield i, frame
        except av.FFmpegError as e:
            raise VideoError(self.path, "decode_error", str(e), decoded) from e
        if numbers is not None and first == 0 and decoded != self.frames_hint:  # a packet gave no frame (or two)
            raise FrameOrderError(f"{self.path}: {decoded} frames from {self.frames_hint} numbered packets")


class _UncleanStart(Exception):
    """A counted read's first frame is not the key frame it started at (see Packets.frames)."""


def clean_key(packet: av.Packet, codec: str, extradata: bytes | None) -> bool:
    """Whether a key packet is a clean random-access point: its frame is shown first among those decoded from it
    on, after every frame decoded before it (VP8/VP9 key frames, MJPEG, H.264 IDR pictures; not an open GOP's
    I-frame, whose leading B-frames are shown before it). Lets a read without usable timestamps start there."""
    if codec in ("vp8", "vp9", "mjpeg"):
        return True
    if codec != "h264":
        return False
    data = bytes(packet)
    if extradata and extradata[0] == 1:  # avcC (MP4, MKV): NAL units prefixed by their length
        size, pos = (extradata[4] & 3) + 1, 0
        while pos + size < len(data):
            n = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            if data[pos] & 0x1F in (1, 5):  # the first slice says it: 5 = IDR
                return data[pos] & 0x1F == 5
            pos += n
        return False
    for m in re.finditer(b"\x00\x00\x01", data):  # Annex B (raw streams, MPEG-TS): start codes
        if m.end() < len(data) and data[m.end()] & 0x1F in (1, 5):
            return data[m.end()] & 0x1F == 5
    return False


def demux(
    container: av.container.InputContainer, path: str, *, num_frames: int | None = None, count: bool = False
) -> Packets:
    """The packets of the first video stream, numbered (unless `count`, or the timestamps are missing or repeated,
    or `num_frames` (the list's frame count) differs from the packets that give frames: then counted, from the
    first packet or, with a list count equal to those packets, from a clean key frame: `clean_key`).

    Damage ends demuxing but keeps what came before it (the frames read are worth reporting): `complete` is then
    False and `error` says why (a read error, or a last packet cut off: as `decode_checked` judges it)."""
    stream = container.streams.video[0]
    packets, error = [], ""
    try:
        for pkt in container.demux(stream):
            if pkt.size:
                packets.append(pkt)
    except av.FFmpegError as e:
        error = str(e)
    if not error and any(p.is_corrupt for p in packets):
        error = f"data ends at byte {container.size}, in the middle of a packet"
    pk = Packets(path, stream, packets, None, not error, error)
    if not count:
        pk.index = frame_numbers([p.pts for p in packets], [p.is_discard for p in packets])
    if num_frames is not None and pk.frames_hint != num_frames:
        pk.index = None
    # counting from a key frame needs every packet before it to give one frame: the list's count says so
    pk.counted_seeks = pk.index is None and num_frames == pk.frames_hint
    return pk


def decode_packets(
    cc: av.CodecContext, packets: list[av.Packet], skip_keys: bool = False
) -> Iterator[tuple[av.VideoFrame | None, int]]:
    """Decoded frames of `packets` then of the flush: (frame, 0); with skip_keys, (None, pts) for a key frame.

    Before a skipped key frame the decoder is drained and reset, so the P-frames after it start afresh, exactly
    as a read starting there would (their vectors do not depend on what the decoder held before).
    """
    for packet in packets:
        if skip_keys and packet.is_keyframe:
            yield from ((f, 0) for f in cc.decode(None))
            cc.flush_buffers()
            yield None, int(packet.pts)
            continue
        yield from ((f, 0) for f in cc.decode(packet))
    yield from ((f, 0) for f in cc.decode(None))


def frames_present(container: av.container.InputContainer, needed: int) -> int:
    """Frames the file holds, counted from its packets without decoding, up to `needed` (+ a reorder margin: the
    demuxing stops there). Fewer than `needed` means the file ends before frame needed - 1."""
    n = 0
    try:
        for pkt in container.demux(container.streams.video[0]):
            if pkt.size and not pkt.is_discard and not pkt.is_corrupt:
                n += 1
                if n >= needed + _REORDER:
                    break
    except av.FFmpegError:
        pass  # damage: what came before it counts
    return n


# --------------------------------------------------------------------------------------------- chosen frames
def iter_frames(
    path: str, indices: Sequence[int], num_frames: int | None = None
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) of each distinct frame at `indices`, in output order, from one decode starting at the last
    key frame at or before the first wanted frame (restarted at a later key frame to skip a gap of more than SEEK_LEAP
    frames that holds one: the clips of data.repeat); `num_frames`: the list's frame count. When the file's
    timestamps turn out not to follow output order, the decode starts again from the first packet and the wanted
    frames come again, renumbered (the later one of an index is right). VideoError if the file cannot be read."""
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    try:
        yield from _iter_frames(path, wanted, num_frames, count=False)
    except FrameOrderError:
        yield from _iter_frames(path, wanted, num_frames, count=True)


def _iter_frames(
    path: str, wanted: list[int], num_frames: int | None, count: bool
) -> Iterator[tuple[int, av.VideoFrame]]:
    todo, last = set(wanted), wanted[-1]
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", 1  # workers parallelize over clips: threads would fight
        pk = demux(container, os.fspath(path), num_frames=num_frames, count=count)
        pk.check_listed(num_frames)
        start: int | None = pk.key_before(wanted[0])
        while start is not None:
            frames, start = pk.frames(start), None
            for i, frame in frames:
                if i in todo:
                    todo.discard(i)
                    yield i, frame
                if i >= last:
                    return
                ahead = min(todo, default=i)
                if ahead - i > SEEK_LEAP and (key := _key_after(pk, i, ahead)) is not None:
                    start = key  # far-apart wanted frames (several clips of one video): skip the gap
                    break
            frames.close()
            stream.codec_context.flush_buffers()


def _key_after(pk: Packets, i: int, ahead: int) -> int | None:
    """Packet of the key frame a decode of frame `ahead` starts at, when that key frame comes after frame `i`."""
    key = pk.key_before(ahead)
    at = int(pk.index[key]) if pk.index is not None else pk._count_starts.get(key, 0)
    return key if at > i else None


def decode_frames(path: str, indices: Sequence[int], num_frames: int | None = None) -> dict[int, np.ndarray]:
    """RGB frames {index: (H, W, 3) uint8} at `indices`, from one decode (see `iter_frames`)."""
    return {i: to_rgb(frame) for i, frame in iter_frames(path, indices, num_frames)}


@functools.cache
def _reformatter() -> av.video.reformatter.VideoReformatter:
    return av.video.reformatter.VideoReformatter()


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, through one reused single-threaded swscale context.

    `frame.to_ndarray(format="rgb24")` builds a new swscale context per frame, with a thread pool by default:
    ~0.3 ms of set-up per frame, several times the conversion itself at 320x240.
    """
    return _reformatter().reformat(frame, format="rgb24", threads=1).to_ndarray()
