"""Draw a clip's masks to judge them by eye: `python -m mgm.visualize VIDEO --out masks.png`.

One column per tubelet slot (its first sampled frame, centre square crop); rows: the motion heat map over the
frame, the MGM mask, the tube mask (masked tokens greyed out, True = masked). The title gives each mask's motion
coverage and temporal IoU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mgm.masking import build_masking, motion_coverage, temporal_iou
from mgm.motion import read_span, span_of


def render(
    video: str,
    out: str,
    start: int = 0,
    num_frames: int = 16,
    stride: int = 2,
    ratio: float = 0.9,
    tokens: int = 14,
    seed: int = 0,
    cell: int = 8,
) -> dict[str, float]:
    """Write the figure to `out`; return the metrics shown in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = start + stride * np.arange(num_frames)
    first, stop = span_of(idx, 1 << 30)
    field, rgb = read_span(video, first, stop, cell=cell, keep=idx.tolist())
    if len(rgb) < num_frames:
        raise SystemExit(f"{video}: has {field.num_frames} frames, the clip needs frames {idx[0]}..{idx[-1]}")
    h, w = field.frame_size
    side = min(h, w)
    crop = ((w - side) // 2, (h - side) // 2, side, side)
    grid = (num_frames // 2, tokens, tokens)
    motion = field.clip_map(idx, crop, False, grid)  # (T2, Hp, Wp)
    rng = np.random.default_rng(seed)
    masks = {name: build_masking(name, ratio, grid)(motion, rng).reshape(grid) for name in ("mgm", "tube")}
    metrics = {f"{n}_coverage": motion_coverage(m.reshape(-1), motion) for n, m in masks.items()}
    metrics.update({f"{n}_temporal_iou": temporal_iou(m.reshape(-1), grid) for n, m in masks.items()})

    t2 = grid[0]
    fig, axes = plt.subplots(3, t2, figsize=(1.9 * t2, 6.2), squeeze=False)
    x0, y0 = crop[:2]
    vmax = float(motion.max()) or 1.0
    for t in range(t2):
        frame = rgb[int(idx[2 * t])][y0 : y0 + side, x0 : x0 + side]
        extent = (0, side, side, 0)
        axes[0, t].imshow(frame, extent=extent)
        heat = np.ma.masked_less(motion[t], 0.05 * vmax)  # still tokens stay see-through
        axes[0, t].imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=vmax, extent=extent)
        axes[0, t].set_title(f"f{idx[2 * t]}-{idx[2 * t + 1]}", fontsize=8)
        for row, name in ((1, "mgm"), (2, "tube")):
            shade = np.where(masks[name][t][..., None], 0.25, 1.0)  # masked tokens dimmed
            dim = np.kron(shade, np.ones((-(-side // tokens), -(-side // tokens), 1)))[:side, :side]
            axes[row, t].imshow((frame * dim).astype(np.uint8), extent=extent)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(("motion", "mgm", "tube")):
        axes[row, 0].set_ylabel(label)
    fig.suptitle(
        f"{Path(video).name}  ratio {ratio}  |  motion coverage mgm {metrics['mgm_coverage']:.2f} / tube "
        f"{metrics['tube_coverage']:.2f}  |  temporal IoU mgm {metrics['mgm_temporal_iou']:.2f}"
        + ("  (no usable motion: mgm fell back to tube)" if not field.has_vectors or vmax < 1.0 else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgm.visualize", description=__doc__)
    p.add_argument("video")
    p.add_argument("--out", default="masks.png")
    p.add_argument("--start", type=int, default=0, help="first sampled frame")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    m = render(a.video, a.out, a.start, a.frames, a.stride, a.ratio, seed=a.seed)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
