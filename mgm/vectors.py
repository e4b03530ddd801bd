"""The motion-vector records FFmpeg exports with decoded frames (`flags2=+export_mvs`), for mgm.video's readers:
the raw records of a frame, whether a stream has any, and column views over many frames' records (mgm.motion_field).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import av
import numpy as np

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


def motion_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """Raw bytes (V * 40,) uint8 of the AVMotionVector records a frame carries (the decoder's `flags2` must hold
    `+export_mvs`); None without any. No per-record Python objects: see `VectorRecords` for columns."""
    sd = frame.side_data.get("MOTION_VECTORS")
    vecs = np.frombuffer(sd, np.uint8) if sd is not None else None
    return vecs.copy() if vecs is not None and vecs.size > 0 else None


def has_vectors(frames: Sequence[av.VideoFrame]) -> bool:
    """Whether a stream carries motion vectors, judged from the data, not from a codec name: some of these frames
    (inter frames decoded with `+export_mvs`) carries any. The one rule `lists`, the motion reader and the masks
    share (a reader judges the frames it decoded)."""
    return any(motion_vectors(f) is not None for f in frames)


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
