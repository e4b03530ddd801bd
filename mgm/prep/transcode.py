"""Re-encode videos to what NVDEC seeks fast and the motion reader can use: H.264, yuv420p, even dimensions,
short GOP, no B-frames (by default), optional short-side resize. Frame count and timestamps are kept.

Safety: an output is written to a hidden `.NAME.partial` file, decoded again and compared frame for frame
(count) with the source, fsynced, and only then renamed into place. So an output that exists is a verified
one (a rerun skips it), an interrupted run leaves at most a hidden partial (overwritten next time), and a
source is never a destination.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from mgm.prep.datasets import parallel_map
from mgm.prep.filelist import VideoEntry, read_list, write_list
from mgm.video import VideoError, decode_checked, open_video, probe


@dataclass(frozen=True)
class EncodeSettings:
    """libx264 settings; `short_side` 0 keeps the size (rounded down to even), `threads` per encode."""

    gop: int = 16
    bframes: int = 0
    crf: int = 23
    preset: str = "veryfast"
    short_side: int = 0
    threads: int = 1


@dataclass
class TranscodeResult:
    """One file's outcome. `skipped` True = a verified output was already there."""

    src: str
    dst: str
    ok: bool
    reason: str = ""
    detail: str = ""
    num_frames: int = 0
    skipped: bool = False


def output_size(height: int, width: int, short_side: int = 0) -> tuple[int, int]:
    """(H, W) after an optional resize of the short side to `short_side`, both rounded to even (yuv420p)."""
    if short_side > 0:
        scale = short_side / min(height, width)
        height, width = round(height * scale), round(width * scale)
    return max(2, height - height % 2), max(2, width - width % 2)


def partial_path(dst: str | Path) -> Path:
    """Hidden work file next to `dst`; a folder scan for videos skips it (leading dot, odd suffix)."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.partial")


def decoded_frames(path: str | Path, fmt: str | None = None) -> tuple[int, list[int]]:
    """Decode `path` (`mgm.video.probe`): (number of frames, indices of key frames)."""
    info = probe(path, decode=True, format=fmt)
    return info.frames or 0, info.key_frames


def _encode(src: str, tmp: Path, s: EncodeSettings) -> int:
    """Decode `src`, encode every frame into `tmp` (mp4), keeping each frame's timestamp. Returns frames."""
    with open_video(src) as inp, av.open(str(tmp), "w", format="mp4") as out:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        ist.codec_context.thread_count = s.threads
        rate = ist.average_rate or ist.guessed_rate or 25
        ost = None
        n, last_pts = 0, None
        for frame in decode_checked(inp, src):
            if ost is None:  # size known from the first decoded frame (container headers can be wrong)
                h, w = output_size(frame.height, frame.width, s.short_side)
                ost = out.add_stream("libx264", rate=rate)
                ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                ost.codec_context.time_base = ist.time_base
                ost.codec_context.thread_count = s.threads
                # min-keyint = keyint and no scene cuts: key frames land exactly every `gop` frames.
                params = f"keyint={s.gop}:min-keyint={s.gop}:scenecut=0:bframes={s.bframes}:open-gop=0"
                ost.options = {"crf": str(s.crf), "preset": s.preset, "x264-params": params}
            pts = frame.pts
            if pts is None:
                pts = round(n / (rate * ist.time_base))
            if last_pts is not None and pts <= last_pts:  # broken source timestamps: keep order, keep frames
                pts = last_pts + 1
            last_pts = pts
            out_frame = frame.reformat(width=ost.width, height=ost.height, format="yuv420p")
            out_frame.pts, out_frame.time_base = pts, ist.time_base
            # The source's picture type would force x264's frame types (an intra-only MJPEG source -> all I-frames,
            # no motion vectors); the GOP settings alone decide them.
            out_frame.pict_type = av.video.frame.PictureType.NONE
            for packet in ost.encode(out_frame):
                out.mux(packet)
            n += 1
        if ost is not None:
            for packet in ost.encode():
                out.mux(packet)
    return n


def transcode_file(src: str, dst: str, settings: EncodeSettings = EncodeSettings()) -> TranscodeResult:
    """Transcode one file (skip if a verified `dst` exists). Never raises for a bad file: see `reason`."""
    r = TranscodeResult(src=src, dst=dst, ok=False)
    if os.path.exists(dst):
        try:  # frames of an H.264 stream without B-frame reordering = video packets: demux only, no decode
            r.num_frames, r.ok, r.skipped = probe(dst).packets or 0, True, True
            return r
        except VideoError:
            pass  # not one of ours after all (unreadable): redo it
    tmp = partial_path(dst)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        src_frames = _encode(src, tmp, settings)
        out_frames, _ = decoded_frames(tmp, fmt="mp4")
        if out_frames != src_frames:
            r.reason, r.detail = "frame_mismatch", f"source {src_frames} frames, output {out_frames}"
            return r
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        r.ok, r.num_frames = True, out_frames
    except VideoError as e:
        r.reason, r.detail = e.reason, e.detail
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        r.reason, r.detail = "decode_error", f"{type(e).__name__}: {e}"
    finally:
        if tmp.exists():  # also on KeyboardInterrupt: never leave a half-written output behind
            tmp.unlink()
    return r


def _job(pair: tuple[str, str], settings: EncodeSettings) -> TranscodeResult:
    return transcode_file(pair[0], pair[1], settings)


def plan_outputs(entries: list[VideoEntry], out_dir: Path) -> list[tuple[str, str, str]]:
    """(src, dst, problem) per entry: dst mirrors the source's path below the sources' common folder, under
    `out_dir`, with `.mp4`. `problem` is non-empty when dst is a source file or another entry's output."""
    norm = [os.path.normpath(os.path.abspath(e.path)) for e in entries]
    root = os.path.commonpath([os.path.dirname(p) for p in norm]) if norm else ""
    sources = {os.path.realpath(p) for p in norm}
    seen: set[str] = set()
    plan = []
    for e, p in zip(entries, norm, strict=True):
        dst = str((out_dir / os.path.relpath(p, root)).with_suffix(".mp4"))
        real = os.path.realpath(dst)
        problem = "would_overwrite_source" if real in sources else "duplicate_output" if real in seen else ""
        seen.add(real)
        plan.append((e.path, dst, problem))
    return plan


def transcode_list(
    list_csv: str | Path,
    out_dir: str | Path,
    settings: EncodeSettings = EncodeSettings(),
    workers: int = 1,
    progress: bool = True,
    out_list: str | Path | None = None,
) -> dict[str, Any]:
    """Transcode every entry of `list_csv` into `out_dir` (mirroring relative paths) and write the new list
    (default `out_dir/<list name>`) plus `<list stem>.failures.csv` (path,reason,detail) when any failed.
    Returns counts: total, done, skipped, failed, by_reason, frames, list, failures."""
    from tqdm import tqdm

    list_csv, out_dir = Path(list_csv), Path(out_dir).resolve()
    entries = read_list(list_csv)
    plan = plan_outputs(entries, out_dir)
    results: list[TranscodeResult | None] = [None] * len(plan)
    work = []
    for i, (src, dst, problem) in enumerate(plan):
        if problem:
            results[i] = TranscodeResult(src, dst, False, problem, f"output {dst} would replace a file of the list")
        else:
            work.append(i)
    job = functools.partial(_job, settings=settings)
    crashed = lambda pair: TranscodeResult(pair[0], pair[1], False, "crashed", "the codec crashed the worker")  # noqa: E731
    with tqdm(total=len(work), desc="transcode", unit="video", disable=not progress) as bar:
        for k, r in parallel_map(job, [plan[i][:2] for i in work], workers, on_crash=crashed):
            results[work[k]] = r
            bar.update()
    done = [(e, r) for e, r in zip(entries, results, strict=True) if r is not None and r.ok]
    failed = [r for r in results if r is not None and not r.ok]
    out_list = Path(out_list) if out_list else out_dir / list_csv.name
    write_list(out_list, [VideoEntry(r.dst, e.label, r.num_frames) for e, r in done])
    failures = out_list.with_name(out_list.stem + ".failures.csv")
    if failed:
        with failures.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason", "detail"])
            w.writerows([r.src, r.reason, r.detail] for r in failed)
    elif failures.exists():
        failures.unlink()  # a clean rerun: the old failures are fixed
    by_reason: dict[str, int] = {}
    for r in failed:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    return {
        "total": len(plan),
        "done": sum(1 for _, r in done if not r.skipped),
        "skipped": sum(1 for _, r in done if r.skipped),
        "failed": len(failed),
        "by_reason": by_reason,
        "frames": sum(r.num_frames for _, r in done),
        "list": str(out_list),
        "failures": str(failures) if failed else "",
    }
