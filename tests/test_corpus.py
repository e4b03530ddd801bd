"""The real-world quirk corpus (mgm.prep.quirks) through every stage: `mgm-prepare lists` -> `transcode` (with VP9
twins) -> motion cache -> the PyAV loader on originals and transcodes -> DALI's CPU loader on the twins.

Every case must be kept with the frames FFmpeg outputs, noted as its Case says, transcoded to 8-bit 4:2:0 H.264
with motion vectors holding the same pictures at the same indices, read by the motion reader the same way in a
span as in a full read, masked, and loaded with pixels equal (PSNR >= 35 dB) to a plain decode of the same
indices. The corpus is generated once per session (160x120, 40 frames), never stored.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.util
import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from alignment_util import MEAN, STD, psnr, to_pixels

from dali_pipes import build_loader
from dali_pipes.cpu_loader import crop_resize
from mgm.config import load_config
from mgm.masking import build_masking
from mgm.motion import read_motion
from mgm.motion_cache import MotionCache, build_cache
from mgm.prep import datasets
from mgm.prep.filelist import read_list
from mgm.prep.prepare import main as prepare
from mgm.prep.quirks import CASES, make_corpus
from mgm.prep.transcode import EncodeSettings, transcode_list
from mgm.video_probe import probe

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
NAMES = list(CASES)
SIZE = 64  # loader output side: small, the comparison is what matters


@functools.cache
def plain_decode(path: str) -> list[np.ndarray]:
    """Every frame FFmpeg outputs, in output order, as RGB: what frame i means."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def by_name(entries: list) -> dict[str, object]:
    return {Path(e.path).name.split(".")[0]: e for e in entries}


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`mgm-prepare lists --format folder` over the corpus (one class folder)."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root / "videos" / "quirks")
    out = root / "train.csv"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = prepare(["lists", "--format", "folder", "--video-dir", str(root / "videos"), "--out", str(out),
                          "--workers", "2", "--quiet"])  # fmt: skip
    assert status == 0
    with out.with_name("train.notes.csv").open(newline="") as f:
        notes: dict[str, set[str]] = {}
        for row in csv.DictReader(f):
            notes.setdefault(Path(row["path"]).name.split(".")[0], set()).add(row["note"])
    return {"list": out, "entries": by_name(read_list(out)), "notes": notes, "summary": text.getvalue()}


@pytest.fixture(scope="module")
def transcoded(listed: dict) -> dict:
    settings = EncodeSettings(preset="ultrafast", vp9_twin=True)
    s = transcode_list(listed["list"], listed["list"].parent / "h264", settings, workers=2, progress=False)
    return {"summary": s, "list": Path(s["list"]), "entries": by_name(read_list(s["list"]))}


@pytest.fixture(scope="module")
def caches(listed: dict, transcoded: dict) -> dict:
    out = {}
    for kind, lst in (("original", listed["list"]), ("transcoded", transcoded["list"])):
        s = build_cache(lst, lst.parent / f"cache_{kind}", workers=2, progress=False)
        assert s["failed"] == 0, Path(s["failures"]).read_text()
        out[kind] = MotionCache(lst.parent / f"cache_{kind}")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_lists_keeps_every_quirk_with_the_frames_ffmpeg_outputs(name: str, listed: dict) -> None:
    case = CASES[name]
    assert name in listed["entries"], f"{name} was rejected"
    entry = listed["entries"][name]
    assert entry.num_frames == case.frames == len(plain_decode(entry.path))
    assert listed["notes"].get(name, set()) == case.notes
    assert datasets.probe(entry.path).has_mvs == case.vectors  # read from the data: MS-MPEG4 has vectors


def test_lists_summary_counts_the_quirks(listed: dict) -> None:
    summary = listed["summary"]
    count = {k: sum(k in c.notes for c in CASES.values()) for k in ("header", "timestamps", "nvdec", "rotation")}
    assert f"{len(CASES)}/{len(CASES)} usable" in summary and "rejected: none" in summary
    assert f"without motion vectors: {sum(not c.vectors for c in CASES.values())}" in summary
    assert f"kept with the frames that decode): {count['header']} (e.g." in summary and "promised" in summary
    assert f"timestamps not in output order: {count['timestamps']}" in summary
    assert f"GPU decoder cannot decode: {count['nvdec']}" in summary and f"as stored): {count['rotation']}" in summary


@pytest.mark.parametrize("name", NAMES)
def test_transcode_gives_every_quirk_plain_h264_with_vectors_and_the_same_pictures(
    name: str, listed: dict, transcoded: dict
) -> None:
    assert transcoded["summary"]["failed"] == 0
    out = transcoded["entries"][name]
    assert out.num_frames == CASES[name].frames
    info = probe(out.path, decode=True, mv_frames=3)
    assert (info.codec, info.pix_fmt, info.frames, info.has_mvs) == ("h264", "yuv420p", out.num_frames, True)
    assert datasets.notes_for(info) == []  # nothing left for DALI's GPU decoder to trip on
    src, dst = plain_decode(listed["entries"][name].path), plain_decode(out.path)
    twin = plain_decode(str(Path(out.path).with_suffix(".webm")))
    assert len(src) == len(dst) == len(twin)
    for i in range(len(src)):  # the same picture at the same index (the object moves 2 px a frame)
        scores = [psnr(src[i], d) for d in dst]
        assert int(np.argmax(scores)) == i and scores[i] >= 30, (i, int(np.argmax(scores)), scores[i])
        assert psnr(dst[i], twin[i]) >= 28


@pytest.mark.parametrize("name", NAMES)
def test_motion_cache_span_reads_and_masks_for_every_quirk(
    name: str, listed: dict, transcoded: dict, caches: dict
) -> None:
    case = CASES[name]
    gen = build_masking("mgm", 0.75, (4, 4, 4))
    for kind, entry in (("original", listed["entries"][name]), ("transcoded", transcoded["entries"][name])):
        field = caches[kind].get(entry.path)
        vectors = case.vectors or kind == "transcoded"
        assert field.num_frames == case.frames and field.has_vectors == vectors
        if not vectors:
            continue
        assert field.energy.max() > 0.5  # the moving object is seen
        # a span read (starting at a key frame before frame 17) numbers frames as the full read did
        span = read_motion(entry.path, start=17, stop=29, num_frames=entry.num_frames)
        np.testing.assert_allclose(span.energy, field.energy[17:29], rtol=2e-2, atol=2e-2, err_msg=f"{kind}")
        motion = field.clip_map(np.arange(10, 18), crop=(20, 0, 120, 120), grid=(4, 4, 4))
        mask = gen(motion, np.random.default_rng(0))
        assert mask.sum() == gen.num_masked and gen.fallbacks == 0


def _epoch(csv_path: Path, loader: str, mask: str, source: str) -> tuple[list[tuple[dict, object]], dict]:
    overrides = [f"data.train_list={csv_path}", f"data.loader={loader}", "data.dali_device=cpu", "data.batch_size=1",
                 f"data.num_workers={2 if loader == 'dali' else 0}", "data.num_frames=8", "data.stride=2",
                 f"data.input_size={SIZE}", "data.flip=true", f"mask.name={mask}", "mask.ratio=0.75",
                 f"motion.source={source}", "data.max_bad_fraction=0.0"]  # fmt: skip
    if source == "cache":
        overrides.append(f"motion.cache_dir={csv_path.parent / 'cache_original'}")
    lo = build_loader(load_config(None, overrides))
    try:
        lo.set_epoch(1)
        batches = [(b, lo.sampler) for b in lo]
        return batches, dict(lo.stats)
    finally:
        getattr(lo, "close", lambda: None)()


def _check_pixels(batches: list, decode_path=lambda p: p, min_db: float = 35.0) -> int:
    checked = 0
    for b, sampler in batches:
        vi = int(b["index"][0])
        path = decode_path(sampler.paths[vi])
        frames = plain_decode(path)
        spec = sampler.spec(1, vi, frames[0].shape[:2])
        assert b["frame_indices"][0].tolist() == spec.frame_indices.tolist()
        want = to_pixels(crop_resize(torch.from_numpy(np.stack([frames[i] for i in spec.frame_indices])), spec,
                                     SIZE, MEAN, STD))  # fmt: skip
        got = to_pixels(b["video"][0])
        assert psnr(got, want) >= min_db, f"{path}: {psnr(got, want):.1f} dB at {spec.frame_indices.tolist()}"
        checked += 1
    return checked


LOADS = [("original", "mgm", "online"), ("original", "mgm", "cache"), ("transcoded", "mgm", "online"),
         ("transcoded", "tube", "online")]  # fmt: skip


@pytest.mark.parametrize(("which", "mask", "source"), LOADS)
def test_pyav_loader_pixels_equal_a_plain_decode(which: str, mask: str, source: str, listed: dict, transcoded: dict,
                                                 caches: dict) -> None:  # fmt: skip
    lst = listed["list"] if which == "original" else transcoded["list"]
    batches, stats = _epoch(lst, "cpu", mask, source)
    assert stats["bad_files"] == 0 and _check_pixels(batches) == len(CASES)


@pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali")
def test_dali_cpu_loader_on_the_vp9_twins_of_transcoded_quirks(transcoded: dict) -> None:
    batches, stats = _epoch(transcoded["list"], "dali", "mgm", "online")
    assert stats["bad_files"] == 0
    assert _check_pixels(batches, lambda p: str(Path(p).with_suffix(".webm"))) == len(CASES)


@pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali")
@pytest.mark.parametrize("name", ["vp9_odd_timestamps", "mjpeg_avi"])
def test_dali_cpu_decoder_numbers_frames_in_output_order(name: str, listed: dict) -> None:
    """decoders.video(frames=...) on the originals DALI's CPU decoder reads: repeated timestamps (one on a key
    frame), uneven ones; indices that make it seek forward and back past key frames."""
    from nvidia.dali import fn, pipeline_def

    path = listed["entries"][name].path
    ref = plain_decode(path)
    queries = [[0, 5, 17, 37], [20, 21, 35], [3, 9, 30, 31], [16, 15, 33, 2], [len(ref) - 1]]
    data = np.fromfile(path, np.uint8)

    @pipeline_def(batch_size=len(queries), num_threads=1, device_id=None)
    def pipe():  # noqa: ANN202 - DALI graph function
        enc = fn.external_source(source=lambda: [data] * len(queries), batch=True)
        idx = fn.external_source(source=lambda: [np.asarray(q, np.int32) for q in queries], batch=True)
        return fn.decoders.video(enc, device="cpu", frames=idx, pad_mode="none")

    p = pipe()
    p.build()
    (out,) = p.run()
    for k, q in enumerate(queries):
        got = np.asarray(out[k])
        for j, i in enumerate(q):
            scores = [psnr(got[j], r) for r in ref]
            assert int(np.argmax(scores)) == i and scores[i] >= 35, (q, i, int(np.argmax(scores)), scores[i])
