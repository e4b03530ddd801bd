"""The video layer: the one module that reads video with PyAV (open, probe, frame numbering, span decode, RGB,
the motion-vector records FFmpeg exports).

Frame numbering: frame i is the i-th frame FFmpeg outputs, in presentation (output) order, counting from 0:
the numbering DALI's `decoders.video(frames=...)` uses, so an index the sampler picks means the same picture to
the DALI graph, the CPU loader and the motion reader. Two functions hold the rule, side by side:
`frame_numbers` numbers a file's packets (decode order) by the rank of their timestamps, and `Packets.frames`
gives every decoded frame the number of the packet with its timestamp. When a timestamp is missing or repeated
the packets get no numbers and the frames are numbered in the order the decoder outputs them, from the start of
the file. Container frame counts (the header's, the number of packets) are hints, not the count of frames.

Errors are one type, `VideoError`, naming the file with a one-word `reason` (for rejects lists) and a `detail`;
callers wrap it in their own (`MotionReadError`, the loaders' `BadVideoError`, `mgm-prepare`'s reject reasons).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import av
import numpy as np

# Codecs whose FFmpeg decoder can export motion vectors (DESIGN: Motion vectors).
MV_CODECS = {"h264", "mpeg4", "h263", "mpeg1video", "mpeg2video", "msmpeg4v2", "msmpeg4v3"}
# Probing when opening: headers only, no decoding (see `open_video`)
_OPEN_OPTIONS = {"skip_frame": "all", "analyzeduration": "1"}
_OPEN_ERRORS = (av.FFmpegError, OSError, UnicodeDecodeError, ValueError)  # what av.open raises on a bad file
# FFmpeg's AVMotionVector (libavutil/motion_vector.h), as PyAV's to_ndarray() describes it
MV_DTYPE = np.dtype(
    {
        "names": [
            "source",
            "w",
            "h",
            "src_x",
            "src_y",
            "dst_x",
            "dst_y",
            "flags",
            "motion_x",
            "motion_y",
            "motion_scale",
        ],
        "formats": ["<i4", "u1", "u1", "<i2", "<i2", "<i2", "<i2", "<u8", "<i4", "<i4", "<u2"],
        "offsets": [0, 4, 5, 6, 8, 10, 12, 16, 24, 28, 32],
        "itemsize": 40,
        "aligned": True,
    }
)


class VideoError(RuntimeError):
    """A video cannot be read (fully). `path` names it; `reason` is one word for rejects lists (missing, empty,
    unreadable, no_video_stream, no_frames, truncated, decode_error), `detail` says more, `frames_read` counts
    the frames decoded before the error."""

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
    in_memory, name = isinstance(source, bytes | bytearray), _name(source, name)
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


def _name(source: str | os.PathLike | bytes, name: str | None) -> str:
    return name or ("<bytes>" if isinstance(source, bytes | bytearray) else os.fspath(source))


# --------------------------------------------------------------------------------------------- probing
@dataclass
class VideoInfo:
    """What `probe` found in a file's first video stream."""

    codec: str
    size: tuple[int, int]  # (H, W): of the last decoded frame when decoded, else from the headers (0 if unknown)
    packets: int | None = None  # packets with data, counted without decoding (a hint of the frame count)
    frames: int | None = None  # frames FFmpeg outputs, counted by decoding them all
    key_frames: list[int] = field(default_factory=list)  # indices of the key frames (when decoded)
    has_mvs: bool = False  # one of the first `mv_frames` inter frames carries motion vectors (when decoded)


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
    (`decode_checked`: truncation and damage are errors) and counts the frames, the key frames and whether the
    first `mv_frames` inter frames carry motion vectors.
    """
    name = _name(source, name)
    with open_video(source, name=name, format=format) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        info = VideoInfo(cc.name, (cc.height, cc.width))
        n = 0
        try:
            if not decode:
                info.packets = sum(1 for p in container.demux(stream) if p.size)
                return info
            wants_mvs = mv_frames > 0 and info.codec in MV_CODECS
            if wants_mvs:
                cc.options = {"flags2": "+export_mvs"}
            inter_seen = 0
            for n, frame in enumerate(decode_checked(container, name), start=1):
                info.size = (frame.height, frame.width)
                if frame.key_frame:
                    info.key_frames.append(n - 1)
                elif wants_mvs and not info.has_mvs and inter_seen < mv_frames:
                    inter_seen += 1
                    mvs = frame.side_data.get("MOTION_VECTORS")
                    info.has_mvs = mvs is not None and len(mvs) > 0
        except (av.FFmpegError, OSError) as e:  # anything else the container throws
            raise VideoError(name, "decode_error", f"after {n} frames: {e}", n) from None
        info.frames = n
    return info


def decode_checked(container: av.container.InputContainer, path: str) -> Iterator[av.VideoFrame]:
    """Every frame of the first video stream. Raises VideoError: `truncated` when data the container points to
    lies past the end of the file or fewer frames decode than it promises, `decode_error` for other corrupt data,
    `no_frames` when nothing decodes."""
    stream = container.streams.video[0]
    claimed, file_size, n, end = stream.frames, container.size, 0, 0.0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as e:
            if packet.pos is not None and packet.pos + packet.size >= file_size:  # cut short mid-packet
                raise VideoError(path, "truncated", f"data ends at byte {file_size}, after {n} frames", n) from None
            raise VideoError(path, "decode_error", f"after {n} frames: {e}", n) from None
        for frame in frames:
            n += 1
            end = max(end, float(frame.time or 0.0))
            yield frame
    if n == 0:
        raise VideoError(path, "no_frames", "no frame decodes")
    if claimed and n < claimed:
        raise VideoError(path, "truncated", f"decoded {n} of {claimed} frames", n)
    if not claimed:  # WebM/MKV store no frame count, only a duration: compare the decoded span with it
        promised = _promised_seconds(container)
        step = 1 / float(stream.average_rate or 25)
        if promised and end + step < promised - max(2 * step, 0.05 * promised):
            raise VideoError(path, "truncated", f"frames span {end + step:.2f} s of the promised {promised:.2f} s", n)


def _promised_seconds(container: av.container.InputContainer) -> float:
    """Duration the header promises for the video stream (container duration only when it has no other
    stream, since an audio track may run longer); 0 when unknown."""
    stream = container.streams.video[0]
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return 0.0


# --------------------------------------------------------------------------------------------- frame numbering
def frame_numbers(pts: Sequence[int | None]) -> np.ndarray | None:
    """The frame index of each packet (packets in decode order): the rank of its timestamp, i.e. its place in
    presentation order. None when a timestamp is missing or repeated (see the module docstring)."""
    if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
        return None
    index = np.empty(len(pts), np.int64)
    index[np.argsort(np.asarray(pts, np.int64), kind="stable")] = np.arange(len(pts))
    return index


@dataclass
class Packets:
    """A file's video packets in decode order, numbered by the frame each one presents (`frame_numbers`)."""

    path: str
    stream: av.VideoStream
    packets: list[av.Packet]
    index: np.ndarray | None  # (P,) frame index of each packet, or None without usable timestamps
    complete: bool  # demuxing reached the end of the file without an error and found every promised frame
    error: str = ""

    @property
    def reordered(self) -> bool:
        """Some packet is presented before one decoded earlier: the stream has B-frames."""
        return self.index is not None and bool((np.diff(self.index) < 0).any())

    def packet_of(self, i: int) -> int:
        """Position of frame i's packet (the packets must be numbered)."""
        return int(np.flatnonzero(self.index == i)[0])

    def key_before(self, i: int) -> int:
        """Position of the key frame packet presented last at or before frame i: where decoding frame i starts
        (0 without numbered packets)."""
        if self.index is None or i <= 0:
            return 0
        keys = [j for j, p in enumerate(self.packets) if p.is_keyframe and self.index[j] <= i]
        return max(keys, key=lambda j: self.index[j]) if keys else 0

    def frames(self, first: int = 0, skip_keys: bool = False) -> Iterator[tuple[int, av.VideoFrame | None]]:
        """(index, frame) of every frame decoded from packet `first` (a key frame) on, in output order; frames
        presented before packet `first`'s (leading frames of an open GOP) are dropped. skip_keys: see
        `decode_packets` (a key frame comes as (index, None)). VideoError (decode_error) on corrupt data."""
        if self.index is None and first:
            raise ValueError(f"{self.path}: without timestamps frames are counted from the first packet, not {first}")
        first_index = int(self.index[first]) if self.index is not None else 0
        numbers = (
            None if self.index is None else dict(zip([p.pts for p in self.packets], self.index.tolist(), strict=True))
        )
        counter = decoded = 0
        try:
            for frame, key_pts in decode_packets(self.stream.codec_context, self.packets[first:], skip_keys):
                pts = frame.pts if frame is not None else key_pts
                i = counter if numbers is None else numbers.get(pts, -1)
                if i < first_index:
                    continue  # a leading frame of an open GOP, or garbage without a timestamp
                counter = i + 1
                decoded += 1
                yield i, frame
        except av.FFmpegError as e:
            raise VideoError(self.path, "decode_error", str(e), decoded) from e


def demux(container: av.container.InputContainer, path: str) -> Packets:
    """The packets of the first video stream, numbered. Damage ends demuxing but keeps what came before it (the
    frames read are worth reporting): `complete` is then False and `error` says why."""
    stream = container.streams.video[0]
    packets, error = [], ""
    try:
        for pkt in container.demux(stream):
            if pkt.size:
                packets.append(pkt)
    except av.FFmpegError as e:
        error = str(e)
    promised = stream.frames or 0
    complete = not error and len(packets) >= promised
    if not error and promised and len(packets) < promised:
        error = f"the header promises {promised} frames, the file holds {len(packets)}"
    return Packets(path, stream, packets, frame_numbers([p.pts for p in packets]), complete, error)


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


# --------------------------------------------------------------------------------------------- chosen frames
def iter_frames(path: str, indices: Sequence[int]) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) of each distinct frame at `indices`, in output order, from one decode starting at the last
    key frame at or before the first wanted frame. VideoError if the file cannot be opened or decoded."""
    wanted = {int(i) for i in indices}
    if not wanted:
        return
    last = max(wanted)
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", 1  # workers parallelize over clips: threads would fight
        pk = demux(container, os.fspath(path))
        for i, frame in pk.frames(pk.key_before(min(wanted))):
            if i in wanted:
                wanted.discard(i)
                yield i, frame
            if i >= last:
                break


def decode_frames(path: str, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """RGB frames {index: (H, W, 3) uint8} at `indices`, from one decode (see `iter_frames`)."""
    return {i: to_rgb(frame) for i, frame in iter_frames(path, indices)}


@functools.cache
def _reformatter() -> av.video.reformatter.VideoReformatter:
    return av.video.reformatter.VideoReformatter()


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, through one reused single-threaded swscale context.

    `frame.to_ndarray(format="rgb24")` builds a new swscale context per frame, with a thread pool by default:
    ~0.3 ms of set-up per frame, several times the conversion itself at 320x240.
    """
    return _reformatter().reformat(frame, format="rgb24", threads=1).to_ndarray()


# --------------------------------------------------------------------------------------------- motion vectors
def motion_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """Raw bytes (V * 40,) uint8 of the AVMotionVector records a frame carries (the decoder's `flags2` must hold
    `+export_mvs`); None without any. No per-record Python objects: see `VectorRecords` for columns."""
    sd = frame.side_data.get("MOTION_VECTORS")
    vecs = np.frombuffer(sd, np.uint8) if sd is not None else None
    return vecs.copy() if vecs is not None and vecs.size > 0 else None


class VectorRecords:
    """Column views of concatenated AVMotionVector records (no per-field copies of the 40-byte structs).

    Every column is a (V,) strided view into `raw`; indexing one with selected vectors copies just that field.
    """

    def __init__(self, records: list[np.ndarray], rec_frame: list[int]) -> None:
        self.raw = np.concatenate(records)  # (V * 40,) uint8
        self.rows = self.raw.reshape(-1, MV_DTYPE.itemsize)  # (V, 40)
        self.counts = np.asarray([len(r) for r in records], np.int64) // MV_DTYPE.itemsize  # vectors per frame
        self.offsets = np.cumsum(self.counts) - self.counts  # first vector of each frame
        self.frame = np.asarray(rec_frame, np.int64)  # absolute frame of each record (one per frame)
        i2, i4 = self.raw.view("<i2").reshape(-1, 20), self.raw.view("<i4").reshape(-1, 10)
        self.source, self.motion_x, self.motion_y = i4[:, 0], i4[:, 6], i4[:, 7]  # offsets 0, 24, 28
        self.w, self.h = self.rows[:, 4], self.rows[:, 5]
        self.dst_x, self.dst_y = i2[:, 5], i2[:, 6]  # offsets 10, 12
        self.motion_scale = self.raw.view("<u2").reshape(-1, 20)[:, 16]  # offset 32
        # motion_x, motion_y (offsets 24, 28) read as one int64: non-zero iff the vector moves, in one pass
        self.motion_xy = self.raw.view("<i8").reshape(-1, 5)[:, 3]
        # w, h (offsets 4, 5) read as one uint16 code, w + 256 h: block area by table look-up, in one pass
        self.wh = self.raw.view("<u2").reshape(-1, 20)[:, 2]

    def __len__(self) -> int:
        return len(self.rows)

    @functools.cached_property
    def area(self) -> np.ndarray:
        """(V,) int64 pixels of each vector's block."""
        return _BLOCK_AREA[self.wh]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """(K,) structured AVMotionVector records of vectors `idx`."""
        return self.rows[idx].view(MV_DTYPE).reshape(-1)

    def frame_of(self, idx: np.ndarray) -> np.ndarray:
        """Absolute frame of vectors `idx`."""
        return self.frame[np.searchsorted(self.offsets, idx, side="right") - 1]

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every vector as structured records, with its absolute frame."""
        return self.rows.view(MV_DTYPE).reshape(-1), np.repeat(self.frame, self.counts)


_BLOCK_AREA = (np.arange(256)[None, :] * np.arange(256)[:, None]).reshape(-1)  # [w + 256 h] -> w * h, int64
