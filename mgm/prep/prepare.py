"""`mgm-prepare`: from downloaded datasets to what the loader reads.

mgm-prepare synth     --out DIR --num N --seed S            synthetic clips + train.csv
mgm-prepare lists     --format ssv2|k400|folder ... --out L  file list (path,label,num_frames) + rejects
mgm-prepare transcode --list L --out DIR                     H.264, GOP 16, no B-frames; new list in DIR
                      [--vp9-twins]                          + VP9 twins for DALI's CPU decoder
mgm-prepare motion    --list L --out DIR                     motion-vector cache for `motion.source=cache`
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from mgm.prep import datasets
from mgm.prep.filelist import FileListError, VideoEntry, write_list


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 240x320, got {text!r}") from None
    return h, w


def _default_workers() -> int:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------- synth
def cmd_synth(a: argparse.Namespace) -> int:
    from mgm.prep import synth

    kwargs = {"size": a.size, "num_frames": a.frames, "gop": a.gop, "bframes": a.bframes}
    # absolute: filelist.write_list keeps relative entry paths verbatim, which would make them cwd-relative
    csv_path = synth.make_dataset(Path(a.out).resolve(), a.num, a.seed, **kwargs)
    print(f"synth: {a.num} clips in {a.out}, list {csv_path}")
    return 0


# --------------------------------------------------------------------------------------------- lists
def _candidates(a: argparse.Namespace) -> tuple[list[datasets.Candidate], list[tuple[str, str]], list[str]]:
    exts = tuple(e if e.startswith(".") else "." + e for e in a.ext.split(",")) if a.ext else datasets.VIDEO_EXTS
    classes = datasets.read_classes(a.classes) if a.classes else None
    if a.format == "ssv2":
        if not a.labels or not a.annotations:
            raise datasets.AnnotationError("--format ssv2 needs --labels labels.json and --annotations train.json")
        cands, bad = datasets.ssv2_candidates(a.labels, a.annotations, a.video_dir, ext=exts[0] if a.ext else ".webm")
        return cands, bad, []
    if a.format == "k400":
        if not a.annotations:
            raise datasets.AnnotationError("--format k400 needs --annotations train.csv")
        return datasets.kinetics_candidates(a.annotations, a.video_dir, split=a.split, classes=classes, exts=exts)
    cands, names = datasets.folder_candidates(a.video_dir, exts=exts, classes=classes)
    return cands, [], names


def cmd_lists(a: argparse.Namespace) -> int:
    try:
        cands, bad, classes = _candidates(a)
    except datasets.AnnotationError as e:
        print(f"mgm-prepare lists: {e}", file=sys.stderr)
        return 2
    results = datasets.probe_all([c.path for c in cands], a.workers, progress=not a.quiet)
    out = Path(a.out)
    entries = [VideoEntry(c.path, c.label, r.num_frames) for c, r in zip(cands, results, strict=True) if r.ok]
    write_list(out, entries)
    rejects = Path(a.rejects) if a.rejects else out.with_name(out.stem + ".rejects.csv")
    with rejects.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason", "detail"])
        w.writerows([key, reason, "annotation"] for key, reason in bad)
        w.writerows([r.path, r.reason, r.detail] for r in results if not r.ok)
    if classes:
        out.with_name(out.stem + ".classes.txt").write_text("".join(c + "\n" for c in classes))
    notes = out.with_name(out.stem + ".notes.csv")
    with notes.open("w", newline="") as f:  # kept files worth knowing about (header counts, DALI, rotation)
        w = csv.writer(f)
        w.writerow(["path", "note", "detail"])
        w.writerows([r.path, kind, detail] for r in results if r.ok for kind, detail in r.notes)
    s = datasets.summarize(results, bad)
    rej = ", ".join(f"{k} {v}" for k, v in sorted(s["rejected"].items())) or "none"
    codecs = ", ".join(f"{k} {v}" for k, v in sorted(s["codecs"].items())) or "-"
    n = s["notes"]
    print(
        f"lists: {s['ok']}/{s['total']} usable -> {out} | rejected: {rej} -> {rejects} | codecs: {codecs} | "
        f"frames min/mean/max {s['frames_min']}/{s['frames_mean']}/{s['frames_max']} | "
        f"without motion vectors: {s['without_mvs']}" + (" (run `mgm-prepare transcode`)" if s["without_mvs"] else "")
    )
    if n:
        print(
            f"notes -> {notes}: header promised another frame count (kept with the frames that decode): "
            f"{n.get('header', 0)}"
            + (f" (e.g. {s['header_example']})" if s["header_example"] else "")
            + f" | cut short, all that is there decodes: {n.get('cut', 0)}"
            + f" | timestamps not in output order: {n.get('timestamps', 0)}"
            f" | DALI's GPU decoder cannot decode: {n.get('nvdec', 0)}"
            f" | rotated (read as stored): {n.get('rotation', 0)}"
            + (" | `mgm-prepare transcode` fixes timestamps and formats" if n.keys() & {"timestamps", "nvdec"} else "")
        )
    return 0 if s["ok"] else 1


# --------------------------------------------------------------------------------------------- transcode
def cmd_transcode(a: argparse.Namespace) -> int:
    from mgm.prep.transcode import EncodeSettings, transcode_list

    settings = EncodeSettings(
        gop=a.gop,
        bframes=a.bframes,
        crf=a.crf,
        preset=a.preset,
        short_side=a.short_side,
        threads=a.threads,
        vp9_twin=a.vp9_twins,
    )
    try:
        s = transcode_list(a.list, a.out, settings, workers=a.workers, progress=not a.quiet, out_list=a.out_list)
    except FileListError as e:
        print(f"mgm-prepare transcode: {e}", file=sys.stderr)
        return 2
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["by_reason"].items()))
    print(
        f"transcode: {s['done']} encoded, {s['skipped']} already done, {s['failed']} failed"
        + (f" ({reasons}) -> {s['failures']}" if s["failed"] else "")
        + f" | {s['frames']} frames | list {s['list']}"
    )
    return 0 if s["failed"] < s["total"] or s["total"] == 0 else 1


# --------------------------------------------------------------------------------------------- motion
def cmd_motion(a: argparse.Namespace) -> int:
    from mgm.motion_cache import build_cache

    try:
        stats = build_cache(a.list, a.out, a.workers, a.cell, progress=not a.quiet)
    except FileListError as e:
        print(f"mgm-prepare motion: {e}", file=sys.stderr)
        return 2
    print("motion: " + " | ".join(f"{k} {v}" for k, v in stats.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgm-prepare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic dataset (moving boxes) and its train.csv")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(240, 320), help="HxW (default 240x320)")
    s.add_argument("--frames", type=int, default=60)
    s.add_argument("--gop", type=int, default=16)
    s.add_argument("--bframes", type=int, default=0)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("lists", help="file list (path,label,num_frames) from annotations; probes every file")
    s.add_argument("--format", required=True, choices=["ssv2", "k400", "folder"])
    s.add_argument("--video-dir", required=True, help="folder with the videos (k400/folder: searched recursively)")
    s.add_argument("--annotations", help="ssv2: train.json / validation.json; k400: the split's CSV")
    s.add_argument("--labels", help="ssv2: labels.json (template -> id)")
    s.add_argument("--split", help="k400: keep rows whose `split` column equals this (e.g. train, val)")
    s.add_argument("--classes", help="k400/folder: class names one per line (ids = line order); default sorted")
    s.add_argument("--ext", default="", help="file extension(s), comma separated (ssv2 default .webm)")
    s.add_argument("--out", required=True, help="list CSV to write; also <stem>.rejects.csv [.classes.txt]")
    s.add_argument("--rejects", help="rejects CSV (path,reason,detail); default next to --out")
    s.add_argument("--workers", type=int, default=_default_workers())
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_lists)

    s = sub.add_parser("transcode", help="re-encode a list to H.264 (short GOP, no B-frames); resumable")
    s.add_argument("--list", required=True)
    s.add_argument("--out", required=True, help="output folder (mirrors the sources' folders)")
    s.add_argument("--out-list", help="new list CSV (default OUT/<list name>)")
    s.add_argument("--gop", type=int, default=16)
    s.add_argument("--bframes", type=int, default=0)
    s.add_argument("--short-side", type=int, default=0, help="resize so the short side is this (0 = keep)")
    s.add_argument("--crf", type=int, default=23)
    s.add_argument("--preset", default="veryfast", help="x264 preset")
    s.add_argument("--threads", type=int, default=1, help="codec threads per file")
    s.add_argument("--vp9-twins", action="store_true", help="also write VP9 .webm twins (DALI's CPU decoder)")
    s.add_argument("--workers", type=int, default=_default_workers())
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_transcode)

    s = sub.add_parser("motion", help="build the motion-vector cache for a list")
    s.add_argument("--list", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=_default_workers())
    s.add_argument("--cell", type=int, default=8)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_motion)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mgm-prepare` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:  # finished outputs are verified and kept; partial ones were removed
        print(f"mgm-prepare {args.cmd}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
