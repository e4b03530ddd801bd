"""Atomic checkpoint files, rotation and the RNG state that makes a resumed run continue exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgm.atomic import atomic_write

PATTERN = "step_*.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) generator states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write `obj` with torch.save to a temporary file, fsync it, then rename over `path`.

    A crash leaves either the previous file or the complete new one, never a torn checkpoint; a failed write
    (e.g. a full disk) removes its partial temporary file and re-raises.
    """
    with atomic_write(path, "wb", sync_dir=True) as f:
        torch.save(obj, f)
    return Path(path)


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `ckpt_dir`, oldest first (temporary files are ignored)."""
    d = Path(ckpt_dir)
    return sorted(d.glob(PATTERN)) if d.is_dir() else []


def prune(ckpt_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps everything); returns the deleted."""
    files = list_checkpoints(ckpt_dir)
    gone = files[:-keep_last] if keep_last > 0 else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def resolve_resume(resume: str | Path, ckpt_dir: str | Path) -> Path | None:
    """ "" -> None; "auto" -> newest checkpoint in `ckpt_dir` (None if there is none); a directory -> its newest;
    a file -> itself. A path that does not exist is an error naming it."""
    if not str(resume):
        return None
    if str(resume) == "auto":
        files = list_checkpoints(ckpt_dir)
        return files[-1] if files else None
    p = Path(resume)
    if p.is_dir():
        files = list_checkpoints(p)
        if not files:
            raise FileNotFoundError(f"train.resume={resume}: no {PATTERN} checkpoint in that folder")
        return files[-1]
    if not p.is_file():
        raise FileNotFoundError(f"train.resume={resume}: no such checkpoint file")
    return p


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_atomic` onto the CPU."""
    # weights_only=False: our own files carry numpy RNG state and the loader's plain-Python state.
    return torch.load(path, map_location="cpu", weights_only=False)
