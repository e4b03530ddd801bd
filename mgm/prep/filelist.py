"""File lists: CSV with header `path,label,num_frames`, paths relative to the CSV's folder (or absolute)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from mgm.atomic import atomic_write

HEADER = ("path", "label", "num_frames")


class FileListError(ValueError):
    """A file list is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # absolute, resolved against the list's folder
    label: int
    num_frames: int


def read_list(csv_path: str | Path) -> list[VideoEntry]:
    """Read a file list; relative paths are resolved against the folder holding the CSV."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileListError(f"file list {csv_path} does not exist (make one with `mgm-prepare lists` or `synth`)")
    base = csv_path.resolve().parent
    entries = []
    with csv_path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise FileListError(f"{csv_path}: first line must be the header {','.join(HEADER)}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 3:
                raise FileListError(f"{csv_path}:{lineno}: expected 3 columns (path,label,num_frames), got {row}")
            try:
                label, frames = int(row[1]), int(row[2])
            except ValueError:
                raise FileListError(f"{csv_path}:{lineno}: label and num_frames must be integers, got {row}") from None
            entries.append(VideoEntry(str(base / row[0]), label, frames))
    return entries


def write_list(csv_path: str | Path, entries: list[VideoEntry]) -> Path:
    """Write entries atomically, with paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    with atomic_write(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for e in entries:  # a relative entry path is taken as relative to the working directory
            writer.writerow([os.path.relpath(Path(e.path).resolve(), base), e.label, e.num_frames])
    return csv_path
