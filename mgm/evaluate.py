"""Multi-view evaluation: every video as clips x crops fixed views, the per-view outputs averaged per video.

The batches come from an evaluation loader (dali_pipes.evaluation.EvalLoader) and carry, beside "video":
"planned" (B,) the planned sample id (video * views + view), "index" (B,) the sample actually loaded (another one
when the planned video was unreadable), "real" (B,) False for padding. `view_means` keeps a sample only when it is
real and was loaded as planned; a video counts when all of its views did, so over the ranks every video of the
list is counted exactly once or listed as excluded, whatever the world size (`gather` joins the ranks).

`view_means` takes any per-view function: softmax probabilities for the classifier (`class_scores`), pooled
features for the linear probe (mgm.probe). `report` turns averaged probabilities into top-1 / top-5, per-class
accuracy and a predictions CSV.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from mgm.atomic import atomic_write
from mgm.contracts import Batch


class EvalBatches(Protocol):
    """An evaluation loader (dali_pipes.evaluation.EvalLoader): batches with "planned", "index", "real", plus:"""

    views: int  # samples per video
    expected: Sequence[int]  # the video ids this rank evaluates
    entries: Sequence[Any]  # per video id: .path, .label
    missing: Sequence[str]  # list rows whose files are not on disk

    def __iter__(self) -> Iterator[Batch]: ...


@dataclass
class ViewMeans:
    """Per video: the mean over its views of a per-view output (K,), and the videos excluded (unreadable views)."""

    means: dict[int, np.ndarray] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)


def view_means(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    *,
    views: int,
    expected: Sequence[int],
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
) -> ViewMeans:
    """Average fn(video (B, 3, T, H, W)) -> (B, K) over the `views` samples of each of this rank's `expected` videos.

    A video with a view loaded in place of another (its file was unreadable) or missing (a lost batch) is excluded.
    Raises RuntimeError if a view arrives twice (the loader broke its plan: the counts would be wrong).
    """
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    excluded: set[int] = set()
    with torch.no_grad():
        for b in batches:
            with amp or contextlib.nullcontext():
                out = fn(b["video"].to(device, non_blocking=True))
            out = out.float().cpu().double().numpy()  # (B, K); float64 sums: the view order does not matter
            rows = zip(b["planned"].tolist(), b["index"].tolist(), b["real"].tolist(), strict=True)
            for row, (planned, loaded, real) in enumerate(rows):
                video = planned // views
                if not real:
                    continue
                if loaded != planned:
                    excluded.add(video)
                    continue
                counts[video] = counts.get(video, 0) + 1
                if counts[video] > views:
                    raise RuntimeError(f"sample {planned} (video {video}) arrived more than once ({views} views each)")
                sums[video] = sums[video] + out[row] if video in sums else out[row].copy()
    expected = [int(v) for v in expected]
    excluded |= {v for v in expected if counts.get(v, 0) != views}
    return ViewMeans({v: sums[v] / views for v in expected if v not in excluded}, excluded)


def gather(local: ViewMeans, world_size: int) -> ViewMeans:
    """Every rank's ViewMeans joined (on every rank); `local` itself in a single process."""
    if world_size <= 1:
        return local
    parts: list[Any] = [None] * world_size
    tdist.all_gather_object(parts, (local.means, local.excluded))
    joined = ViewMeans()
    for means, excluded in parts:
        if joined.means.keys() & means.keys():
            raise RuntimeError(f"videos {sorted(joined.means.keys() & means.keys())[:5]} evaluated on two ranks")
        joined.means.update(means)
        joined.excluded |= excluded
    return joined


def class_scores(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-view function of a classifier: (B, 3, T, H, W) -> (B, num_classes) softmax probabilities."""
    return lambda video: model(video).float().softmax(-1)


def report(
    probs: ViewMeans,
    *,
    paths: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    missing: Sequence[str] = (),
    csv_path: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy of averaged probabilities: top-1, top-5 (top-k for k = min(5, classes)), mean per-class accuracy,
    counts, and the excluded videos named (unreadable ones by path; `missing`: list rows not on disk).

    paths / labels: per video id. csv_path: also write one row per video: path, label, pred, correct, top5
    (space-separated), prob (of pred), status ("ok", "unreadable", "missing").
    """
    k = min(5, num_classes)
    ids = sorted(probs.means)
    scores = np.stack([probs.means[v] for v in ids]) if ids else np.zeros((0, num_classes))
    y = np.asarray([labels[v] for v in ids], np.int64)
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top1 = topk[:, 0] == y if ids else np.zeros(0, bool)
    top5 = (topk == y[:, None]).any(1) if ids else np.zeros(0, bool)
    per_class = {int(c): float(top1[y == c].mean()) for c in np.unique(y)}
    unreadable = [paths[v] for v in sorted(probs.excluded)]
    result = {
        "videos": len(ids),
        "top1": float(top1.mean()) if ids else math.nan,
        f"top{k}": float(top5.mean()) if ids else math.nan,
        "mean_class_accuracy": float(np.mean(list(per_class.values()))) if per_class else math.nan,
        "per_class": per_class,
        "excluded": len(unreadable) + len(missing),
        "excluded_videos": unreadable + list(missing),
    }
    if csv_path is not None:
        with atomic_write(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "pred", "correct", "top5", "prob", "status"])
            for i, v in enumerate(ids):
                w.writerow([paths[v], labels[v], int(topk[i, 0]), int(top1[i]), " ".join(map(str, topk[i])),
                            f"{scores[i, topk[i, 0]]:.6f}", "ok"])  # fmt: skip
            w.writerows([paths[v], labels[v], "", "", "", "", "unreadable"] for v in sorted(probs.excluded))
            w.writerows([p, "", "", "", "", "", "missing"] for p in missing)
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line for the console: accuracy, how many videos counted and how many were excluded."""
    tops = ", ".join(f"{key} {100 * result[key]:.2f}%" for key in result if key.startswith("top"))
    line = f"{result['videos']} videos: {tops}, mean class accuracy {100 * result['mean_class_accuracy']:.2f}%"
    if result["excluded"]:
        names = ", ".join(result["excluded_videos"][:5]) + (" ..." if result["excluded"] > 5 else "")
        line += f"; {result['excluded']} video(s) excluded (unreadable or missing): {names}"
    return line


def evaluate_views(
    model: nn.Module,
    loader: EvalBatches,
    *,
    num_classes: int,
    world_size: int = 1,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
    csv_path: str | Path | None = None,
) -> dict[str, Any]:
    """The classifier's multi-view accuracy on `loader` (every rank calls it; the result is the same everywhere,
    the CSV written where csv_path is given): `report` of the softmax averaged over each video's views."""
    model.eval()
    local = view_means(class_scores(model), loader, views=loader.views, expected=loader.expected, device=device,
                       amp=amp)  # fmt: skip
    probs = gather(local, world_size)
    return report(probs, paths=[e.path for e in loader.entries], labels=[e.label for e in loader.entries],
                  num_classes=num_classes, missing=loader.missing, csv_path=csv_path)  # fmt: skip
