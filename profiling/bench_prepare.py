"""Dataset-preparation throughput: probe (`mgm-prepare lists`), transcode, motion cache; projection for SSv2.

Clips are synthetic 320x240, 60 frames (H.264 GOP 16 + VP9 twins, as SSv2 ships VP9 .webm). Each stage runs over
all clips with `--workers` processes; the projection scales the measured frames/s per worker linearly to a
16-core machine (independent processes, one per core) for SSv2's 168,913 training videos at an assumed average
of 45 frames (SSv2 clips are 2-6 s at 12 fps) and SSv2's 240-pixel height (widths vary; ~320-427).

    python profiling/bench_prepare.py --num 24 --workers 2 --out runs/bench_prepare.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from mgm.motion_cache import build_cache  # noqa: E402
from mgm.prep import datasets, synth  # noqa: E402
from mgm.prep.filelist import VideoEntry, read_list, write_list  # noqa: E402
from mgm.prep.transcode import EncodeSettings, transcode_list  # noqa: E402
from profiling.report_format import emit  # noqa: E402

SSV2_TRAIN_VIDEOS = 168_913
SSV2_AVG_FRAMES = 45  # assumption, see the docstring
TARGET_CORES = 16


def _row(stage: str, videos: int, frames: int, seconds: float, workers: int) -> dict[str, Any]:
    fps_per_worker = frames / seconds / workers
    ssv2_hours = SSV2_TRAIN_VIDEOS * SSV2_AVG_FRAMES / (fps_per_worker * TARGET_CORES) / 3600
    return {
        "stage": stage,
        "videos": videos,
        "seconds": seconds,
        "videos_per_s": videos / seconds,
        "frames_per_s": frames / seconds,
        "frames_per_s_per_core": fps_per_worker,
        "ssv2_train_h_16_cores": ssv2_hours,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=24, help="clips (320x240, --frames each)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    p.add_argument("--out", help="JSON output (profiling/report_format layout)")
    a = p.parse_args(argv)

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        h264_list = synth.make_dataset(work / "synth", a.num, seed=0, num_frames=a.frames)
        entries = read_list(h264_list)
        webm_list = write_list(
            work / "synth" / "train_vp9.csv",
            [VideoEntry(str(Path(e.path).with_suffix(".webm")), e.label, e.num_frames) for e in entries],
        )
        frames = sum(e.num_frames for e in entries)
        rows = []

        t0 = time.perf_counter()
        results = datasets.probe_all([e.path for e in read_list(webm_list)], a.workers, progress=False)
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        rows.append(_row("probe VP9 (lists)", a.num, frames, time.perf_counter() - t0, a.workers))

        for name, short_side in (("transcode VP9->H.264 240p", 0), ("transcode VP9->H.264 short 320", 320)):
            out = work / f"h264_{short_side}"
            t0 = time.perf_counter()
            s = transcode_list(
                webm_list, out, EncodeSettings(preset=a.preset, short_side=short_side), a.workers, progress=False
            )
            assert s["done"] == a.num and s["frames"] == frames, s
            rows.append(_row(name, a.num, frames, time.perf_counter() - t0, a.workers))

        t0 = time.perf_counter()
        build_cache(h264_list, work / "motion", a.workers, 8, progress=False)
        rows.append(_row("motion cache (cell 8) H.264 240p", a.num, frames, time.perf_counter() - t0, a.workers))

        meta = {
            "clip": f"320x240 x {a.frames} frames",
            "workers": a.workers,
            "preset": a.preset,
            "projection": f"{SSV2_TRAIN_VIDEOS} videos x {SSV2_AVG_FRAMES} frames (assumed avg), "
            f"{TARGET_CORES} cores, linear in cores",
        }
        emit("bench_prepare", rows, out=a.out, meta=meta)
        total = sum(r["ssv2_train_h_16_cores"] for r in rows if r["stage"] != "transcode VP9->H.264 short 320")
        print(
            f"SSv2 train ({SSV2_TRAIN_VIDEOS} videos x {SSV2_AVG_FRAMES} frames assumed) on {TARGET_CORES} cores: "
            f"lists + transcode (240p) + motion cache ~ {total:.2f} h"
        )
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
