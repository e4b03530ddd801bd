"""PNG plots from the JSON files the profiling scripts write (format: profiling/report_format.py).

    python profiling/report.py runs/demo/profile runs/bench_decode.json runs/bench_step.json --out runs/plots

Arguments are JSON files or folders (every *.json inside). Makes:
- throughput.png: clips/s over training steps for each profile_train run (GPU and NVDEC util when recorded);
- breakdown.png: data wait / compute / other as shares of wall time per profile_train run, with the verdict;
- <bench>.png: for every other bench file, its throughput columns (*_per_s) per row (loader comparison).
"""

from __future__ import annotations

import argparse
import json
import numbers
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from profiling.report_format import fmt_value  # noqa: E402

BREAKDOWN = (("data_wait_share", "data wait", "#d62728"), ("compute_share", "compute", "#1f77b4"),
             ("other_share", "other", "#bbbbbb"))  # fmt: skip


def load(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Read bench JSON docs from files and folders; a file that is not one is named and skipped."""
    files: list[tuple[Path, bool]] = []  # (file, named explicitly): folders also hold traces and configs
    for p in map(Path, paths):
        files += [(f, False) for f in sorted(p.glob("*.json"))] if p.is_dir() else [(p, True)]
    docs = []
    for f, explicit in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"report: skipping {f}: {e}", file=sys.stderr)
            continue
        if not isinstance(doc, dict) or "bench" not in doc or "rows" not in doc:
            if explicit:
                print(f"report: skipping {f}: not a bench file (needs 'bench' and 'rows')", file=sys.stderr)
            continue
        doc["_path"] = str(f)
        docs.append(doc)
    return docs


def _label(doc: dict[str, Any]) -> str:
    s = doc.get("meta", {}).get("summary", {})
    return s.get("name") or Path(doc["_path"]).parent.name


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('gpu') or 'no GPU'}"


def plot_throughput(docs: list[dict[str, Any]], out: Path) -> Path:
    """clips/s per interval against the last step of the interval; warmup intervals drawn hollow."""
    has_gpu = any("gpu_util" in r or "dec_util" in r for d in docs for r in d["rows"])
    fig, axes = plt.subplots(2 if has_gpu else 1, 1, figsize=(8, 6 if has_gpu else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    colors = {}
    for d in docs:
        rows = d["rows"]
        x = [r["last_step"] for r in rows]
        (line,) = ax.plot(x, [r["clips_per_s"] for r in rows], marker="o", label=_label(d))
        colors[d["_path"]] = line.get_color()
        warm = [r for r in rows if r.get("warmup")]
        ax.plot([r["last_step"] for r in warm], [r["clips_per_s"] for r in warm], "o", mfc="white",
                color=line.get_color())  # fmt: skip
        s = d.get("meta", {}).get("summary")
        if s:
            ax.axhline(s["clips_per_s"], ls="--", lw=1, color=line.get_color())
        if s and s.get("trace_steps"):  # the profiler slows those steps: say so on the plot
            a, b = s["trace_steps"]
            ax.axvspan(a - 0.5, b - 0.5, color=line.get_color(), alpha=0.12, label=f"{_label(d)} profiler window")
    ax.set_ylabel("clips / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="run (dashed: steady-state mean; hollow: warmup)", fontsize=8, title_fontsize=8)
    ax.set_title(f"Training throughput over steps\n{_machine(docs[0])}", fontsize=10)
    if has_gpu:
        g = axes[1, 0]
        for d in docs:
            x = [r["last_step"] for r in d["rows"]]
            for key, style in (("gpu_util", "-"), ("dec_util", ":")):
                if any(key in r for r in d["rows"]):
                    vals = [r.get(key, float("nan")) for r in d["rows"]]
                    g.plot(x, vals, style, color=colors[d["_path"]], label=f"{_label(d)} {key}")
        g.set_ylabel("% (NVML; solid GPU, dotted NVDEC)")
        g.set_ylim(0, 100)
        g.grid(alpha=0.3)
        g.legend(fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_breakdown(docs: list[dict[str, Any]], out: Path) -> Path:
    """One stacked bar per run: shares of wall time; mask worker time as a separate hatched bar below."""
    sums = [d["meta"]["summary"] for d in docs]
    gap = 1.4  # room per run for its verdict line, shares bar and mask bar
    fig, ax = plt.subplots(figsize=(9, 1.6 + 1.3 * len(sums)))
    for i, s in enumerate(sums):
        y, left = gap * (len(sums) - 1 - i), 0.0
        for key, name, color in BREAKDOWN:
            w = 100 * s[key]
            ax.barh(y + 0.15, w, left=left, height=0.45, color=color, label=name if i == 0 else None)
            if w >= 6:
                ax.text(left + w / 2, y + 0.15, f"{w:.0f}%", ha="center", va="center", color="white", fontsize=9)
            left += w
        m = 100 * s["mask_share"]
        ax.barh(
            y - 0.27, min(m, 100), height=0.22, color="#ff7f0e", hatch="//", label="mask (workers)" if i == 0 else None
        )  # noqa: E501
        ax.text(min(m, 100) + 1, y - 0.27, f"mask {m:.0f}% of wall (worker time)", va="center", fontsize=8)
        ax.text(0, y + 0.48, s["verdict"].split(";")[0], fontsize=8, va="bottom")
    ax.set_yticks([gap * i for i in range(len(sums))], [s.get("name", "?") for s in reversed(sums)])
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, gap * (len(sums) - 1) + 0.8)
    ax.set_xlabel("share of wall time (%)")
    ax.legend(loc="lower right", fontsize=8, ncols=4, bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Where the time goes\n{_machine(docs[0])}", fontsize=10, loc="left")
    fig.tight_layout()
    path = out / "breakdown.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def plot_bench(doc: dict[str, Any], out: Path) -> Path:
    """Horizontal bars of the throughput columns (*_per_s; else *ms*; else every numeric column), one panel each.

    Rows are named by their text columns that differ between rows (e.g. loader / model)."""
    rows = doc["rows"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    text = [c for c in cols if any(isinstance(r.get(c), str) for r in rows)]
    varying = [c for c in text if len({str(r.get(c)) for r in rows}) > 1] or text[:1]
    labels = [" / ".join(str(r.get(c, "")) for c in varying) or f"row {i}" for i, r in enumerate(rows)]
    nums = [c for c in cols if all(_is_num(r.get(c)) for r in rows if c in r) and any(c in r for r in rows)]
    metrics = [c for c in nums if "per_s" in c] or [c for c in nums if "ms" in c] or nums
    metrics = metrics[:4]
    label_in = 0.065 * max(map(len, labels))  # room for the row names, which tight_layout cannot always make
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1) + label_in + 0.6,
                             0.5 * len(rows) + 1.8), sharey=True, squeeze=False)  # fmt: skip
    y = list(range(len(rows)))[::-1]
    for ax, c in zip(axes[0], metrics, strict=False):
        vals = [r.get(c, float("nan")) for r in rows]
        bars = ax.barh(y, vals, color="#1f77b4")
        ax.bar_label(bars, labels=[fmt_value(float(v)) for v in vals], fontsize=8, padding=2)
        ax.set_title(c, fontsize=9)
        positive = [v for v in vals if _is_num(v) and v > 0]
        if positive and max(positive) > 50 * min(positive):  # mixed scales (frames/s beside masks/s): log axis
            ax.set_xscale("log")
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(f"{doc['bench']}  ({_machine(doc)})", fontsize=10)
    fig.tight_layout()
    path = out / f"{doc['bench']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(paths: list[str | Path], out: str | Path) -> list[Path]:
    """All plots for the bench/profile JSON files under `paths`, written into `out`; returns the PNG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = load(paths)
    runs = [d for d in docs if d["bench"] == "profile_train" and d["rows"]]
    written = []
    if runs:
        written.append(plot_throughput(runs, out))
        with_summary = [d for d in runs if d.get("meta", {}).get("summary")]
        if with_summary:
            written.append(plot_breakdown(with_summary, out))
    for d in docs:
        if d["bench"] != "profile_train" and d["rows"]:
            written.append(plot_bench(d, out))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="bench/profile JSON files or folders holding them")
    ap.add_argument("--out", default="runs/plots", help="folder for the PNGs")
    a = ap.parse_args(argv)
    written = make_report(a.inputs, a.out)
    for p in written:
        print(f"wrote {p}")
    if not written:
        print("report: no bench rows found in " + ", ".join(a.inputs), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
