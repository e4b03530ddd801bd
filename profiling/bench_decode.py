"""Clips/s of every way to load VideoMAE clips, side by side, in one run on this machine.

Same clips (synthetic 320x240, 60 frames, GOP 16, no B-frames; H.264 + VP9 twins), same clip recipe (16 frames
at stride 2, multi-scale crop to 224, normalize, mask), same worker count and batch size for every row:
- dali-cpu:   DALI's CPU decoder on the VP9 twins (dali_pipes, what runs without a GPU)
- cpu:        dali_pipes' PyAV fallback on the H.264 originals
- *+mgm:      the same with motion-guided masks from online motion-vector reads (fallback: same decode; DALI:
              a second, motion-only read of the H.264 in the workers)
- videomae:   the VideoMAE-style per-item loader (profiling/baseline_videomae.py), tube masks in numpy; the
              "reused swscale" row converts frames to RGB without PyAV's per-frame swscale set-up (as decord)
- torchcodec: VideoDecoder.get_frames_at, decode only, no transforms (only when importable)
- "R=k":      repeated sampling (data.repeat=k): each video read once for k clips (own start, crop, flip, mask;
              "R=k shared": data.repeat_frames=shared, the k clips take the same frames, as VideoMAE V2's num_sample),
              the batch still `--batch` clips; `x_r1` / `x_r1_cpu` compare with the same loader at R=1 (wall clock,
              CPU per clip). Goal (issue 13): the loader at R=2 >= 1.7x R=1 in CPU time per clip.

Real clips (profiling/real_clips.py; camera and film clips from registry packages, fetched once into a cache) get
the CPU fallback and VideoMAE-baseline rows too, as they are ("real raw": B-frames, long GOPs, MPEG-4 / MS-MPEG4
AVIs) and after `mgm-prepare transcode` ("real transcoded"); each row's x_baseline compares it with the baseline
on the same clips.

    python profiling/bench_decode.py [--clips 32 --batch 4 --batches 12 --workers 2 --rounds 3 --out FILE.json]
                                     [--real bikes,box,cup,bigbuckbunny,megamind,vtest] [--repeats 2,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from profiling.report_format import emit


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its live descendants (Linux /proc).

    Loader workers are child processes: their CPU time is what a clip costs, whatever else shares the machine.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    mine = {os.getpid()}
    changed = True
    while changed:  # collect descendants (workers of workers included)
        changed = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return sum(cpu[p] for p in mine if p in cpu)


def run_loader(name: str, make: Callable[[], Any], batches: int, batch_size: int) -> dict[str, Any]:
    """Start-up seconds (building the loader to its first batch), then over the next `batches` batches: clips/s
    (wall clock) and CPU ms per clip (this process and its workers). Epochs repeat on the same loader object, so
    worker start-up is paid once."""
    loader = make()
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    startup = time.perf_counter() - t0
    n, t1, c1 = 0, time.perf_counter(), tree_cpu_seconds()
    while n < batches:
        for _ in it:
            n += 1
            if n == batches:
                break
        else:
            it = iter(loader)  # next epoch, same workers
    secs, cpu = time.perf_counter() - t1, tree_cpu_seconds() - c1
    getattr(loader, "close", lambda: None)()
    clips = batches * batch_size
    return {"loader": name, "clips_per_s": clips / secs, "cpu_ms_per_clip": 1000 * cpu / clips, "startup_s": startup}


def real_lists(names: list[str], folder: Path) -> dict[str, Path]:
    """File lists of the real clips `names`: {"real raw": csv, "real transcoded": csv} (transcoded once, with
    mgm-prepare transcode's default settings, into `folder`). Clips that cannot be had are reported, left out."""
    from mgm.prep.filelist import VideoEntry, write_list
    from mgm.prep.transcode import transcode_file
    from mgm.video_probe import probe
    from profiling.real_clips import fetch

    paths, errors = fetch(names)
    for name, why in errors.items():
        print(f"real clip {name} skipped: {why}", file=sys.stderr)
    raw, out = [], []
    for i, (name, path) in enumerate(paths.items()):
        raw.append(VideoEntry(str(path), i, probe(path, decode=True).frames or 0))
        r = transcode_file(str(path), str(folder / "transcoded" / f"{name}.mp4"))
        if r.ok:
            out.append(VideoEntry(r.dst, i, r.num_frames))
        else:
            print(f"real clip {name}: transcode failed ({r.reason}: {r.detail})", file=sys.stderr)
    lists = {"real raw": (raw, folder / "raw.csv"), "real transcoded": (out, folder / "transcoded.csv")}
    # each clip listed several times over: a few real clips still fill batches, random clips of each
    return {
        label: write_list(csv, entries * -(-16 // len(entries))) for label, (entries, csv) in lists.items() if entries
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/mgm_bench_decode", help="folder for the synthetic clips (made once)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row, after one warm-up batch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="each row runs this many times; the median is reported")
    ap.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    ap.add_argument("--out", default="runs/bench_decode.json")
    ap.add_argument("--real", default="bikes,box,cup,bigbuckbunny,megamind,vtest",
                    help="real clips (profiling/real_clips.py names; '' for none)")  # fmt: skip
    ap.add_argument("--repeats", default="2,4", help="data.repeat values beside R=1 ('' for none), dividing --batch")
    args = ap.parse_args()
    repeats = [int(r) for r in args.repeats.split(",") if r.strip()]

    import torch

    from dali_pipes import build_loader
    from mgm.config import load_config
    from mgm.prep.filelist import read_list
    from mgm.prep.synth import make_dataset
    from profiling.baseline_videomae import baseline_loader

    torch.set_num_threads(1)  # the workers do the work; the main process only collates
    csv = make_dataset(args.data, num=args.clips, seed=0)
    entries = read_list(csv)

    def ours(loader: str, mask: str, csv: Path = csv, repeat: int = 1, frames: str = "own") -> Callable[[], Any]:
        ov = [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu",
              f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", f"mask.name={mask}",
              "motion.source=online", f"data.repeat={repeat}", f"data.repeat_frames={frames}"]  # fmt: skip
        return lambda: build_loader(load_config(None, ov))

    rows_to_run: dict[str, Callable[[], Any]] = {
        "dali-cpu (VP9)": ours("dali", "tube"),
        "cpu fallback (H.264)": ours("cpu", "tube"),
        "videomae baseline (H.264)": lambda: baseline_loader(
            [e.path for e in entries], [e.num_frames for e in entries], batch_size=args.batch, num_workers=args.workers
        ),  # fmt: skip
        "videomae baseline, reused swscale (H.264)": lambda: baseline_loader(
            [e.path for e in entries],
            [e.num_frames for e in entries],
            batch_size=args.batch,
            num_workers=args.workers,
            reuse_swscale=True,
        ),
        "cpu fallback (H.264) +mgm": ours("cpu", "mgm"),
        "dali-cpu (VP9) +mgm": ours("dali", "mgm"),
        **{
            f"{name} R={r}{' shared' if frames == 'shared' else ''}": ours(loader, "tube", repeat=r, frames=frames)
            for loader, name in (("dali", "dali-cpu (VP9)"), ("cpu", "cpu fallback (H.264)"))
            for r in repeats
            for frames in ("own", "shared")
        },  # fmt: skip
    }
    try:
        from torchcodec.decoders import VideoDecoder  # optional baseline: decode only

        def torchcodec_loader() -> Any:
            from torch.utils.data import DataLoader, Dataset

            class Decode(Dataset):
                def __len__(self) -> int:
                    return len(entries)

                def __getitem__(self, i: int) -> Any:
                    start = int(np.random.default_rng(i).integers(0, entries[i].num_frames - 31))
                    return VideoDecoder(entries[i].path).get_frames_at(list(range(start, start + 32, 2))).data

            return DataLoader(Decode(), batch_size=args.batch, num_workers=args.workers, drop_last=True,
                              persistent_workers=args.workers > 0)  # fmt: skip

        rows_to_run["torchcodec (H.264, decode only)"] = torchcodec_loader
    except Exception:  # not installed, or its FFmpeg libraries are missing
        pass
    real_names = [n for n in args.real.split(",") if n]
    for label, real_csv in (real_lists(real_names, Path(args.data) / "real") if real_names else {}).items():
        real = read_list(real_csv)
        rows_to_run[f"cpu fallback ({label})"] = ours("cpu", "tube", real_csv)
        rows_to_run[f"cpu fallback ({label}) +mgm"] = ours("cpu", "mgm", real_csv)
        for r in repeats:
            rows_to_run[f"cpu fallback ({label}) R={r}"] = ours("cpu", "tube", real_csv, r)
            rows_to_run[f"cpu fallback ({label}) R={r} shared"] = ours("cpu", "tube", real_csv, r, "shared")
        rows_to_run[f"videomae baseline ({label})"] = lambda real=real: baseline_loader(
            [e.path for e in real], [e.num_frames for e in real], batch_size=args.batch, num_workers=args.workers
        )  # fmt: skip
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    names = [n for n in rows_to_run if not only or any(o in n for o in only)]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(args.rounds):  # rounds interleave the rows, so a busy spell on the machine hits all of them
        for name in names:
            runs[name].append(run_loader(name, rows_to_run[name], args.batches, args.batch))
    rows = []
    for name, rs in runs.items():
        rates = sorted(r["clips_per_s"] for r in rs)
        cpu_ms = float(np.median([r["cpu_ms_per_clip"] for r in rs]))
        rows.append({"loader": name, "clips_per_s": float(np.median(rates)), "min": rates[0], "max": rates[-1],
                     "cpu_ms_per_clip": cpu_ms, "clips_per_core_s": 1000 / cpu_ms,
                     "startup_s": float(np.median([r["startup_s"] for r in rs]))})  # fmt: skip

    def data(name: str) -> str:  # which clips a row reads: the synthetic set or one of the real lists
        return next((label for label in ("real raw", "real transcoded") if f"({label})" in name), "synthetic")

    base = next((r for r in rows if r["loader"].startswith("videomae")), None)
    for r in rows:  # wall-clock ratio, and CPU-cost ratio (robust to other load on the machine), same clips
        same = [x for x in rows if data(x["loader"]) == data(r["loader"])]
        b = next((x for x in same if x["loader"].startswith("videomae")), None)
        r["x_baseline"] = r["clips_per_s"] / b["clips_per_s"] if b else float("nan")
        r["x_baseline_cpu"] = b["cpu_ms_per_clip"] / r["cpu_ms_per_clip"] if b else float("nan")
        one = next((x for x in rows if " R=" in r["loader"] and x["loader"] == r["loader"].rsplit(" R=", 1)[0]), None)
        r["x_r1"] = r["clips_per_s"] / one["clips_per_s"] if one else float("nan")
        r["x_r1_cpu"] = one["cpu_ms_per_clip"] / r["cpu_ms_per_clip"] if one else float("nan")
    meta = {"clips": args.clips, "size": "320x240", "frames": 60, "gop": 16, "clip": "16 frames stride 2 -> 224",
            "batch": args.batch, "timed_batches": args.batches, "workers": args.workers, "rounds": args.rounds,
            "cores": len(os.sched_getaffinity(0))}  # fmt: skip
    meta["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other jobs on the machine, at the end
    emit("bench_decode", rows, out=args.out, meta=meta)
    for r in rows:  # issue 13's goal for repeated sampling, judged on CPU time per clip
        if r["loader"].endswith((" R=2", " R=2 shared")) and r["x_r1_cpu"] == r["x_r1_cpu"]:
            met = "met" if r["x_r1_cpu"] >= 1.7 else "NOT met"
            print(f"target {r['loader']} >= 1.7x R=1 in CPU per clip: {met} (x{r['x_r1_cpu']:.2f} CPU per clip, "
                  f"x{r['x_r1']:.2f} wall)")  # fmt: skip
    fallback = next((r for r in rows if r["loader"] == "cpu fallback (H.264)"), None)
    if fallback and base:
        met = "met" if min(fallback["x_baseline"], fallback["x_baseline_cpu"]) >= 2 else "NOT met"
        print(f"target fallback >= 2x VideoMAE-style baseline: {met} (x{fallback['x_baseline']:.2f} wall, "
              f"x{fallback['x_baseline_cpu']:.2f} CPU per clip)")  # fmt: skip
    strict = next((r for r in rows if "reused swscale" in r["loader"]), None)
    if fallback and strict:
        print(f"vs the baseline with reused swscale: x{fallback['clips_per_s'] / strict['clips_per_s']:.2f} wall, "
              f"x{strict['cpu_ms_per_clip'] / fallback['cpu_ms_per_clip']:.2f} CPU per clip")  # fmt: skip


if __name__ == "__main__":
    main()
