"""What the engine receives from outside `mgm`: a loader and a profiling hook, written down as Protocols.

The implementations live where the house rules put them (dali_pipes' loaders, profiling.hooks.ProfileHook, the
tests' FakeLoader); mgm imports neither dali_pipes nor profiling, so the contracts are stated here. `NullHook`
is the hook with every method a no-op: the loop always has a hook and no `if prof:` branches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch

# One batch: "video" (B, 3, T, H, W) float, normalized; "mask" (B, N) bool, True = masked, the same count per
# row; "mask_time" (B,) seconds the workers spent making each mask (optional); "decoder_mask" (B, N) bool, True =
# reconstructed, a subset of "mask" (optional: decoder masking, passed to the model); loaders may add more keys.
Batch = dict[str, torch.Tensor]


@runtime_checkable
class Loader(Protocol):
    """An epoch-aware, resumable source of batches for this rank."""

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches, from the position `load_state_dict` set (else its start)."""
        ...

    def __len__(self) -> int:
        """Batches per epoch on this rank (a loader may yield fewer when files turn out bad)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` follows (a new epoch starts at its first batch)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The resume point after the batches yielded so far (plain Python, saved in checkpoints)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: the next `__iter__` starts where that one stopped."""
        ...


@runtime_checkable
class Hook(Protocol):
    """Profiling around the loop: each method but `close` returns a context manager the engine enters."""

    def wait(self) -> AbstractContextManager[None]:
        """Around fetching one batch from the loader (data wait)."""
        ...

    def step(self, *, clips: int, frames: int, tokens: int, mask_seconds: float) -> AbstractContextManager[None]:
        """Around one optimizer step over `clips` clips (`frames` frames, `tokens` tokens) on this rank."""
        ...

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Around a part of a step: "forward", "backward", "optimizer"."""
        ...

    def close(self) -> dict[str, Any]:
        """Flush and return a summary (empty when there is nothing to say)."""
        ...


class NullHook:
    """The `Hook` contract with every method a no-op."""

    @contextlib.contextmanager
    def wait(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def step(self, *, clips: int, frames: int, tokens: int, mask_seconds: float) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def close(self) -> dict[str, Any]:
        return {}
