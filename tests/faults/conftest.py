"""Fixtures of the fault-injection suite: broken inputs generated once per session (see cases.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .cases import fault_paths, make_fault_files


@pytest.fixture(scope="session")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with good.mp4/.webm and every fault of EXPECT (each with a VP9 `.webm` twin)."""
    out = tmp_path_factory.mktemp("faults")
    files = make_fault_files(out)
    assert not files["missing"].exists()
    return out


@pytest.fixture(scope="session")
def bad_videos(fault_dir: Path) -> dict[str, Path]:
    """fault name -> path (see EXPECT); "missing" points at a file that does not exist."""
    return fault_paths(fault_dir)


@pytest.fixture()
def good_video(fault_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a healthy 48-frame H.264 clip."""
    return Path(shutil.copy(fault_dir / "good.mp4", tmp_path / "good.mp4"))
