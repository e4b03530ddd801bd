"""Property-based ClipSampler checks (hypothesis, a dev extra): in their own module so that test_sampler.py,
and `pytest -m gpu` on a machine without the dev extras, still collect."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dali_pipes.sampler import multiscale_crop  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(32, 1080),
    w=st.integers(32, 1920),
    u=st.floats(0, 0.999),
    v=st.floats(0, 0.999),
)
def test_crop_box_inside_frame(h: int, w: int, u: float, v: float) -> None:
    x, y, cw, ch = multiscale_crop((h, w), 224, (1.0, 0.875, 0.75, 0.66), u, v)
    assert x >= 0 and y >= 0 and cw > 0 and ch > 0 and x + cw <= w and y + ch <= h
