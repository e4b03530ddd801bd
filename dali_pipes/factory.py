"""`build_loader`: a config in, the loader this process runs out (DALI on the GPU, DALI on the CPU, or PyAV).

Decided here once and handed on, never worked out again downstream:
- which loader runs (`choose_path`, then whether the VP9 twins DALI's CPU decoder needs are there);
- which files of the list exist: one look at the disk per file, before any worker starts (a file that breaks
  later is still named and replaced by the workers, dali_pipes.sources);
- the mask generator, built now: a mistake in `mask.knobs` is a ConfigError naming the key, not a worker error;
- how worker processes start (dali_pipes.workers), and whether the calling script is safe for that.
torch is imported inside the functions: DALI's spawned workers import this package and need none.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dali_pipes.sampler import ClipSampler, EvalViews
from dali_pipes.sources import MaskMaker, twin_path
from dali_pipes.workers import check_main_guard, cpu_start_method

if TYPE_CHECKING:
    import torch

    from dali_pipes.adapter import LoaderBase
    from dali_pipes.evaluation import EvalLoader
    from mgm.config import DataConfig
    from mgm.prep.filelist import VideoEntry


def _dali_available() -> bool:
    """Whether nvidia-dali is installed, asked without importing it: loading DALI's backend here would make the
    PyAV fallback start its workers with "spawn" (dali_pipes.workers) even when DALI never runs."""
    spec = importlib.util.find_spec("nvidia.dali")  # imports the `nvidia` namespace package only
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "fn").is_dir() or (Path(p) / "fn.py").is_file() for p in spec.submodule_search_locations)


def choose_path(loader: str, dali_device: str, device: str) -> str:
    """Which loader runs: "dali-gpu" (NVDEC on H.264), "dali-cpu" (VP9 twins) or "cpu" (PyAV fallback).

    loader "auto" takes DALI on a CUDA device and the PyAV fallback without one: on the CPU the fallback reads
    the H.264 files directly and measured faster than DALI's CPU decoder on VP9 twins (profiling/bench_decode.py,
    ~65 vs ~44 clips/s on 2 cores); loader "auto" with dali_device "cpu", or loader "dali", still picks DALI on
    the CPU. dali_device "auto" means the GPU when `device` is CUDA.
    """
    import torch

    if loader not in ("dali", "cpu", "auto"):
        raise ValueError(f"data.loader={loader!r}: one of dali, cpu, auto")
    if loader == "cpu":
        return "cpu"
    if not _dali_available():
        if loader == "dali":
            raise RuntimeError("data.loader=dali but nvidia-dali is not installed (pip install nvidia-dali-cuda120)")
        return "cpu"
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if loader == "auto" and dali_device == "auto" and not cuda:
        return "cpu"
    if dali_device == "gpu" and not cuda:
        raise RuntimeError(f"data.dali_device=gpu needs a CUDA device, got device={device!r}")
    return "dali-gpu" if (dali_device == "gpu" or (dali_device == "auto" and cuda)) else "dali-cpu"


def _files_on_disk(path: str, d: DataConfig, entries: list[VideoEntry]) -> tuple[str, str | None, list[VideoEntry]]:
    """(path, twin suffix or None, the entries whose files exist), one look at the disk per file.

    On "dali-cpu" each video needs its VP9 twin too; with data.loader=auto, too few twins switch to the PyAV
    fallback (which reads the originals). Missing files are named in one warning and dropped, or, past
    data.max_bad_fraction, in one FileNotFoundError.
    """
    twins = d.twin_suffix if path == "dali-cpu" else None
    found = [(os.path.isfile(e.path), not twins or os.path.isfile(twin_path(e.path, twins))) for e in entries]
    absent = [e.path for e, (_, has_twin) in zip(entries, found, strict=True) if not has_twin]
    if twins and d.loader == "auto" and len(absent) > d.max_bad_fraction * len(entries):
        warnings.warn(
            f"{len(absent)} of {len(entries)} videos have no {twins} twin for DALI's CPU decoder "
            f"(e.g. {absent[0]}); using the PyAV fallback loader. Make twins with `mgm-prepare transcode`.",
            stacklevel=3,
        )
        path, twins = "cpu", None
        found = [(has_file, True) for has_file, _ in found]
    missing, keep = [], []
    for e, (has_file, has_twin) in zip(entries, found, strict=True):
        gone = ([] if has_file else [e.path]) + ([] if has_twin else [twin_path(e.path, twins)])
        missing.extend(gone)
        if not gone:
            keep.append(e)
    if missing:
        msg = f"{len(missing)} file(s) of the file list are missing:\n  " + "\n  ".join(missing)
        if len(entries) - len(keep) > d.max_bad_fraction * len(entries):
            raise FileNotFoundError(msg + f"\nmore than data.max_bad_fraction={d.max_bad_fraction} of the videos")
        warnings.warn(msg + "\n(skipped for this run)", stacklevel=3)
    return path, twins, keep


# The mixed (NVDEC) decoder's thread pool is the pipeline's num_threads. Each thread keeps one stream in flight and
# spends most of its time waiting on NVDEC (DALI synchronizes the CUDA stream after every frame), so more threads
# than an H100's 7 NVDEC engines keep them busy while using little CPU; the CPU-heavy per-sample work (reading,
# probing, motion, masks) is in the py workers, which get the cores first.
NVDEC_THREADS = (8, 12)
SHM_MARGIN = 64 * 1024  # bytes per sample beside the encoded file: indices, crop box, mask, meta


def dali_threads(path: str, workers: int, cores: int | None = None, override: int = 0) -> int:
    """Pipeline threads for `path`: the NVDEC decoder's pool on "dali-gpu" (8-12: the cores the py workers leave,
    at least 8), DALI's CPU decoder threads on "dali-cpu" (up to 4); `override` (data.dali_threads) wins."""
    if override > 0:
        return override
    cores = cores or os.cpu_count() or 1
    if path == "dali-gpu":
        low, high = NVDEC_THREADS
        return max(low, min(high, cores - workers))
    return max(1, min(4, cores))


def largest_file(paths: Sequence[str], sample: int = 2048) -> int:
    """Bytes of the largest of up to `sample` files spread over `paths` (0 when none can be read): a size hint only,
    DALI grows a worker's shared-memory slot when a larger file comes."""
    step = max(1, len(paths) // sample)
    sizes = []
    for p in paths[::step]:
        try:
            sizes.append(os.path.getsize(p))
        except OSError:
            continue
    return max(sizes, default=0)


def _graph_kwargs(d: DataConfig, path: str, dev: torch.device, paths: Sequence[str] = ()) -> dict[str, Any]:
    """Arguments of dali_pipes.graph.build_pipeline for `path` ("dali-gpu" decodes with NVDEC: "mixed").

    `paths`: the files the decoder reads (the VP9 twins on "dali-cpu"), sized for the workers' shared-memory hint.
    """
    import torch

    gpu = path == "dali-gpu"
    workers = max(1, d.num_workers)
    biggest = largest_file(paths)
    return {
        "input_size": d.input_size,
        "mean": list(d.mean),
        "std": list(d.std),
        "decode_device": "mixed" if gpu else "cpu",
        "device_id": (dev.index if dev.index is not None else torch.cuda.current_device()) if gpu else None,
        "num_threads": dali_threads(path, workers, override=d.dali_threads),
        # Unpinned: DALI would pin the decoder threads to the cores nearest the GPU, the same cores the py workers
        # run on; a pinned thread cannot move off a core a worker keeps busy, and a container's cpuset may not even
        # hold those cores. The threads mostly wait on NVDEC, so the scheduler can place them.
        "affine": False,
        "py_num_workers": workers,
        "source_prefetch": 3,  # batches prepared ahead by the workers (DALI's default 1 lets one slow clip stall)
        "bytes_per_sample": biggest + SHM_MARGIN if biggest else None,
        "seed": d.seed,
    }


def output_dtype(d: DataConfig, dev: torch.device) -> str:
    """data.output_dtype with "auto" resolved: float16 when batches land on a CUDA device (half the bytes of
    float32; the model casts the visible patches it embeds, and bf16 autocast takes float16 input), else float32."""
    if d.output_dtype != "auto":
        return d.output_dtype
    return "float16" if dev.type == "cuda" else "float32"


TASKS = ("pretrain", "finetune", "eval")


def build_loader(
    cfg: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    task: str = "pretrain",
    list_path: str | None = None,
    views: EvalViews | None = None,
) -> LoaderBase | EvalLoader:
    """Loader for `cfg` (mgm.config.Config) on this rank: DALI GPU, DALI CPU (VP9 twins) or the CPU fallback.

    task "pretrain": data.train_list, random views, masks from mask.*. "finetune": data.train_list with every
    label checked against model.num_classes, fine-tuning's random views (finetune.temporal / crop /
    rand_augment), and a motion-blind tube mask the classifier ignores (no motion is read). "eval": an EvalLoader
    (dali_pipes.evaluation) over `list_path` (default finetune.val_list) in fixed `views` (default
    finetune.test_clips x test_crops): every video once over the ranks, no augmentation, and unreadable or missing
    videos named and excluded instead of stopping the run.
    data.repeat = R (pretrain, finetune) reads each video once for R clips (dali_pipes.sampler): a batch holds
    data.batch_size / R videos, an epoch R x the videos in clips and steps.
    Returns an iterable with __len__ (batches per epoch), set_epoch(e), state_dict()/load_state_dict(d),
    stats (dict) and as_tuples(layout=...); each batch is the dict described in dali_pipes.adapter, on `device`.
    Raises mgm.config.ConfigError for a bad mask setting, FileNotFoundError when too many files are missing,
    FileListError for a label outside the head, and RuntimeError when the calling script lacks the
    `if __name__ == "__main__":` guard its workers need.
    """
    import torch

    from dali_pipes.adapter import DaliLoader
    from mgm.config import rand_augment_ops
    from mgm.labels import read_labelled_list
    from mgm.prep.filelist import read_list

    if task not in TASKS:
        raise ValueError(f"task={task!r}: one of {', '.join(TASKS)}")
    d, m, k, ft = cfg.data, cfg.motion, cfg.mask, cfg.finetune
    if task == "eval":  # an unreadable or missing video is excluded and reported, never fatal
        d = dataclasses.replace(d, max_bad_fraction=1.0)
        views = views or EvalViews(ft.test_clips, ft.test_crops)
    list_path = list_path or (ft.val_list if task == "eval" else d.train_list)
    if task != "pretrain":  # the classifier needs no mask: a motion-blind one costs nothing and reads no motion
        k = dataclasses.replace(k, name="tube", knobs={}, decoder_target_ratio=0.0)
        m = dataclasses.replace(m, source="online")
    masks = MaskMaker(
        name=k.name,
        ratio=k.ratio,
        grid=tuple(cfg.derived.grid),
        knobs=dict(k.knobs),
        motion_source=m.source,
        cache_dir=str(Path(m.cache_dir)) if m.cache_dir else "",
        cell=m.cell,
        threads=m.threads,
        seed=d.seed,
        decoder_name=k.decoder_name,
        decoder_target_ratio=k.decoder_target_ratio,
    )
    listed = read_list(list_path) if task == "pretrain" else read_labelled_list(list_path, cfg.model.num_classes)
    path, twins, entries = _files_on_disk(choose_path(d.loader, d.dali_device, device), d, listed)
    start_method = cpu_start_method() if path == "cpu" else "spawn"  # DALI's workers: see dali_pipes.graph
    if path != "cpu" or d.num_workers > 0:
        who = "The PyAV fallback's DataLoader workers" if path == "cpu" else "DALI's external-source workers"
        check_main_guard(start_method, who, ", or set data.num_workers=0" if path == "cpu" else "")
    sampler = ClipSampler(
        entries,
        num_frames=d.num_frames,
        stride=d.stride,
        input_size=d.input_size,
        crop_scales=d.crop_scales,
        flip=d.flip,
        short_video=d.short_video,
        seed=d.seed,
        rank=rank,
        world_size=world_size,
        batch_size=d.batch_size,
        repeat=1 if task == "eval" else d.repeat,  # fixed views are each taken once
        repeat_frames=d.repeat_frames,
        **_view_kwargs(ft, task, views),
    )
    dev = torch.device(device)
    common = {"device": dev, "output_dtype": output_dtype(d, dev), "max_bad_fraction": d.max_bad_fraction}
    ra = rand_augment_ops(ft.rand_augment) if task == "finetune" and ft.rand_augment else None
    if path == "cpu":
        from dali_pipes.augment import ClipRandAugment
        from dali_pipes.cpu_loader import CpuLoader

        loader = CpuLoader(sampler, masks, input_size=d.input_size, mean=d.mean, std=d.std,
                           num_workers=d.num_workers, start_method=start_method,
                           augment=ClipRandAugment(*ra) if ra else None, **common)  # fmt: skip
    else:
        from dali_pipes.augment import magnitude_bin

        decoded = [twin_path(e.path, twins) for e in entries]
        graph = {**_graph_kwargs(d, path, dev, decoded), "rand_augment": (ra[0], magnitude_bin(ra[1])) if ra else None}
        loader = DaliLoader(sampler, masks, kind=path, graph_kwargs=graph, twin_suffix=twins, **common)
    if task != "eval":
        return loader
    from dali_pipes.evaluation import EvalLoader

    kept = {e.path for e in entries}
    return EvalLoader(loader, entries=entries, missing=[e.path for e in listed if e.path not in kept])


def _view_kwargs(ft: Any, task: str, views: EvalViews | None) -> dict[str, Any]:
    """The sampler's view options for `task`: pretraining's defaults, fine-tuning's random views, or fixed views."""
    if task == "pretrain":
        return {}
    if task == "eval":
        return {"temporal": ft.temporal, "views": views, "shuffle": False}
    return {"temporal": ft.temporal, "crop": ft.crop, "crop_area": ft.crop_area, "crop_ratio": ft.crop_ratio}
