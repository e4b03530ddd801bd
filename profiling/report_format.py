"""One output format for every profiling script: an aligned table on stdout and, optionally, a JSON file.

JSON layout (what `profiling/report.py` reads)::

    {"bench": str, "machine": {...machine_info()}, "meta": {...}, "rows": [{...}, ...]}

Usage from a bench script::

    from profiling.report_format import emit, median_time
    rows = [{"loader": "dali", "clips_per_s": 39.2}, {"loader": "cpu", "clips_per_s": 14.1}]
    emit("bench_decode", rows, out="runs/bench_decode.json", meta={"clips": 64})
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mgm.atomic import atomic_write


def _cpu_model() -> str:
    # platform.processor() is empty on most Linux builds; /proc/cpuinfo has the marketing name.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Describe the machine a number was measured on: CPU model, cores, GPU name (or None), versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": None,
        "python": platform.python_version(),
        "torch": None,
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or CUDA init failing: the row is still worth writing
        pass
    return info


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls, after `warmup` untimed calls.

    `fn` must finish its own work (e.g. call torch.cuda.synchronize()) for GPU timings to mean anything.
    """
    if repeats < 1:
        raise ValueError(f"median_time: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt_value(v: Any) -> str:
    """Cell text: floats to 3 significant digits (no exponent between 1e-3 and 1e6), others via str."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        x = float(v)
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        if abs(x) >= 1000 and abs(x) < 1e6:
            return f"{x:.0f}"
        if abs(x) >= 1e-3 and abs(x) < 1e6:
            return f"{x:.3g}"
        return f"{x:.2e}"
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def format_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """Aligned text table; numbers right-aligned, text left-aligned, missing cells shown as '-'."""
    cols = columns(rows)
    if not cols:
        return f"{title}: (no rows)" if title else "(no rows)"
    cells = [[fmt_value(r[c]) if c in r else "-" for c in cols] for r in rows]
    numeric = [all(_is_number(r[c]) for r in rows if c in r) for c in cols]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(vals: Sequence[str]) -> str:
        parts = zip(vals, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in parts).rstrip()

    out = [title] if title else []
    out += [line(cols), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _jsonable(o: Any) -> Any:
    # numpy / torch scalars and arrays, Paths, tuples: anything a bench might drop in a row.
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (Path, set, frozenset)):
        return str(o) if isinstance(o, Path) else sorted(o)
    return str(o)


def write_json(bench: str, rows: list[dict[str, Any]], out: str | Path, meta: dict | None = None) -> Path:
    """Write {bench, machine, meta, rows} to `out` atomically (parent folders created); returns the path."""
    doc = {"bench": bench, "machine": machine_info(), "meta": meta or {}, "rows": rows}
    with atomic_write(out, "w") as f:
        f.write(json.dumps(doc, indent=1, default=_jsonable) + "\n")
    return Path(out)


def emit(bench: str, rows: list[dict[str, Any]], out: str | Path | None = None, meta: dict | None = None) -> None:
    """Print `rows` as an aligned table under the title `bench`; if `out` is given also write the JSON
    {bench, machine, meta, rows} there (parent folders created). Columns are the union of row keys."""
    mi = machine_info()
    gpu = mi["gpu"] or "no GPU"
    print(format_table(rows, title=f"== {bench} ({mi['cpu']}, {mi['cores']} cores, {gpu})"), flush=True)
    if out is not None:
        print(f"wrote {write_json(bench, rows, out, meta)}", file=sys.stderr, flush=True)
