"""Re-encode videos to what NVDEC seeks fast and the motion reader can use: H.264, 8-bit yuv420p (10-bit, 4:2:2,
4:4:4 and full-range sources are converted), even dimensions, short GOP, no B-frames (by default), optional
short-side resize; optionally a VP9 twin of the same frames (`.webm`, what DALI's CPU decoder reads). Frame i of
the output is frame i of the source (the frames FFmpeg outputs, in output order: mgm.video); timestamps are kept
where they rise, and nudged up by one tick where the source repeats them or runs them backwards. Frames are
written as stored: a display rotation is not applied (nor kept), the audio is dropped.

Layout: each output mirrors its source's path relative to the folder of the list (`a/x.avi` -> `OUT/a/x.mp4`;
`_abs/...` for a source outside it), so train and val lists transcoded into one folder never collide; two sources
that would share an output (`x.avi`, `x.mp4`) keep their suffix in the name (`x.avi.mp4`).

Safety: an output is written to a hidden `.NAME.partial` file, decoded again and compared (frame count) with the
source, fsynced, and only then renamed into place; a hidden sidecar `.NAME.json` then records the settings and
the source (size, mtime) that made it. A rerun skips an output whose sidecar matches, and redoes one made with
other settings or from a changed source. An interrupted run leaves at most a hidden partial (overwritten next
time), and a source is never a destination.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from mgm.atomic import atomic_write
from mgm.prep.datasets import parallel_map
from mgm.prep.filelist import VideoEntry, read_list, write_list
from mgm.video import VideoError, open_video
from mgm.video_probe import decode_checked, probe

TWIN = ".webm"  # suffix of the VP9 twins (data.twin_suffix's default)


@dataclass(frozen=True)
class EncodeSettings:
    """libx264 settings; `short_side` 0 keeps the size (rounded down to even), `threads` per encode, `vp9_twin`
    also writes a VP9 `.webm` of the same frames beside each output."""

    gop: int = 16
    bframes: int = 0
    crf: int = 23
    preset: str = "veryfast"
    short_side: int = 0
    threads: int = 1
    vp9_twin: bool = False

    def recipe(self) -> dict[str, Any]:
        """What decides an output's content (threads only change the speed): recorded in its sidecar."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "threads"}


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


def sidecar_path(dst: str | Path) -> Path:
    """Hidden record of what made `dst` (settings, source, frames) next to it."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.json")


def _source_id(src: str) -> dict[str, Any]:
    st = os.stat(src)
    return {"path": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _made_by(src: str, dst: str, settings: EncodeSettings) -> int | None:
    """Frames of `dst` when its sidecar says it was made from `src` as it is now, with these settings, and the
    output (and twin) are still there; else None (redo it)."""
    try:
        rec = json.loads(sidecar_path(dst).read_text())
        ok = rec["settings"] == settings.recipe() and rec["source"] == _source_id(src)
        ok = ok and os.path.getsize(dst) == rec["size"] and (not settings.vp9_twin or os.path.isfile(rec["twin"]))
        return int(rec["frames"]) if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decoded_frames(path: str | Path, fmt: str | None = None) -> tuple[int, list[int]]:
    """Decode `path` (`mgm.video_probe.probe`): (number of frames, indices of key frames)."""
    info = probe(path, decode=True, format=fmt)
    return info.frames or 0, info.key_frames


def _new_stream(out: av.container.OutputContainer, codec: str, rate: Any, ist: av.VideoStream, size: tuple[int, int],
                s: EncodeSettings) -> av.VideoStream:  # fmt: skip
    ost = out.add_stream(codec, rate=rate)
    ost.height, ost.width = size
    ost.pix_fmt = "yuv420p"
    ost.codec_context.time_base = ist.time_base
    ost.codec_context.thread_count = s.threads
    if codec == "libx264":  # min-keyint = keyint and no scene cuts: key frames land exactly every `gop` frames
        params = f"keyint={s.gop}:min-keyint={s.gop}:scenecut=0:bframes={s.bframes}:open-gop=0"
        ost.options = {"crf": str(s.crf), "preset": s.preset, "x264-params": params}
    else:  # the VP9 twin: fast, the same GOP (DALI's CPU decoder seeks to its key frames)
        ost.options = {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "g": str(s.gop)}
    return ost


def _encode(src: str, tmp: Path, s: EncodeSettings, twin_tmp: Path | None = None) -> int:
    """Decode `src` in output order, encode every frame into `tmp` (mp4; and `twin_tmp`, VP9 webm), keeping each
    frame's timestamp where it rises. Returns the frames written."""
    with contextlib.ExitStack() as stack:
        inp = stack.enter_context(open_video(src))
        outs = [stack.enter_context(av.open(str(tmp), "w", format="mp4"))]
        if twin_tmp is not None:
            outs.append(stack.enter_context(av.open(str(twin_tmp), "w", format="webm")))
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        ist.codec_context.thread_count = s.threads
        rate = ist.average_rate or ist.guessed_rate or 25
        codecs = ["libx264", "libvpx-vp9"][: len(outs)]
        pairs: list[tuple[av.container.OutputContainer, av.VideoStream]] = []
        n, last_pts = 0, None
        for frame in decode_checked(inp, src):
            if not pairs:  # size known from the first decoded frame (container headers can be wrong)
                size = output_size(frame.height, frame.width, s.short_side)
                pairs = [(o, _new_stream(o, c, rate, ist, size, s)) for o, c in zip(outs, codecs, strict=True)]
            pts = frame.pts
            if pts is None:
                pts = round(n / (rate * ist.time_base))
            if last_pts is not None and pts <= last_pts:  # broken source timestamps: keep order, keep frames
                pts = last_pts + 1
            last_pts = pts
            # 10-bit, 4:2:2 or full range in, 8-bit limited-range 4:2:0 out (what NVDEC decodes)
            out_frame = frame.reformat(width=size[1], height=size[0], format="yuv420p",
                                       dst_color_range=av.video.reformatter.ColorRange.MPEG)  # fmt: skip
            out_frame.pts, out_frame.time_base = pts, ist.time_base
            # The source's picture type would force x264's frame types (an intra-only MJPEG source -> all I-frames,
            # no motion vectors); the GOP settings alone decide them.
            out_frame.pict_type = av.video.frame.PictureType.NONE
            for o, ost in pairs:
                o.mux(ost.encode(out_frame))
            n += 1
        for o, ost in pairs:
            o.mux(ost.encode())
    return n


def transcode_file(src: str, dst: str, settings: EncodeSettings = EncodeSettings()) -> TranscodeResult:
    """Transcode one file (skip it if its sidecar says these settings made it from this source). Never raises for
    a bad file: see `reason`."""
    r = TranscodeResult(src=src, dst=dst, ok=False)
    done = _made_by(src, dst, settings) if os.path.exists(dst) else None
    if done is not None:
        r.num_frames, r.ok, r.skipped = done, True, True
        return r
    tmp = partial_path(dst)
    twin = Path(dst).with_suffix(TWIN) if settings.vp9_twin else None
    twin_tmp = partial_path(twin) if twin is not None else None
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path(dst).unlink(missing_ok=True)  # whatever happens next, the old record no longer describes dst
    try:
        src_frames = _encode(src, tmp, settings, twin_tmp)
        for out, fmt in ((tmp, "mp4"), (twin_tmp, "webm")):
            if out is not None and (got := decoded_frames(out, fmt=fmt)[0]) != src_frames:
                r.reason, r.detail = "frame_mismatch", f"source {src_frames} frames, {out.name[1:-8]} {got}"
                return r
        for out, final in ((tmp, Path(dst)), (twin_tmp, twin)):
            if out is not None:
                with open(out, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(out, final)
        record = {"settings": settings.recipe(), "source": _source_id(src), "frames": src_frames,
                  "size": os.path.getsize(dst), "twin": str(twin) if twin else ""}  # fmt: skip
        with atomic_write(sidecar_path(dst), "w") as f:
            json.dump(record, f)
        r.ok, r.num_frames = True, src_frames
    except VideoError as e:
        r.reason, r.detail = e.reason, e.detail
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        r.reason, r.detail = "decode_error", f"{type(e).__name__}: {e}"
    finally:
        for out in (tmp, twin_tmp):  # also on KeyboardInterrupt: never leave a half-written output behind
            if out is not None and out.exists():
                out.unlink()
    return r


def _job(pair: tuple[str, str], settings: EncodeSettings) -> TranscodeResult:
    return transcode_file(pair[0], pair[1], settings)


def plan_outputs(
    entries: list[VideoEntry], out_dir: Path, list_dir: Path, twins: bool = False
) -> list[tuple[str, str, str]]:
    """(src, dst, problem) per entry: dst mirrors the source's path relative to `list_dir` (the list's folder;
    `_abs/<absolute path>` for a source outside it) under `out_dir`, with `.mp4`; when two sources would share
    one, those keep their suffix (`x.avi.mp4`). `problem` is non-empty when dst (or its VP9 twin) is a source."""
    norm = [os.path.normpath(os.path.abspath(e.path)) for e in entries]
    base = os.path.realpath(list_dir)
    rel = []
    for p in norm:
        r = os.path.relpath(os.path.realpath(p), base)
        rel.append(os.path.join("_abs", os.path.realpath(p).lstrip(os.sep)) if r.startswith(os.pardir) else r)
    plain = [os.path.splitext(r)[0] + ".mp4" for r in rel]
    shared = {d for d in plain if plain.count(d) > 1}
    sources = {os.path.realpath(p) for p in norm}
    plan = []
    for e, r, d in zip(entries, rel, plain, strict=True):
        dst = str(out_dir / (r + ".mp4" if d in shared and not r.endswith(".mp4") else d))
        outputs = [dst] + ([str(Path(dst).with_suffix(TWIN))] if twins else [])
        problem = "would_overwrite_source" if any(os.path.realpath(o) in sources for o in outputs) else ""
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
    """Transcode every entry of `list_csv` into `out_dir` (see `plan_outputs`) and write the new list
    (default `out_dir/<list name>`) plus `<list stem>.failures.csv` (path,reason,detail) when any failed.
    Returns counts: total, done, skipped, failed, by_reason, frames, list, failures."""
    from tqdm import tqdm

    list_csv, out_dir = Path(list_csv), Path(out_dir).resolve()
    entries = read_list(list_csv)
    plan = plan_outputs(entries, out_dir, list_csv.resolve().parent, settings.vp9_twin)
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
