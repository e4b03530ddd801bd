"""Motion energy from the motion vectors H.264 / MPEG-4 / MPEG-2 streams already carry (no optical flow).

`read_motion` decodes a file with FFmpeg's `export_mvs` and turns each frame's vectors into a motion-energy grid:
every vector's block (w x h pixels centred on dst_x, dst_y, FFmpeg's convention, checked in the tests with a
moving square) is rasterized onto cells of `cell` pixels with its displacement magnitude, so a cell holds the
mean displacement (pixels per frame) of its pixels. `MotionField.clip_map` then sums those grids over the source
frames of each tubelet slot and maps them through the clip's crop / flip onto the token grid.

Frames are read through `mgm.video`, which owns PyAV and the frame numbering (frame i is the i-th frame FFmpeg
outputs, counting from 0: DALI's numbering too); this module turns their vectors into motion fields.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mgm.motion_field import _fill_gaps, field_energy
from mgm.vectors import motion_vectors
from mgm.video import FrameOrderError, Packets, VideoError, demux, open_video, to_rgb

# Settings that change pixels but not the parsed vectors (the bitstream syntax does not depend on pixels);
# tests/test_motion.py checks that the vectors are identical with and without them. Frame threading is not
# among them: with it FFmpeg attaches side data to the wrong frames (B-frame clips differ), so `threads`
# only ever means slice threads.
FAST_OPTIONS = {"skip_loop_filter": "all", "skip_idct": "all"}
_PICT_I, _PICT_P, _PICT_B = 1, 2, 3  # AVPictureType values


class MotionReadError(RuntimeError):
    """A file could not be read to the end: the message names the file and how many frames were read."""

    def __init__(self, path: str, frames_read: int, reason: str) -> None:
        super().__init__(f"{path}: motion read failed after {frames_read} frames: {reason}")
        self.path, self.frames_read, self.reason = path, frames_read, reason


@dataclass
class MotionField:
    """Per-frame motion energy of (a span of) one video.

    energy: float32 (frames, rows, cols), mean displacement in pixels per frame of each `cell` x `cell` cell;
    energy[0] is absolute frame `first_frame`. num_frames: frames in the whole video. frame_size: (H, W) pixels.
    has_vectors: False when the stream carries no motion vectors at all (VP9, MJPEG, intra-only, ...).
    """

    energy: np.ndarray
    cell: int
    frame_size: tuple[int, int]
    has_vectors: bool
    num_frames: int
    first_frame: int = 0

    def slot_frames(self, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Absolute source frames of each tubelet slot (pairs of sampled frames): (frames (K,), slot id (K,)).

        A slot with sampled frames f0 < f1 covers f0 .. f1 + (f1 - f0) - 1, i.e. up to where the next slot starts
        for a regular stride, so frames skipped by the stride are counted exactly once. A pair that does not go
        forward (a looped or padded short video) covers just its distinct frames.
        """
        f = np.asarray(frame_indices, dtype=np.int64)
        if f.ndim != 1 or len(f) % 2:
            raise ValueError(f"frame_indices must be 1-D with an even length (pairs of frames), got shape {f.shape}")
        frames, slots = [], []
        for t, (a, b) in enumerate(zip(f[0::2].tolist(), f[1::2].tolist(), strict=True)):
            span = range(a, b + (b - a)) if b > a else sorted({a, b})
            frames.extend(span)
            slots.extend([t] * len(span))
        return np.asarray(frames, np.int64), np.asarray(slots, np.int64)

    def clip_map(
        self,
        frame_indices: Sequence[int],
        crop: tuple[int, int, int, int] | None = None,
        flip: bool = False,
        grid: tuple[int, int, int] = (8, 14, 14),
    ) -> np.ndarray:
        """Motion map of one clip on the token grid: float32 (T2, Hp, Wp).

        frame_indices: the T sampled absolute frame indices (T = 2 * T2); crop: (x, y, w, h) in source pixels
        (None = the whole frame); flip: horizontal flip applied after the crop, as for the pixels. Each slot sums
        the energy of every source frame in its span (see `slot_frames`); frames outside the field are ignored.
        Tokens get the area-weighted mean of the cells under them.
        """
        t2, hp, wp = grid
        if len(frame_indices) != 2 * t2:
            raise ValueError(f"{len(frame_indices)} frame indices for {t2} tubelet slots (need {2 * t2})")
        n = self.energy.shape[0]
        frames, slot = self.slot_frames(frame_indices)
        idx = frames - self.first_frame
        ok = (idx >= 0) & (idx < n)
        onehot = np.zeros((t2, int(ok.sum())), np.float32)  # (T2, K): which slot each valid frame feeds
        onehot[slot[ok], np.arange(onehot.shape[1])] = 1.0
        rows, cols = self.energy.shape[1:]
        sums = (onehot @ self.energy[idx[ok]].reshape(-1, rows * cols)).reshape(t2, rows, cols)
        h, w = self.frame_size
        x, y, cw, ch = crop if crop is not None else (0, 0, w, h)
        ry = _resample_matrix(y, ch, hp, self.cell, sums.shape[1], h)  # (Hp, rows)
        rx = _resample_matrix(x, cw, wp, self.cell, sums.shape[2], w)  # (Wp, cols)
        out = ry @ sums @ rx.T  # (T2, Hp, Wp)
        if flip:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=256)
def _resample_matrix(start: int, length: int, tokens: int, cell: int, cells: int, limit: int) -> np.ndarray:
    """(tokens, cells) weights: overlap of token i's source interval with cell j, over the token's length."""
    edges = start + length * np.arange(tokens + 1) / tokens  # token boundaries in source pixels
    lo = np.minimum(np.arange(cells) * cell, limit)
    hi = np.minimum(lo + cell, limit)
    overlap = np.clip(np.minimum(edges[1:, None], hi) - np.maximum(edges[:-1, None], lo), 0, None)
    m = (overlap / (length / tokens)).astype(np.float32)
    m.setflags(write=False)
    return m


def span_of(frame_indices: Sequence[int], num_frames: int) -> tuple[int, int]:
    """[start, stop) of source frames `clip_map` needs for these indices: what to pass to `read_span`."""
    f = np.asarray(frame_indices, dtype=np.int64)
    lo, hi = int(f.min()), int(f.max()) + 1
    if len(f) >= 2 and f[-1] > f[-2]:
        hi = max(hi, int(f[-1] + (f[-1] - f[-2])))
    return max(lo, 0), min(hi, num_frames)


def clips_span(clips: Sequence[Sequence[int]], num_frames: int) -> tuple[int, int]:
    """[start, stop) covering `span_of` of every clip (the R clips of one video read at once: data.repeat)."""
    spans = [span_of(idx, num_frames) for idx in clips]
    return min(a for a, _ in spans), max(b for _, b in spans)


def read_span(
    path: str,
    start: int,
    stop: int | None,
    *,
    cell: int = 8,
    keep: Iterable[int] = (),
    threads: int = 1,
    camera: bool = True,
    on_frame: Callable[[int, np.ndarray], None] | None = None,
    num_frames: int | None = None,
) -> tuple[MotionField, dict[int, np.ndarray]]:
    """Decode frames [start, stop) once (from the key frame before `start`) for motion AND chosen RGB frames.

    Returns the MotionField of frames [start, stop) (first_frame = start) and {index: (H, W, 3) uint8 RGB} for
    the indices in `keep` inside the span; with `on_frame`, each kept frame goes to on_frame(index, rgb) as it is
    decoded instead (the dict stays empty), so a caller can shrink it at once and memory stays bounded for large
    frames (a frame can come twice when the file has to be renumbered, see mgm.video; the later one is right).
    stop=None reads to the end. num_frames: the file's frame count from its file list, trusted (the field's
    `num_frames`); a file holding fewer is an error naming both counts. camera=True subtracts each frame's
    dominant (area-weighted median) motion, so a camera pan does not light up the whole frame. threads > 1 uses
    frame threads on streams without B-frames (same vectors, tested) and slice threads otherwise. Raises
    MotionReadError (naming the file and the frames read) when the file cannot be opened or ends before `stop`.
    """
    path = os.fspath(path)
    keep = frozenset(int(k) for k in keep)
    if stop is not None and stop <= start:
        raise ValueError(f"{path}: empty span [{start}, {stop})")
    args = (path, start, stop, keep, threads, on_frame, num_frames)
    try:
        try:
            span, total, end = _read(*args, count=False)
        except FrameOrderError:  # the timestamps contradict the output order: count frames from the start
            span, total, end = _read(*args, count=True)
    except VideoError as e:
        raise MotionReadError(path, e.frames_read, e.detail) from e
    return _build_field(span, start, end, cell, total, camera), span.rgb


def _read(
    path: str,
    start: int,
    stop: int | None,
    keep: frozenset[int],
    threads: int,
    on_frame: Callable[[int, np.ndarray], None] | None,
    num_frames: int | None,
    count: bool,
) -> tuple[_Span, int, int]:
    """One decode of a span (see read_span): (what it collected, frames in the file, end of the span)."""
    with open_video(path) as container:
        pk = demux(container, path, num_frames=num_frames, count=count)
        pk.check_listed(num_frames)  # the file changed since its list was made
        have = pk.frames_hint
        if start >= (num_frames if num_frames is not None else have):
            why = f"; {pk.error}" if pk.error else ""
            raise MotionReadError(path, 0, f"span [{start}, {stop}) starts past the {have} frames{why}")
        total = num_frames if num_frames is not None else (have if pk.complete else None)
        if stop is not None and total is not None:
            stop = min(stop, total)
        stream = pk.stream
        # Without pixels to return, an H.264 stream without B-frames can start decoding right at `start`, and
        # need not decode its key frames at all: P-frame vectors are predicted from neighbouring vectors only,
        # never from reference pixels, so they come out identical (tested) while the frames from the key frame
        # up to `start`, and the key frames themselves (no vectors, and most of the bits), are never decoded.
        mid_gop = not keep and pk.index is not None and not pk.reordered and stream.codec_context.name == "h264"
        flags2 = "+export_mvs+showall" if mid_gop else "+export_mvs"
        stream.codec_context.options = {"flags2": flags2, **({} if keep else FAST_OPTIONS)}  # exact pixels if kept
        # frame threads drop B-frames' second-direction vectors, so they only serve B-free streams
        stream.thread_type = "FRAME" if threads > 1 and pk.index is not None and not pk.reordered else "SLICE"
        stream.thread_count = max(threads, 1)
        first_packet = (pk.packet_of(start) if start > 0 else 0) if mid_gop else pk.key_before(start)
        span = _decode(pk, first_packet, start, stop, keep, on_frame, skip_keys=mid_gop)
    if span.size is None:
        raise MotionReadError(path, span.decoded, pk.error or "no frame could be decoded")
    end = stop if stop is not None else span.last + 1
    if span.last + 1 < end or (stop is None and not pk.complete):
        listed = f", its file list says {num_frames}" if num_frames is not None else ""
        raise MotionReadError(
            path, span.decoded, pk.error or f"stream ended at frame {span.last + 1}, expected {end}{listed}"
        )
    if stop is None and num_frames is not None and end != num_frames:
        raise MotionReadError(path, span.decoded, f"decoded {end} frames, its file list says {num_frames}")
    return span, (total if total is not None else max(span.last + 1, end)), end


@dataclass
class _Span:
    """What one decode of a span collected (see `_decode`)."""

    records: list[np.ndarray] = field(default_factory=list)  # raw AVMotionVector bytes of frames >= start
    rec_frame: list[int] = field(default_factory=list)  # absolute index of each record
    types: dict[int, int] = field(default_factory=dict)  # AVPictureType of every frame decoded
    rgb: dict[int, np.ndarray] = field(default_factory=dict)  # kept frames (when no on_frame takes them)
    decoded: int = 0  # frames decoded
    last: int = -1  # highest frame index decoded
    size: tuple[int, int] | None = None  # (H, W) of the decoded frames; None if none was decoded


def _decode(
    pk: Packets,
    first_packet: int,
    start: int,
    stop: int | None,
    keep: frozenset[int],
    on_frame: Callable[[int, np.ndarray], None] | None = None,
    skip_keys: bool = False,
) -> _Span:
    """Decode from `first_packet` (a key frame) on; collect vectors of frames >= start, RGB of `keep`.

    skip_keys: key-frame packets are not decoded but counted as frames without vectors (B-free H.264 without
    pixels to return; see read_span). A file of key frames only is then decoded normally (for its frame size).
    """
    s = _Span()
    tail_anchor = tail_vectors = False  # past `stop`: seen an anchor / a frame with vectors
    for i, frame in pk.frames(first_packet, skip_keys):
        s.decoded += 1
        s.last = max(s.last, i)
        if frame is None:  # a key frame left undecoded: no vectors, an anchor
            kind, has = _PICT_I, False
        else:
            s.size = s.size or (frame.height, frame.width)
            kind = int(frame.pict_type)
        s.types[i] = kind
        if i < start:
            continue
        if frame is not None:
            vecs = motion_vectors(frame)
            has = vecs is not None
            if has:
                s.records.append(vecs)
                s.rec_frame.append(i)
        if stop is not None and i >= stop:
            # A few frames past the span make its last frames filled and weighted exactly as in a full
            # read: the next frame with vectors (for a trailing key frame), the next anchor (B-frames).
            tail_vectors |= has
            tail_anchor |= kind != _PICT_B
            if (tail_vectors and tail_anchor) or i - stop >= 16:
                break
            continue
        if i in keep:
            if on_frame is None:
                s.rgb[i] = to_rgb(frame)
            else:
                on_frame(i, to_rgb(frame))
    if skip_keys and s.size is None and s.decoded:  # key frames only (intra-only): nothing decoded yet
        pk.stream.codec_context.flush_buffers()
        return _decode(pk, first_packet, start, stop, keep, on_frame)
    return s


def _build_field(span: _Span, start: int, end: int, cell: int, total: int, camera: bool) -> MotionField:
    """Motion energy of the collected vectors of frames [start, max(end, last]) (see `motion_field`), kept for
    [start, end)."""
    hi = max(end, span.last + 1)
    n = hi - start
    types = span.types
    # reference distances in presentation order: previous / next anchor (I or P frame) of every frame
    frames = np.arange(min(types, default=start), hi)
    is_anchor = np.array([types.get(int(i), _PICT_P) != _PICT_B for i in frames])
    anchor_pos = np.where(is_anchor, frames, -(10**9))
    prev_anchor = np.maximum.accumulate(np.concatenate([[-(10**9)], anchor_pos[:-1]]))
    nxt = np.where(is_anchor, frames, 10**9)[::-1]
    next_anchor = np.minimum.accumulate(np.concatenate([[10**9], nxt[:-1]]))[::-1]
    j = np.arange(start, hi) - int(frames[0])  # frames start .. hi-1 in those arrays
    past = np.where(prev_anchor[j] > -(10**9), np.arange(start, hi) - prev_anchor[j], 1)
    fut = np.where(next_anchor[j] < 10**9, next_anchor[j] - np.arange(start, hi), 1)
    has_b = any(t == _PICT_B for t in types.values())

    has = np.zeros(n, bool)
    size = span.size
    if span.records:
        has[np.asarray(span.rec_frame) - start] = True
        energy = field_energy(span.records, span.rec_frame, start, n, (past, fut), has_b, camera, cell, size)
    else:
        energy = np.zeros((n, -(-size[0] // cell), -(-size[1] // cell)), np.float32)
    _fill_gaps(energy, has)
    return MotionField(energy[: end - start], cell, size, bool(has.any()), total, start)


def read_motion(
    path: str,
    *,
    cell: int = 8,
    threads: int = 1,
    start: int = 0,
    stop: int | None = None,
    camera: bool = True,
    num_frames: int | None = None,
) -> MotionField:
    """Motion energy of frames [start, stop) of a video (default: all of it); see `MotionField`. num_frames: the
    file's frame count from its file list (trusted; a file that disagrees is an error naming both counts).

    Raises MotionReadError for unreadable, corrupt or truncated files. A stream without motion vectors gives
    `has_vectors=False` and zero energy, no exception.
    """
    field, _ = read_span(path, start, stop, cell=cell, threads=threads, camera=camera, num_frames=num_frames)
    return field
