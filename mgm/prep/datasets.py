"""Dataset annotations -> candidate (path, label) pairs, and a parallel probe of every video file.

Formats: Something-Something V2 (labels.json + train/validation/test.json), Kinetics (CSV with youtube_id,
time_start, time_end, label, split), and a folder of class subfolders. Parsing never opens a video; `probe`
does, and says in one word (`reason`) why a file cannot be used.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgm import video, video_probe

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class AnnotationError(ValueError):
    """An annotation file is missing or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Candidate:
    """A video the annotations promise: absolute `path` (may not exist), class id (-1 = unlabeled), source key."""

    path: str
    label: int
    key: str


@dataclass
class ProbeResult:
    """What one file holds. `ok` False means unusable; `reason` then says why in one word, `detail` says more."""

    path: str
    ok: bool
    reason: str = ""
    detail: str = ""
    num_frames: int = 0
    codec: str = ""
    size: tuple[int, int] = (0, 0)  # (H, W)
    has_mvs: bool = False
    promised: int = 0  # frames the header promises (0: it says nothing); a hint, `num_frames` is the truth
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail) of what `notes_for` found


# --------------------------------------------------------------------------------------------- annotations
def _load_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def ssv2_template_key(template: str) -> str:
    """SSv2 annotations write `Putting [something] on [something]`; labels.json keys drop the brackets."""
    return template.replace("[", "").replace("]", "")


def ssv2_candidates(
    labels_json: str | Path, annotations_json: str | Path, video_dir: str | Path, ext: str = ".webm"
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """SSv2: labels.json maps template -> id string; entries {id, label, template, placeholders}.

    Returns (candidates, bad) where bad holds (key, reason) for entries whose template has no id.
    Entries without a template (the test split) get label -1.
    """
    labels = _load_json(Path(labels_json))
    if not isinstance(labels, dict):
        raise AnnotationError(f"{labels_json}: expected an object mapping template -> id")
    label_ids = {ssv2_template_key(k): int(v) for k, v in labels.items()}
    entries = _load_json(Path(annotations_json))
    if not isinstance(entries, list):
        raise AnnotationError(f"{annotations_json}: expected a list of entries")
    video_dir = Path(video_dir).resolve()
    ext = ext if ext.startswith(".") else "." + ext
    out, bad = [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e:
            raise AnnotationError(f"{annotations_json}: entry {i} has no 'id': {e!r:.80}")
        vid = str(e["id"])
        if "template" in e:
            label = label_ids.get(ssv2_template_key(e["template"]))
            if label is None:
                bad.append((vid, "unknown_label"))
                continue
        else:
            label = -1
        out.append(Candidate(str(video_dir / f"{vid}{ext}"), label, vid))
    return out, bad


def video_files(root: str | Path, exts: Sequence[str] = VIDEO_EXTS) -> list[str]:
    """Absolute paths of every video under `root`, at any depth, in a stable (sorted) order."""
    out = []
    exts = tuple(e.lower() for e in exts)
    for dirpath, dirnames, filenames in os.walk(Path(root).resolve()):
        dirnames.sort()
        out.extend(
            os.path.join(dirpath, n) for n in sorted(filenames) if n.lower().endswith(exts) and not n.startswith(".")
        )
    return out


def index_files(root: str | Path, exts: Sequence[str] = VIDEO_EXTS) -> dict[str, str]:
    """Map file stem -> absolute path for every video under `root`, at any depth (flat or per-class layouts); of
    files sharing a stem the first in `video_files` order wins (Kinetics names are unique clip ids)."""
    index: dict[str, str] = {}
    for path in video_files(root, exts):
        index.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    return index


def kinetics_file_stem(youtube_id: str, time_start: str, time_end: str) -> str:
    """The usual Kinetics clip name: `<youtube_id>_<start:06d>_<end:06d>`."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def kinetics_candidates(
    csv_path: str | Path,
    video_dir: str | Path,
    split: str | None = None,
    classes: Sequence[str] | None = None,
    exts: Sequence[str] = VIDEO_EXTS,
) -> tuple[list[Candidate], list[tuple[str, str]], list[str]]:
    """Kinetics CSV (label, youtube_id, time_start, time_end, split; columns found by name).

    Class ids are the alphabetical order of the CSV's labels unless `classes` is given (pass the training
    classes when listing validation so both share ids). Files may sit flat or in per-class subfolders.
    Returns (candidates, bad, classes); a missing file becomes a candidate with a made-up path so the probe
    reports it as `missing`.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise AnnotationError(f"annotation file {csv_path} does not exist")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        raise AnnotationError(f"{csv_path}: expected columns {sorted(need)} (+ label, split), got {list(rows[:1])}")
    if split is not None:
        if "split" not in rows[0]:
            raise AnnotationError(f"{csv_path}: --split {split} given but the CSV has no 'split' column")
        rows = [r for r in rows if r["split"] == split]
    if classes is None:
        classes = sorted({r["label"] for r in rows if r.get("label")})
    class_ids = {c: i for i, c in enumerate(classes)}
    index = index_files(video_dir, exts)
    video_dir = Path(video_dir).resolve()
    out, bad = [], []
    for r in rows:
        stem = kinetics_file_stem(r["youtube_id"], r["time_start"], r["time_end"])
        name = r.get("label") or ""
        if name and name not in class_ids:
            bad.append((stem, "unknown_label"))
            continue
        label = class_ids[name] if name else -1
        out.append(Candidate(index.get(stem, str(video_dir / f"{stem}.mp4")), label, stem))
    return out, bad, list(classes)


def folder_candidates(
    root: str | Path, exts: Sequence[str] = VIDEO_EXTS, classes: Sequence[str] | None = None
) -> tuple[list[Candidate], list[str]]:
    """`root/<class>/<video>`: class ids are the alphabetical order of the subfolders (or `classes`)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AnnotationError(f"video folder {root} does not exist")
    if classes is None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AnnotationError(f"{root} has no class subfolders (expected {root}/<class>/<video>)")
    out = []
    for i, c in enumerate(classes):  # every file, also two of one name in different subfolders
        for path in video_files(root / c, exts):
            out.append(Candidate(path, i, Path(path).relative_to(root).as_posix()))
    return out, list(classes)


def read_classes(path: str | Path) -> list[str]:
    """One class name per line (the order gives the ids), as written by `mgm-prepare lists`."""
    return [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- probing
# Codecs DALI's GPU ("mixed") video decoder takes (its FramesDecoderGpu::GetCodecType), and the pixel formats
# NVDEC decodes them in: H.264 and MPEG-4 only as 8-bit 4:2:0; HEVC, VP9, AV1 as 4:2:0 up to 12 bits.
_NVDEC_CODECS = {"h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg"}
_NVDEC_8BIT_420 = {"yuv420p", "yuvj420p", "nv12"}


def nvdec_problem(codec: str, pix_fmt: str) -> str:
    """Why DALI's GPU decoder cannot decode a stream of `codec` in `pix_fmt` ("" when it can)."""
    if codec not in _NVDEC_CODECS:
        return f"DALI's GPU decoder does not decode {codec}"
    if codec in ("h264", "mpeg4") and pix_fmt not in _NVDEC_8BIT_420:
        return f"NVDEC decodes {codec} as 8-bit 4:2:0 only, not {pix_fmt}"
    if codec in ("hevc", "vp9", "av1") and not (pix_fmt in _NVDEC_8BIT_420 or pix_fmt.startswith(("yuv420p", "p01"))):
        return f"NVDEC decodes {codec} as 4:2:0 only, not {pix_fmt}"
    return ""


def notes_for(info: video_probe.VideoInfo) -> list[tuple[str, str]]:
    """What `lists` notes about a usable file: (kind, detail) with kind cut | header | timestamps | nvdec |
    rotation."""
    notes = []
    if info.short_by:
        cut = f"the container promises {info.short_by} bytes more than the file holds (an interrupted copy?), but "
        notes.append(("cut", cut + f"every packet reads and decodes: kept with the {info.frames} frames there"))
    if info.promised and info.promised != info.frames:
        notes.append(("header", f"the header promises {info.promised} frames, {info.frames} decode (kept)"))
    if not info.pts_order:
        notes.append(("timestamps", "timestamps do not follow output order (pts == dts with B-frames, repeated "
                      "timestamps or an edit list): read in output order here, but DALI's GPU decoder numbers "
                      "frames by timestamp; transcode it for the GPU path"))  # fmt: skip
    why = nvdec_problem(info.codec, info.pix_fmt)
    if why:
        notes.append(("nvdec", why + "; `mgm-prepare transcode` writes 8-bit 4:2:0 H.264"))
    if info.rotation:
        notes.append(("rotation", f"display rotation {info.rotation} degrees: frames are read as stored, unrotated"))
    return notes


def probe(path: str, mv_frames: int = 3) -> ProbeResult:
    """Decode `path` fully (`mgm.video_probe.probe`): frame count (the frames FFmpeg outputs), codec, (H, W), whether
    the first `mv_frames` inter frames carry motion vectors, and the notes (`notes_for`). Never raises for a bad
    file: `ok` False and `reason` say why."""
    try:
        info = video_probe.probe(path, decode=True, mv_frames=mv_frames)
    except video.VideoError as e:
        return ProbeResult(path, False, e.reason, e.detail, num_frames=e.frames_read)
    return ProbeResult(path, True, num_frames=info.frames or 0, codec=info.codec, size=info.size, has_mvs=info.has_mvs,
                       promised=info.promised or 0, notes=notes_for(info))  # fmt: skip


# --------------------------------------------------------------------------------------------- parallel map
def parallel_map(
    fn: Callable[..., Any], items: Sequence[Any], workers: int, on_crash: Callable[[Any], Any]
) -> Iterator[tuple[int, Any]]:
    """Yield (index, fn(item)) in completion order using `workers` processes (0 = in this process).

    At most 2 x workers items are in flight, so when a worker dies (e.g. a decoder segfault on a bad file)
    and breaks the pool, the culprit is among those: each is retried alone in a fresh pool, the rest go on,
    and an item that crashes alone yields `on_crash(item)`.
    """
    if workers <= 0:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    queue = list(range(len(items)))[::-1]  # pop() from the end keeps the original order
    suspects: list[int] = []
    while queue or suspects:
        if suspects:
            i = suspects.pop()
            try:
                with ProcessPoolExecutor(1) as pool:
                    result = pool.submit(fn, items[i]).result()
            except BrokenProcessPool:
                result = on_crash(items[i])
            yield i, result
            continue
        pool = ProcessPoolExecutor(workers)
        in_flight: dict[Future, int] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:
                    i = queue.pop()
                    in_flight[pool.submit(fn, items[i])] = i
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()  # BrokenProcessPool escapes to the handler below
                    yield in_flight.pop(fut), result
        except BrokenProcessPool:
            suspects = list(in_flight.values())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def probe_all(paths: Sequence[str], workers: int, progress: bool = True, desc: str = "probe") -> list[ProbeResult]:
    """Probe every path in parallel; results come back in the order of `paths`."""
    from tqdm import tqdm

    results: list[ProbeResult | None] = [None] * len(paths)
    crashed = lambda p: ProbeResult(p, False, "crashed", "the decoder crashed the worker")  # noqa: E731
    with tqdm(total=len(paths), desc=desc, unit="video", disable=not progress) as bar:
        for i, r in parallel_map(probe, paths, workers, on_crash=crashed):
            results[i] = r
            bar.update()
    return [r for r in results if r is not None]


def summarize(results: Iterable[ProbeResult], extra_rejects: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Counts by reason (incl. annotation-level rejects), codecs, motion vectors, and frame-count range."""
    results, extra_rejects = list(results), list(extra_rejects)
    ok = [r for r in results if r.ok]
    reasons: dict[str, int] = {}
    for r in results:
        if not r.ok:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    for _, reason in extra_rejects:
        reasons[reason] = reasons.get(reason, 0) + 1
    codecs: dict[str, int] = {}
    for r in ok:
        codecs[r.codec] = codecs.get(r.codec, 0) + 1
    frames = [r.num_frames for r in ok]
    notes: dict[str, int] = {}
    for r in ok:
        for kind, _ in r.notes:
            notes[kind] = notes.get(kind, 0) + 1
    header = [r for r in ok if any(kind == "header" for kind, _ in r.notes)]
    return {
        "total": len(results) + len(extra_rejects),
        "ok": len(ok),
        "rejected": reasons,
        "codecs": codecs,
        "without_mvs": sum(1 for r in ok if not r.has_mvs),
        "frames_min": min(frames, default=0),
        "frames_mean": round(sum(frames) / len(frames), 1) if frames else 0.0,
        "frames_max": max(frames, default=0),
        "notes": notes,
        "header_example": f"{Path(header[0].path).name}: promised {header[0].promised}, decoded {header[0].num_frames}"
        if header
        else "",
    }
