"""The loader: sampler, DALI graph, worker sources, torch adapter, CPU fallback. Entry point: `build_loader`.

    loader = build_loader(cfg, rank=rank, world_size=world_size, device="cuda")
    for epoch in range(start_epoch, cfg.train.epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # or: for videos, bool_masked_pos in loader.as_tuples()
            ...  # batch["video"] (B,3,T,S,S), batch["mask"] (B,N) bool, True = masked

Batch format: see dali_pipes.adapter.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dali_pipes.sampler import ClipSampler, ClipSpec
from dali_pipes.sources import MaskMaker, twin_path

if TYPE_CHECKING:
    from dali_pipes.adapter import LoaderBase

__all__ = ["build_loader", "ClipSampler", "ClipSpec", "LoaderBase", "TooManyBadVideos", "choose_path"]


def __getattr__(name: str) -> Any:
    # torch is imported on first use only: DALI's spawned workers import this package and need no torch
    if name in ("LoaderBase", "TooManyBadVideos", "DaliLoader"):
        from dali_pipes import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module 'dali_pipes' has no attribute {name!r}")


def _dali_available() -> bool:
    return (
        importlib.util.find_spec("nvidia.dali") is not None and importlib.util.find_spec("nvidia.dali.fn") is not None
    )


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


def _check_files(entries: list[Any], twin_suffix: str | None, max_bad_fraction: float) -> list[Any]:
    """Drop entries whose files are missing; report all of them in one warning (or one error, if too many)."""
    missing, keep = [], []
    for e in entries:
        need = [e.path] + ([twin_path(e.path, twin_suffix)] if twin_suffix else [])
        gone = [p for p in need if not os.path.isfile(p)]
        if gone:
            missing.extend(gone)
        else:
            keep.append(e)
    if missing:
        msg = f"{len(missing)} file(s) of the file list are missing:\n  " + "\n  ".join(missing)
        if len(entries) - len(keep) > max_bad_fraction * len(entries):
            raise FileNotFoundError(msg + f"\nmore than data.max_bad_fraction={max_bad_fraction} of the videos")
        warnings.warn(msg + "\n(skipped for this run)", stacklevel=3)
    return keep


def build_loader(cfg: Any, *, rank: int = 0, world_size: int = 1, device: str = "cpu") -> LoaderBase:
    """Loader for `cfg` (mgm.config.Config) on this rank: DALI GPU, DALI CPU (VP9 twins) or the CPU fallback.

    Returns an iterable with __len__ (batches per epoch), set_epoch(e), state_dict()/load_state_dict(d),
    stats (dict) and as_tuples(); each batch is the dict described in dali_pipes.adapter, on `device`.
    """
    import torch

    from dali_pipes.adapter import DaliLoader
    from mgm.filelist import read_list

    d, m, k = cfg.data, cfg.motion, cfg.mask
    path = choose_path(d.loader, d.dali_device, device)
    entries = read_list(d.train_list)
    twins = d.twin_suffix if path == "dali-cpu" else None
    if twins and d.loader == "auto":
        absent = [e.path for e in entries if not os.path.isfile(twin_path(e.path, twins))]
        if absent and len(absent) > d.max_bad_fraction * len(entries):
            warnings.warn(
                f"{len(absent)} of {len(entries)} videos have no {twins} twin for DALI's CPU decoder "
                f"(e.g. {absent[0]}); using the PyAV fallback loader. Make twins with `mgm-prepare transcode`.",
                stacklevel=2,
            )
            path, twins = "cpu", None
    entries = _check_files(entries, twins, d.max_bad_fraction)
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
    )
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
    )
    dev = torch.device(device)
    common = {"device": dev, "output_dtype": d.output_dtype, "max_bad_fraction": d.max_bad_fraction}
    if path == "cpu":
        from dali_pipes.cpu_loader import CpuLoader

        return CpuLoader(sampler, masks, input_size=d.input_size, mean=d.mean, std=d.std,
                         num_workers=d.num_workers, **common)  # fmt: skip
    gpu = path == "dali-gpu"
    device_id = (dev.index if dev.index is not None else torch.cuda.current_device()) if gpu else None
    graph_kwargs = {
        "input_size": d.input_size,
        "mean": list(d.mean),
        "std": list(d.std),
        "decode_device": "mixed" if gpu else "cpu",
        "device_id": device_id,
        "num_threads": max(1, min(4, os.cpu_count() or 1)),
        "py_num_workers": max(1, d.num_workers),
        "seed": d.seed,
    }
    return DaliLoader(sampler, masks, graph_kwargs=graph_kwargs, twin_suffix=twins, **common)
