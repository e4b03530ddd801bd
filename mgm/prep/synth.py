"""Synthetic clips with ground truth: textured objects moving over a textured background.

Each clip is written as H.264 (`.mp4`, the motion-vector source and the GPU decode input) and, optionally,
as a VP9 twin of the same frames (`.webm`, what DALI's CPU decoder reads), with a `.json` of ground truth:
per-frame object boxes `[x, y, w, h]` (top-left origin, source pixels) and a label. The label is the first
object's motion direction (0 right, 1 left, 2 down, 3 up) or 4 for a static clip, so the set doubles as a
tiny labelled dataset. Everything is deterministic for a seed.

Kinds: `single` (one object, still background), `pan` (one object, the camera pans), `two` (two objects
moving apart), `static` (nothing moves).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mgm.prep.filelist import VideoEntry, write_list

KINDS = ("single", "pan", "two", "static")
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # label 0..3 as (dx, dy); 4 = static
STATIC_LABEL = 4
NUM_CLASSES = 5


@dataclass(frozen=True)
class EncodeSpec:
    gop: int = 16
    bframes: int = 0
    fps: int = 12
    crf: int = 18


def _texture(rng: np.random.Generator, h: int, w: int, scale: int, lo: int, hi: int) -> np.ndarray:
    """Smooth colour noise (H, W, 3) uint8: random values on a coarse grid, upsampled bilinearly."""
    gh, gw = h // scale + 2, w // scale + 2
    coarse = rng.uniform(lo, hi, size=(gh, gw, 3)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bot = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.uint8)


def _object(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bright checkered patch with noise: strong texture so the encoder finds its motion."""
    cells = (np.indices((size, size)).sum(0) // max(size // 6, 2)) % 2
    base = np.where(cells[..., None], rng.uniform(200, 255, 3), rng.uniform(20, 80, 3))
    return np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def _path(start: int, step: int, frames: int) -> np.ndarray:
    return start + step * np.arange(frames)


def render_clip(
    kind: str, seed: int, size: tuple[int, int] = (240, 320), num_frames: int = 60
) -> tuple[np.ndarray, dict]:
    """Frames (F, H, W, 3) uint8 and ground truth for one synthetic clip."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {KINDS}")
    rng = np.random.default_rng(seed)
    h, w = size
    obj_size = max(16, min(h, w) // 5)
    speed = max(1, min((w - obj_size) // num_frames, (h - obj_size) // num_frames, 3))
    pan = (2, 1) if kind == "pan" else (0, 0)
    span = num_frames * max(abs(p) for p in pan)
    background = _texture(rng, h + span + 1, w + span + 1, scale=12, lo=60, hi=190)

    n_obj = {"single": 1, "pan": 1, "two": 2, "static": 1}[kind]
    label = STATIC_LABEL if kind == "static" else int(rng.integers(4))
    objects = []  # (texture, xs, ys)
    for i in range(n_obj):
        d = label if i == 0 else (label ^ 1 if label != STATIC_LABEL else 0)  # second object moves the other way
        dx, dy = (0, 0) if kind == "static" else DIRECTIONS[d]
        travel = speed * (num_frames - 1)
        # start so that the whole path stays inside the frame
        x_lo, x_hi = (travel if dx < 0 else 0), w - obj_size - (travel if dx > 0 else 0)
        y_lo, y_hi = (travel if dy < 0 else 0), h - obj_size - (travel if dy > 0 else 0)
        if i == 1:  # keep the two objects apart: the other half of the frame across the motion axis
            if dx:
                y_lo, y_hi = (h // 2, y_hi) if objects[0][2][0] < h // 2 else (y_lo, h // 2 - obj_size)
            else:
                x_lo, x_hi = (w // 2, x_hi) if objects[0][1][0] < w // 2 else (x_lo, w // 2 - obj_size)
        x0 = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
        y0 = int(rng.integers(y_lo, max(y_lo, y_hi) + 1))
        objects.append((_object(rng, obj_size), _path(x0, dx * speed, num_frames), _path(y0, dy * speed, num_frames)))

    frames = np.empty((num_frames, h, w, 3), np.uint8)
    boxes = []
    for f in range(num_frames):
        ox, oy = pan[0] * f, pan[1] * f
        frame = frames[f]
        frame[:] = background[oy : oy + h, ox : ox + w]
        fb = []
        for tex, xs, ys in objects:
            x, y = int(xs[f]), int(ys[f])
            frame[y : y + obj_size, x : x + obj_size] = tex
            fb.append([x, y, obj_size, obj_size])
        boxes.append(fb)
    truth = {"kind": kind, "label": label, "size": [h, w], "num_frames": num_frames, "pan": list(pan), "boxes": boxes}
    return frames, truth


def encode(
    frames: np.ndarray,
    path: str | Path,
    codec: str,
    spec: EncodeSpec = EncodeSpec(),
    *,
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode (F, H, W, 3) uint8 RGB frames at `spec.fps` with a fixed GOP of `spec.gop`.

    `options` replaces the codec options made from `spec` (x264: crf, no scene cuts, `spec.bframes`; VP9:
    realtime); `pts` gives the timestamps in 1/fps s (default 0, 1, 2, ...: constant frame rate).
    """
    path = Path(path)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=spec.fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, spec.fps)
        stream.codec_context.gop_size = spec.gop
        if codec == "libx264":
            stream.codec_context.max_b_frames = spec.bframes
        if options is not None:
            stream.options = options
        elif codec == "libx264":
            stream.options = {
                "crf": str(spec.crf),
                "preset": "veryfast",
                "x264-params": f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:bframes={spec.bframes}",
            }
        elif codec == "libvpx-vp9":
            stream.options = {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8", "g": str(spec.gop)}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_clip(
    path_stem: str | Path,
    kind: str,
    seed: int,
    size: tuple[int, int] = (240, 320),
    num_frames: int = 60,
    gop: int = 16,
    bframes: int = 0,
    vp9_twin: bool = True,
) -> dict:
    """Write `<stem>.mp4` (H.264), optionally `<stem>.webm` (VP9) and `<stem>.json`; return the ground truth."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frames, truth = render_clip(kind, seed, size, num_frames)
    spec = EncodeSpec(gop=gop, bframes=bframes)
    encode(frames, stem.with_suffix(".mp4"), "libx264", spec)
    if vp9_twin:
        encode(frames, stem.with_suffix(".webm"), "libvpx-vp9", spec)
    truth.update(seed=seed, gop=gop, bframes=bframes)
    stem.with_suffix(".json").write_text(json.dumps(truth))
    return truth


def make_dataset(
    out_dir: str | Path,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (240, 320),
    num_frames: int = 60,
    gop: int = 16,
    bframes: int = 0,
    vp9_twin: bool = True,
    kinds: tuple[str, ...] = KINDS,
) -> Path:
    """Write `num` clips cycling through `kinds` under `out_dir/videos` and the list `out_dir/train.csv`.

    Clips already written (their `.json` exists) are kept, so an interrupted run resumes.
    """
    out = Path(out_dir)
    entries = []
    for i in range(num):
        stem = out / "videos" / f"clip_{i:05d}"
        if stem.with_suffix(".json").exists():
            truth = json.loads(stem.with_suffix(".json").read_text())
        else:
            truth = make_clip(stem, kinds[i % len(kinds)], seed * 100_003 + i, size, num_frames, gop, bframes, vp9_twin)
        entries.append(VideoEntry(str(stem.with_suffix(".mp4")), truth["label"], truth["num_frames"]))
    return write_list(out / "train.csv", entries)
