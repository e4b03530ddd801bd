"""Media files the tests need besides video clips (mgm.prep.synth makes those)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_tone(path: Path) -> Path:
    """A file with an audio stream only (half a second of 440 Hz AAC): a container without video."""
    with av.open(str(path), "w") as o:
        s = o.add_stream("aac", rate=8000)
        for k in range(4):
            t = (np.arange(1024) + 1024 * k) / 8000
            frame = av.AudioFrame.from_ndarray(np.sin(2 * np.pi * 440 * t)[None].astype(np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 8000, 1024 * k
            o.mux(s.encode(frame))
        o.mux(s.encode(None))
    return path
