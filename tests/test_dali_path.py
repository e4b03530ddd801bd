"""The DALI graph and its torch adapter on the CPU (DALI's CPU decoder on VP9 twins shares the GPU path's graph):
each frame decoded once, float16 handed over without a copy, settings sized per path, and which DALI errors cost a
batch (a stream the decoder cannot read) versus stop the run (CUDA, NVDEC's library, dead workers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dali_pipes.sampler import clip_indices
from mgm.config import load_config
from mgm.prep.filelist import VideoEntry, read_list, write_list

pytest.importorskip("nvidia.dali")
from dali_pipes import TooManyBadVideos, build_loader  # noqa: E402
from dali_pipes.adapter import MAX_LOST_IN_A_ROW, dali_reason, is_bad_video_error  # noqa: E402
from dali_pipes.factory import _graph_kwargs, dali_threads, output_dtype  # noqa: E402
from dali_pipes.graph import DecodePlan, distinct_frames  # noqa: E402

SHORT = 12  # frames of a short clip: 8 frames at stride 2 span 15, so the sampler loops or clamps


def cfg(csv: Path, *extra: str) -> Any:
    base = [f"data.train_list={csv}", "data.loader=dali", "data.dali_device=cpu", "data.batch_size=2",
            "data.num_workers=1", "data.num_frames=8", "data.input_size=64", "mask.name=tube"]  # fmt: skip
    return load_config(None, base + list(extra))


def epoch(loader: Any, keep: list | None = None) -> list[dict]:
    loader.set_epoch(0)
    try:
        return [b if keep is None else keep.append(b) or b for b in loader]
    finally:
        loader.close()


@pytest.fixture(scope="module")
def short_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 12-frame clips (H.264 + VP9 twin) of the synthetic kinds, listed 4 times: 4 batches of 2."""
    from mgm.prep.synth import make_clip

    out = tmp_path_factory.mktemp("short")
    entries = []
    for i, kind in enumerate(("single", "pan")):
        truth = make_clip(out / f"short_{i}", kind, seed=i, num_frames=SHORT)
        entries.append(VideoEntry(str(out / f"short_{i}.mp4"), truth["label"], SHORT))
    return write_list(out / "short.csv", entries * 4)


# ---- item 5: each frame decoded once ------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["loop", "clamp"])
def test_distinct_frames_put_back_in_order(policy: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = clip_indices(SHORT, 16, 2, rng, policy)
        frames, order = distinct_frames(idx)
        assert len(frames) < len(idx)  # short clips repeat frames: the decoder would seek back for each repeat
        assert np.all(np.diff(frames) > 0) and frames.dtype == order.dtype == np.int32  # each frame once, ascending
        assert np.array_equal(frames[order], idx)


def test_decode_plan_adds_frames_and_order_to_the_source_outputs() -> None:
    class Source:
        NUM_OUTPUTS = 3

        def __call__(self, info: int) -> tuple[np.ndarray, ...]:
            return np.zeros(4, np.uint8), np.array([5, 7, 5, 9, 7], np.int32), np.array(info)

    plan = DecodePlan(Source())
    out = plan(11)
    assert plan.NUM_OUTPUTS == len(out) == 5 and int(out[2]) == 11
    assert out[3].tolist() == [5, 7, 9] and out[3][out[4]].tolist() == [5, 7, 5, 9, 7]


@pytest.mark.parametrize("policy", ["loop", "clamp"])
def test_short_clips_same_pixels_as_decoding_every_index(policy: str, short_list: Path) -> None:
    c = cfg(short_list, f"data.short_video={policy}", "data.output_dtype=float32")
    once, every = build_loader(c), build_loader(c)
    every.graph_kwargs = {**every.graph_kwargs, "distinct": False}  # the decoder gets the indices, repeats and all
    a, b = epoch(once), epoch(every)
    assert len(a) == len(b) == 4
    repeats = 0
    for x, y in zip(a, b, strict=True):
        assert x["index"].tolist() == y["index"].tolist()
        assert np.array_equal(x["frame_indices"].numpy(), y["frame_indices"].numpy())
        assert torch.equal(x["video"], y["video"])  # bit for bit
        repeats += sum(len(set(f.tolist())) < len(f) for f in x["frame_indices"])
    assert repeats == 8  # every clip repeated frames, so the distinct path was exercised


def test_the_decoder_reads_the_distinct_frames(synth_list: Path) -> None:
    # The wiring, from DALI's operator list (Pipeline._ops is not public API, but it is what DALI built): the
    # decoder's `frames` are DecodePlan's distinct frames (the output after the source's own), and
    # sequence_rearrange takes the order (the one after that).
    from dali_pipes.sources import DaliClipSource

    lo = build_loader(cfg(synth_list))
    lo._build()
    try:
        inputs = {op.name.rsplit("_", 1)[0]: [i.name for i in op.inputs] for op in lo._pipe._ops}
    finally:
        lo.close()
    n = DaliClipSource.NUM_OUTPUTS
    assert inputs["__Video"] == ["__ExternalSource_0", f"__ExternalSource_{n}"]  # bytes, distinct frames
    assert inputs["__SequenceRearrange"][1] == f"__ExternalSource_{n + 1}"


# ---- item 7: float16 out of DALI, handed to torch without a copy ---------------------------------------------------
def test_float16_batches_are_dali_memory_and_match_float32(synth_list: Path) -> None:
    lo16, lo32 = build_loader(cfg(synth_list, "data.output_dtype=float16")), build_loader(cfg(synth_list))
    assert lo32.dtype == torch.float32  # data.output_dtype=auto on the CPU
    dali_ptrs = []
    to_torch = lo16._to_torch

    def spy(tl: Any) -> torch.Tensor:
        dali_ptrs.append(tl.as_tensor().data_ptr())  # where DALI put the batch
        return to_torch(tl)

    lo16._to_torch = spy
    kept: list[dict] = []
    half, full = epoch(lo16, kept), epoch(lo32)
    assert len(half) == len(full) == 2 and lo16._pipe is None
    for x, y, ptr in zip(half, full, dali_ptrs, strict=True):
        assert x["video"].dtype == torch.float16 and y["video"].dtype == torch.float32
        assert x["video"].data_ptr() == ptr  # the batch is DALI's output buffer itself: no copy
        torch.testing.assert_close(x["video"].float(), y["video"], atol=5e-3, rtol=2e-3)  # fp16 rounding only
    # DALI's dynamic executor never reuses a buffer that is still referenced: the first batch is intact
    assert torch.equal(kept[0]["video"].float(), half[0]["video"].float())
    assert len({b["video"].data_ptr() for b in kept}) == len(kept)


def test_bfloat16_is_one_cast_of_dali_float16(synth_list: Path) -> None:
    lo = build_loader(cfg(synth_list, "data.output_dtype=bfloat16"))
    dali_dtypes = []
    to_torch = lo._to_torch
    lo._to_torch = lambda tl: dali_dtypes.append(str(tl.dtype)) or to_torch(tl)
    batch = epoch(lo)[0]
    assert batch["video"].dtype == torch.bfloat16 and dali_dtypes[0].endswith("FLOAT16")
    assert output_dtype(cfg(synth_list).data, torch.device("cuda", 0)) == "float16"  # auto on a GPU


# ---- items 3, 4: settings per path ---------------------------------------------------------------------------------
def test_nvdec_threads_workers_and_prefetch(synth_list: Path) -> None:
    assert dali_threads("dali-gpu", workers=8, cores=16) == 8  # what the 8 py workers leave
    assert dali_threads("dali-gpu", workers=4, cores=16) == 12  # capped
    assert dali_threads("dali-gpu", workers=4, cores=4) == 8  # NVDEC threads mostly wait: at least 8
    assert dali_threads("dali-cpu", workers=2, cores=2) == 2  # the CPU decoder works on the cores
    assert dali_threads("dali-gpu", workers=8, cores=16, override=5) == 5
    d = cfg(synth_list, "data.num_workers=8").data
    paths = [e.path for e in read_list(synth_list)]
    gpu = _graph_kwargs(d, "dali-gpu", torch.device("cuda", 0), paths)
    assert gpu["decode_device"] == "mixed" and 8 <= gpu["num_threads"] <= 12 and gpu["affine"] is False
    assert gpu["source_prefetch"] >= 2 and gpu["py_num_workers"] == 8
    assert gpu["bytes_per_sample"] >= max(Path(p).stat().st_size for p in paths)
    tuned = _graph_kwargs(cfg(synth_list, "data.dali_threads=10").data, "dali-gpu", torch.device("cuda", 0))
    assert tuned["num_threads"] == 10


# ---- item 6: which DALI errors are bad videos ----------------------------------------------------------------------
def dali_error(op: str, message: str, backend: str = "CPU") -> RuntimeError:
    """A RuntimeError worded as DALI 2.4 words an operator failure: the wrapping as real CPU runs of this graph
    print it, the messages from those runs and, for the GPU, from DALI's source (cuda_error.h, frames_decoder_gpu)."""
    return RuntimeError(
        f"Critical error in pipeline:\nError in {backend} operator `nvidia.dali.fn.{op}`,\nwhich was used in the "
        f'pipeline definition with the following traceback:\n\n  File "graph.py", line 90\n\nencountered:\n\n'
        f"{message}\nC++ context: [/opt/dali/dali/operators/video/frames_decoder_base.cc:592] \n"
        "Current pipeline object is no longer valid."
    )


BAD_VIDEO = [
    dali_error(
        "decoders.video",
        'Assert on "frames_decoders_[s]->IsValid()" failed: Failed to create video decoder for "memory file"',
    ),
    dali_error("decoders.video", "Unexpected out-of-bounds frame index 500 for pad_mode = 'none'"),
    dali_error(
        "decoders.video",
        "Codec configuration not supported on this GPU. Codec: H.264, chroma format: YUV 4:4:4, bit depth: 8",
        "MIXED",
    ),
]
SYSTEMIC = [
    dali_error("decoders.video", "CUDA driver API error CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND (40)", "MIXED"),
    dali_error("decoders.video", "dlopen libnvcuvid.so failed!. Please install NVIDIA GPU driver", "MIXED"),
    dali_error(
        "decoders.video", "CUDA runtime API error cudaErrorIllegalAddress (700):\nan illegal memory access", "MIXED"
    ),
    dali_error("decoders.video", "Can't allocate 2147483648 bytes on device 0.", "MIXED"),
    dali_error("resize", "Unexpected error in resampling"),  # another operator: a bug, not a file
    RuntimeError("Worker data receiving interrupted"),  # a worker process died
]


def test_error_classification() -> None:
    assert all(is_bad_video_error(e) for e in BAD_VIDEO)
    assert not any(is_bad_video_error(e) for e in SYSTEMIC)
    assert not is_bad_video_error(Exception("Exception traceback received from worker thread: BadVideoError"))
    assert dali_reason(BAD_VIDEO[1]).startswith("Unexpected out-of-bounds frame index 500")


def failing_runs(lo: Any, errors: list[BaseException]) -> list[int]:
    """Make the next run()s of `lo`'s pipelines raise `errors` in turn; returns the list of build positions."""
    builds: list[int] = []
    build = lo._build

    def counted_build() -> None:
        build()
        builds.append(lo.sampler.position)
        real_run = lo._pipe.run

        def run() -> Any:
            if errors:
                raise errors.pop(0)
            return real_run()

        lo._pipe.run = run

    lo._build = counted_build
    return builds


@pytest.mark.parametrize("error", SYSTEMIC[:2] + SYSTEMIC[-1:], ids=["cuda", "nvcuvid", "workers"])
def test_a_systemic_dali_error_stops_as_itself(error: RuntimeError, synth_list: Path) -> None:
    lo = build_loader(cfg(synth_list, "data.max_bad_fraction=1.0"))
    builds = failing_runs(lo, [error])
    with pytest.raises(RuntimeError) as caught:
        epoch(lo)
    assert caught.value is error and "not a video decoding error" in "".join(getattr(error, "__notes__", []))
    assert builds == [0]  # not rebuilt: no workers spawned for a machine that cannot decode
    assert lo.stats["bad_files"] == lo.stats["failed_batches"] == 0 and not lo.stats["bad_videos"]


def test_decoder_failures_stop_at_the_bad_fraction_before_a_rebuild(synth_list: Path) -> None:
    lo = build_loader(cfg(synth_list, "data.max_bad_fraction=0.2"))  # 4 samples: one lost batch of 2 is too many
    builds = failing_runs(lo, [BAD_VIDEO[1]])
    with pytest.warns(UserWarning, match="DALI decode failed"), pytest.raises(TooManyBadVideos):
        epoch(lo)
    assert builds == [0] and lo.stats["failed_batches"] == 1  # counted, then stopped: no second pipeline


def test_decoder_failures_in_a_row_stop_the_run(tmp_path: Path, synth_list: Path) -> None:
    entries = read_list(synth_list)
    csv = write_list(tmp_path / "long.csv", entries * 3)  # 12 samples, 6 batches
    lo = build_loader(cfg(csv, "data.max_bad_fraction=1.0"))
    builds = failing_runs(lo, [BAD_VIDEO[0]] * MAX_LOST_IN_A_ROW)
    with pytest.warns(UserWarning, match="DALI decode failed"), pytest.raises(RuntimeError, match="in a row"):
        epoch(lo)
    assert builds == [0, 2, 4] and lo.stats["failed_batches"] == MAX_LOST_IN_A_ROW


def test_a_stream_dali_cannot_decode_loses_its_batch_and_the_epoch_goes_on(tmp_path: Path, synth_list: Path) -> None:
    # a real decoder error, not an injected one: an H.264 file behind a .webm name passes the worker's probe
    # (PyAV reads it), but DALI's CPU decoder refuses the codec
    entries = read_list(synth_list)
    clips = tmp_path / "clips"
    clips.mkdir()
    for e in entries:
        for suffix in (".mp4", ".webm"):
            shutil.copy(Path(e.path).with_suffix(suffix), clips / Path(e.path).with_suffix(suffix).name)
    bad = clips / Path(entries[0].path).with_suffix(".webm").name
    shutil.copy(entries[0].path, bad)
    csv = write_list(tmp_path / "list.csv", [VideoEntry(str(clips / Path(e.path).name), e.label, e.num_frames)
                                             for e in entries])  # fmt: skip
    lo = build_loader(cfg(csv, "data.max_bad_fraction=1.0"))
    with pytest.warns(UserWarning, match=r"DALI decode failed .*Failed to create video decoder"):
        got = epoch(lo)
    assert len(got) == 1 and lo.stats["failed_batches"] == 1 and lo.stats["bad_files"] == 2
    assert 0 not in got[0]["index"].tolist()  # the batch with the unreadable twin was lost, the other delivered
