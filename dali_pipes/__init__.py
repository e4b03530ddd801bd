"""The loader: sampler, DALI graph, worker sources, torch adapter, CPU fallback. Entry point: `build_loader`
(dali_pipes.factory).

    loader = build_loader(cfg, rank=rank, world_size=world_size, device="cuda")
    for epoch in range(start_epoch, cfg.train.epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # or: for videos, bool_masked_pos in loader.as_tuples()
            ...  # batch["video"] (B,3,T,S,S), batch["mask"] (B,N) bool, True = masked

Batch format: see dali_pipes.adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dali_pipes.sampler import ClipSampler, ClipSpec

if TYPE_CHECKING:
    from dali_pipes.adapter import DaliLoader, LoaderBase, TooManyBadVideos  # noqa: F401
    from dali_pipes.factory import build_loader, choose_path

__all__ = ["build_loader", "ClipSampler", "ClipSpec", "LoaderBase", "TooManyBadVideos", "choose_path"]

_LAZY = {
    "build_loader": "dali_pipes.factory",
    "choose_path": "dali_pipes.factory",
    "LoaderBase": "dali_pipes.adapter",
    "TooManyBadVideos": "dali_pipes.adapter",
    "DaliLoader": "dali_pipes.adapter",
}


def __getattr__(name: str) -> Any:
    # imported on first use only: DALI's spawned workers import this package and need no torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dali_pipes' has no attribute {name!r}")
