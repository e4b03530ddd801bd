"""Shared fixtures: synthetic clips are generated once per test session, never stored in the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores: keep torch and the codecs from oversubscribing them in test processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    HAS_CUDA = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (one clip of each kind, 320x240, 60 frames, GOP 16, H.264 + VP9 twins)."""
    from mgm.prep.synth import make_dataset

    out = tmp_path_factory.mktemp("synth")
    make_dataset(out, num=4, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_list(synth_dir: Path) -> Path:
    """The CSV file list of `synth_dir`."""
    return synth_dir / "train.csv"


@pytest.fixture(scope="session")
def synth_clips(synth_dir: Path) -> dict[str, Path]:
    """kind ("single" | "pan" | "two" | "static") -> path of its H.264 `.mp4`; ground truth in the `.json` beside it."""
    from mgm.prep.synth import KINDS

    return {kind: synth_dir / "videos" / f"clip_{i:05d}.mp4" for i, kind in enumerate(KINDS)}
