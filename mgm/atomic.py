"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    tmp: str | os.PathLike | None = None,
    sync_dir: bool = False,
    **kw: Any,
) -> Iterator[IO]:
    """Open a temporary file beside `path` (default `NAME.<pid>.tmp`: two processes writing the same file never
    share one; parent folders created) for writing; on a clean exit flush and fsync it, then rename it over `path`.

    An exception inside the block removes the temporary file and re-raises (a full disk leaves no partial file);
    a killed process leaves at most the temporary file. `sync_dir` also fsyncs the folder, so the rename itself
    survives a power cut. `kw` goes to `open` (e.g. newline="").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if sync_dir:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
