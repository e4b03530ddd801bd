"""List entries for sampler tests: what mgm.prep.filelist.read_list yields, without files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class E:
    path: str
    label: int
    num_frames: int


def entries(n: int, frames: int = 60) -> list[E]:
    return [E(f"v{i}.mp4", i % 5, frames) for i in range(n)]
