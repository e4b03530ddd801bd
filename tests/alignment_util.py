"""Helpers shared by the alignment tests (CPU and GPU): ground truth through the clip's crop/flip, PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dali_pipes.cpu_loader import crop_resize
from dali_pipes.sampler import ClipSpec
from mgm.prep.synth import render_clip

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def loader_overrides(csv: Path, loader: str, dali_device: str = "auto") -> list[str]:
    """Config overrides for a small aligned run: 4 clips, one batch, flips on, MGM at ratio 0.75, online motion."""
    return [
        f"data.train_list={csv}",
        f"data.loader={loader}",
        f"data.dali_device={dali_device}",
        "data.batch_size=4",
        "data.num_workers=2",
        "data.flip=true",
        "mask.name=mgm",
        "mask.ratio=0.75",
        "motion.source=online",
    ]


def to_pixels(video: torch.Tensor) -> np.ndarray:
    """Normalized (3, T, S, S) -> (T, S, S, 3) float pixels 0..255."""
    m = torch.tensor(MEAN).view(3, 1, 1, 1) * 255
    s = torch.tensor(STD).view(3, 1, 1, 1) * 255
    return (video.float().cpu() * s + m).permute(1, 2, 3, 0).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def truth_of(mp4: str) -> dict:
    return json.loads(Path(mp4).with_suffix(".json").read_text())


def rendered_clip(truth: dict, spec: ClipSpec, size: int) -> np.ndarray:
    """The clip as it should look: the synthetic frames re-rendered exactly, through the spec's crop/resize/flip."""
    frames, _ = render_clip(truth["kind"], truth["seed"], tuple(truth["size"]), truth["num_frames"])
    clip = crop_resize(torch.from_numpy(frames[spec.frame_indices]), spec, size, MEAN, STD)
    return to_pixels(clip)


def object_tokens(truth: dict, spec: ClipSpec, size: int, patch: int, tubelet: int = 2) -> np.ndarray:
    """bool (T2, Hp, Wp): tokens at least half covered by a ground-truth object box in either frame of their slot,
    with the boxes mapped through the crop, resize and flip of `spec`."""
    x0, y0, cw, ch = spec.crop
    n = size // patch
    t2 = len(spec.frame_indices) // tubelet
    out = np.zeros((t2, n, n), bool)
    edges = np.arange(n + 1) * patch
    for t in range(t2):
        for f in spec.frame_indices[t * tubelet : (t + 1) * tubelet]:
            for bx, by, bw, bh in truth["boxes"][int(f)]:
                xa, xb = (bx - x0) * size / cw, (bx + bw - x0) * size / cw
                ya, yb = (by - y0) * size / ch, (by + bh - y0) * size / ch
                if spec.flip:
                    xa, xb = size - xb, size - xa
                ox = np.clip(np.minimum(edges[1:], xb) - np.maximum(edges[:-1], xa), 0, None) / patch
                oy = np.clip(np.minimum(edges[1:], yb) - np.maximum(edges[:-1], ya), 0, None) / patch
                out[t] |= (oy[:, None] * ox[None, :]) >= 0.5
    return out
