"""The motion reader on broken videos: a MotionReadError naming the file and the frames read, or a field
(has_vectors False for codecs without vectors); and the MGM mask falls back, counted, when there is no motion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mgm.masking import build_masking
from mgm.motion import MotionReadError, read_motion

from .cases import EXPECT, GOOD_FRAMES, HUGE_SIZE, READABLE, SHORT_FRAMES

FRAMES_READ = {"truncated": 16, "garbage_middle": 10}  # frames decoded before the error; 0 for the others
SIZES = {"odd_size": (121, 161), "huge": HUGE_SIZE}
FRAMES = {"too_short": SHORT_FRAMES, "odd_size": 40, "huge": 2}
UNREADABLE = tuple(k for k, v in EXPECT.items() if v in ("unreadable", "missing"))


@pytest.mark.parametrize("fault", UNREADABLE)
def test_unreadable_file_raises_naming_file_and_frames_read(fault: str, bad_videos: dict[str, Path]) -> None:
    path = str(bad_videos[fault])
    with pytest.raises(MotionReadError) as info:
        read_motion(path)
    e = info.value
    assert e.path == path and path in str(e)
    assert e.frames_read == FRAMES_READ.get(fault, 0)
    assert f"after {e.frames_read} frames" in str(e)


@pytest.mark.parametrize("fault", READABLE)
def test_readable_fault_gives_a_finite_field(fault: str, bad_videos: dict[str, Path]) -> None:
    f = read_motion(str(bad_videos[fault]))
    h, w = SIZES.get(fault, (120, 160))
    n = FRAMES.get(fault, GOOD_FRAMES)
    assert f.frame_size == (h, w) and f.num_frames == n
    assert f.energy.shape == (n, -(-h // 8), -(-w // 8)) and np.isfinite(f.energy).all()
    assert f.has_vectors == (EXPECT[fault] != "no_vectors")
    if EXPECT[fault] in ("no_vectors", "static") or fault == "huge":  # huge: one flat grey picture
        assert f.energy.max() < 0.05
    else:
        assert f.energy.max() > 0.5  # the moving square is seen


@pytest.mark.parametrize("fault", [k for k in READABLE if k != "no_vectors"] + ["good"])
def test_vp9_twin_has_no_vectors_and_no_error(fault: str, fault_dir: Path) -> None:
    f = read_motion(str(fault_dir / f"{fault}.webm"))
    assert not f.has_vectors and not f.energy.any()


def test_span_inside_the_readable_part_of_a_truncated_file_reads(bad_videos: dict[str, Path]) -> None:
    path = str(bad_videos["truncated"])
    f = read_motion(path, start=0, stop=12)  # clips that only need the frames before the cut still work
    assert f.energy.shape[0] == 12 and f.has_vectors


@pytest.mark.parametrize("fault", ["truncated", "too_short"])
def test_span_past_the_end_of_the_file_is_a_motion_read_error(fault: str, bad_videos: dict[str, Path]) -> None:
    path = str(bad_videos[fault])  # a stale file list promises 48 frames; the file holds fewer
    with pytest.raises(MotionReadError, match=bad_videos[fault].name):
        read_motion(path, start=20, stop=36)


@pytest.mark.parametrize("fault", ["no_vectors", "static"])
def test_mgm_mask_falls_back_to_tube_and_counts_it(fault: str, bad_videos: dict[str, Path]) -> None:
    f = read_motion(str(bad_videos[fault]))
    motion_map = f.clip_map(np.arange(0, 16, 2), crop=(20, 0, 120, 120), grid=(4, 2, 2))
    gen = build_masking("mgm", 0.5, (4, 2, 2))
    masks = [gen(motion_map, np.random.default_rng(s)) for s in range(3)]
    assert gen.fallbacks == 3 and gen.last_fallback
    assert all(m.sum() == gen.num_masked for m in masks)
