"""The steps of profiling/gpu_check.py: each takes the parsed arguments and the scratch folder and yields its rows
as it measures them (gpu_check writes each to disk at once, so a step killed at its limit keeps what it measured).

A row: {"step", "name", "item", "value", "unit", "status" ("ok" | "FAIL" | "ERROR" | "SKIP" | "info"), ...};
rows that feed a goal carry "metric". Every step runs in its own process (gpu_check.run_child); heavy imports
(torch, DALI, transformers) happen inside the functions so that a missing package is a row, not a crash.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Rows = Iterator[Row]
NAMES = {0: "setup", 1: "decode", 2: "loader", 3: "step", 4: "train", 5: "pytest"}
ROOT = Path(__file__).resolve().parents[1]
PSNR_PYAV_DB = 35.0  # NVDEC vs PyAV on the same H.264 stream (issue 9)
PSNR_PYAV_SMOKE_DB = 30.0  # DALI CPU decodes the VP9 twin, PyAV the H.264 original: two lossy codecs
PSNR_TRUTH_DB = 30.0  # vs the re-rendered synthetic frames, as tests/test_alignment.py
COVERAGE = 0.95  # MGM mask (ratio 0.75) share of the moving object's tokens, as tests/test_alignment.py
SMOKE_SIZE = 64  # steps 2-4 of the CPU smoke run: 4x4 tokens per slot, the same code paths, quicker
TRAIN_WARMUP = 5  # step-4 steps left out of the profile (pipeline start-up, cuBLAS/cuDNN autotuning)


def row(step: int, item: str, value: Any, unit: str, status: str, **extra: Any) -> Row:
    return {"step": step, "name": NAMES[step], "item": item, "value": value, "unit": unit, "status": status, **extra}


def data_paths(a: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Where step 0 puts the clips (VP9 twins only for the smoke run: DALI's CPU decoder reads them)."""
    d = work / ("data_vp9" if a.cpu_smoke else "data_h264")
    return {
        "dir": d,
        "all": d / "train.csv",
        "small": d / "small.csv",
        "bench": d / "bench.csv",
        "motion": d / "motion",
    }


# ---- step 0: environment and data ------------------------------------------------------------------------------
_PROBE = r"""
import ctypes, json, sys
r = {"python": sys.version.split()[0]}
try:
    import torch
    r["torch"] = torch.__version__
    r["cuda"] = torch.cuda.is_available()
    r["gpu"] = torch.cuda.get_device_name(0) if r["cuda"] else None
except Exception as e:
    r["torch"] = f"{type(e).__name__}: {e}"
try:
    import nvidia.dali as dali, nvidia.dali.fn, nvidia.dali.plugin.pytorch
    r["dali"] = dali.__version__
except Exception as e:
    r["dali"] = f"ERROR {type(e).__name__}: {e}"
try:
    import av
    r["av"] = av.__version__
except Exception as e:
    r["av"] = f"ERROR {type(e).__name__}: {e}"
try:
    ctypes.CDLL("libnvcuvid.so.1")
    r["libnvcuvid"] = "loads"
except OSError as e:
    r["libnvcuvid"] = f"ERROR {e}"
try:
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    r["nvml_decoder_util"] = pynvml.nvmlDeviceGetDecoderUtilization(h)[0]
except Exception as e:
    r["nvml_decoder_util"] = f"n/a ({type(e).__name__}: {e})"
print(json.dumps(r))
"""


def env_rows(a: argparse.Namespace) -> list[Row]:
    """What the machine has; probed in a separate process so that no CUDA/DALI state leaks into the steps."""
    import importlib.util

    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return [row(0, "env probe", None, "", "ERROR", error=p.stderr.strip()[-500:])]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    need_gpu = not a.cpu_smoke
    rows = [row(0, "python", r["python"], "", "info"), row(0, "torch", r["torch"], "", "info")]
    rows.append(row(0, "cuda", r.get("gpu") or False, "", "ok" if r.get("cuda") or not need_gpu else "FAIL"))
    for item, key, required in (
        ("dali", "dali", True),
        ("av (PyAV)", "av", True),
        ("libnvcuvid", "libnvcuvid", need_gpu),
    ):
        err = str(r[key]).startswith("ERROR")
        status = ("FAIL" if required else "info") if err else "ok"
        rows.append(row(0, item, "missing" if err else r[key], "", status, **({"error": r[key][6:]} if err else {})))
    dec = r["nvml_decoder_util"]
    rows.append(row(0, "NVML decoder counter", dec if isinstance(dec, int) else "n/a", "%", "info",
                    **({} if isinstance(dec, int) else {"error": dec})))  # fmt: skip
    for mod in ("transformers", "timm", "tqdm", "tensorboard", "torchcodec"):  # optional or only for some paths
        rows.append(row(0, f"module {mod}", "present" if importlib.util.find_spec(mod) else "absent", "", "info"))
    return rows


def _make_clip(job: tuple[str, str, int, bool]) -> None:
    from mgm.prep.synth import make_clip

    stem, kind, seed, twin = job
    make_clip(stem, kind, seed, size=(240, 320), num_frames=60, gop=16, bframes=0, vp9_twin=twin)


def step_setup(a: argparse.Namespace, work: Path) -> Rows:
    """Step 0: the machine (env_rows), then the data every later step reads (prepare_data)."""
    yield from env_rows(a)
    yield from prepare_data(a, work)


def prepare_data(a: argparse.Namespace, work: Path) -> Rows:
    """Synthetic clips (320x240, 60 frames, GOP 16, no B-frames; H.264, plus VP9 twins for the smoke run), the
    lists small.csv (step 1), bench.csv (steps 2 and 4: the clips repeated so that one epoch outlasts a timed
    run, no epoch boundary inside it) and the motion cache."""
    from mgm.motion_cache import build_cache
    from mgm.prep.filelist import read_list, write_list
    from mgm.prep.synth import KINDS, make_dataset

    p, t0 = data_paths(a, work), time.perf_counter()
    vids = p["dir"] / "videos"
    jobs = [(str(vids / f"clip_{i:05d}"), KINDS[i % len(KINDS)], i, a.cpu_smoke) for i in range(a.clips)]
    jobs = [j for j in jobs if not Path(j[0]).with_suffix(".json").exists()]  # make_dataset's resume rule
    if jobs:
        with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(_make_clip, jobs))
    entries = read_list(make_dataset(p["dir"], num=a.clips, seed=0, vp9_twin=a.cpu_smoke))
    yield row(0, "synthetic clips", len(entries), "clips", "ok", made=len(jobs), seconds=time.perf_counter() - t0)
    write_list(p["small"], entries[: min(8, len(entries))])
    need = a.batch * (max(a.steps + TRAIN_WARMUP, a.batches + 1) + 2)
    write_list(p["bench"], entries * math.ceil(need / len(entries)))
    t0 = time.perf_counter()
    s = build_cache(p["all"], p["motion"], workers=os.cpu_count() or 1, progress=False)
    status = "FAIL" if s.get("failed") else "ok"
    detail = {k: v for k, v in s.items() if k != "failures"}
    cached = s.get("done", 0) + s.get("skipped", 0)
    yield row(0, "motion cache", cached, "clips", status, seconds=time.perf_counter() - t0, detail=detail)


# ---- step 1: decode correctness and mask alignment --------------------------------------------------------------
def step_decode(a: argparse.Namespace, work: Path) -> Rows:
    """DALI (mixed on H.264; CPU on VP9 twins for the smoke run) vs the PyAV fallback, same plan, 2 epochs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import numpy as np
    from alignment_util import loader_overrides, object_tokens, psnr, rendered_clip, to_pixels, truth_of

    from dali_pipes import build_loader
    from mgm.config import load_config

    small = data_paths(a, work)["small"]
    dev = "cpu" if a.cpu_smoke else "gpu"
    dali = build_loader(
        load_config(None, loader_overrides(small, "dali", dev)), device="cpu" if a.cpu_smoke else "cuda"
    )
    cpu = build_loader(load_config(None, loader_overrides(small, "cpu")))
    got: list[tuple[int, dict, dict]] = []
    for epoch in range(1 if a.cpu_smoke else 2):
        dali.set_epoch(epoch)
        cpu.set_epoch(epoch)
        got += [(epoch, x, y) for x, y in zip(dali, cpu, strict=True)]
    dali.close()
    sampler, size = cpu.sampler, int(got[0][1]["video"].shape[-1])
    vs_pyav, vs_truth, coverage, same_plan, flipped = [], [], [], 0, 0
    for epoch, x, y in got:
        same_plan += int(
            x["index"].tolist() == y["index"].tolist()
            and np.array_equal(x["frame_indices"].numpy(), y["frame_indices"].numpy())
            and np.array_equal(x["mask"].cpu().numpy(), y["mask"].numpy())
        )
        for i in range(len(x["index"])):
            vi = int(x["index"][i])
            truth = truth_of(sampler.paths[vi])
            spec = sampler.spec(epoch, vi, tuple(truth["size"]))
            flipped += spec.flip
            px, py = to_pixels(x["video"][i]), to_pixels(y["video"][i])
            vs_pyav.append(psnr(px, py))
            vs_truth.append(psnr(px, rendered_clip(truth, spec, size)))
            obj = object_tokens(truth, spec, size=size, patch=16)  # (T2, Hp, Wp)
            if truth["kind"] != "static" and obj.any():  # static: tube fallback; object out of crop: nothing to find
                coverage.append(float(x["mask"][i].cpu().numpy().reshape(obj.shape)[obj].mean()))
    need = PSNR_PYAV_SMOKE_DB if a.cpu_smoke else PSNR_PYAV_DB
    yield from [
        row(1, "decoder", dali.kind, "", "info", batches=len(got), clips=sum(len(x["index"]) for _, x, _ in got)),
        row(1, "PSNR DALI vs PyAV, min", min(vs_pyav), "dB", "ok" if min(vs_pyav) >= need else "FAIL",
            need=need, mean=float(np.mean(vs_pyav))),
        row(1, "PSNR DALI vs rendered truth, min", min(vs_truth), "dB", "ok" if min(vs_truth) >= PSNR_TRUTH_DB
            else "FAIL", need=PSNR_TRUTH_DB, mean=float(np.mean(vs_truth))),
        row(1, "same indices/frames/masks as fallback", same_plan / len(got), "share of batches",
            "ok" if same_plan == len(got) else "FAIL"),
        row(1, "MGM coverage of moving object, min", min(coverage, default=float("nan")), "share",
            "ok" if coverage and min(coverage) >= COVERAGE else "FAIL", need=COVERAGE, clips=len(coverage)),
        row(1, "flipped clips checked", flipped, "clips", "info"),
    ]  # fmt: skip


# ---- step 2: loader throughput ----------------------------------------------------------------------------------
def step_loader(a: argparse.Namespace, work: Path) -> Rows:
    """Clips/s of each loader over `a.batches` batches after the first, same list, batch and worker count."""
    import torch

    from dali_pipes import build_loader
    from mgm.config import load_config
    from mgm.prep.filelist import read_list
    from profiling.baseline_videomae import baseline_loader
    from profiling.bench_decode import run_loader

    torch.set_num_threads(1)  # the workers do the work; the main process only collates
    p = data_paths(a, work)
    entries = read_list(p["bench"])
    size = SMOKE_SIZE if a.cpu_smoke else 224
    dali_dev, out_dev = ("cpu", "cpu") if a.cpu_smoke else ("gpu", "cuda")

    def ours(loader: str, mask: str, device: str, *extra: str) -> Any:
        ov = [f"data.train_list={p['bench']}", f"data.loader={loader}", f"data.dali_device={dali_dev}",
              f"data.batch_size={a.batch}", f"data.num_workers={a.workers}", f"data.input_size={size}",
              f"mask.name={mask}", f"motion.source={a.motion}", f"motion.cache_dir={p['motion']}", *extra]  # fmt: skip
        return lambda: build_loader(load_config(None, ov), device=device)

    # The baseline and the fallback first: their DataLoaders may fork, which is only safe before DALI's threads
    # and the CUDA context exist in this process.
    makers = {
        "videomae baseline (tube)": lambda: baseline_loader(
            [e.path for e in entries],
            [e.num_frames for e in entries],
            batch_size=a.batch,
            num_workers=a.workers,
            input_size=size,
        ),  # fmt: skip
        "cpu fallback (tube)": ours("cpu", "tube", "cpu"),
    }
    if (tc := _torchcodec_maker(entries, a.batch, a.workers)) is not None:
        makers["torchcodec (decode only)"] = tc
    dali_tube = f"dali-{dali_dev} (tube)"
    makers[dali_tube] = ours("dali", "tube", out_dev)
    makers[f"dali-{dali_dev} (mgm, {a.motion})"] = ours("dali", "mgm", out_dev)
    # issue 13: the workers' decoder masks (VideoMAE V2's, half the tokens reconstructed), and repeated sampling (one
    # read and one NVDEC decode of the union per video for R clips); x_r1 compares with the R = 1 row
    makers[f"dali-{dali_dev} (mgm, {a.motion}, decoder mask 0.5)"] = ours(
        "dali", "mgm", out_dev, "mask.decoder_target_ratio=0.5", "mask.decoder_name=mgm"
    )
    dali_repeat = f"dali-{dali_dev} (tube, data.repeat={a.repeat})"
    if a.repeat > 1:
        makers[dali_repeat] = ours("dali", "tube", out_dev, f"data.repeat={a.repeat}")
    base, dali_row = None, None  # the baseline runs first: every later row carries its ratio to it
    for name, make in makers.items():
        gpu = _nvml() if name.startswith("dali-gpu") else None  # NVDEC busy share while this loader runs
        try:
            r = run_loader(name, make, a.batches, a.batch)
        except Exception as e:  # one loader failing (e.g. no NVDEC) leaves the others' numbers standing
            traceback.print_exc()
            yield row(2, name, None, "clips/s", "ERROR", error=f"{type(e).__name__}: {e}"[:500])
            continue
        finally:
            util = gpu.take() if gpu else {}
            if gpu:
                gpu.close()
        base = r["clips_per_s"] if name.startswith("videomae") else base
        x_base = r["clips_per_s"] / base if base else float("nan")
        if name == dali_repeat and dali_row is not None:
            util["x_r1"] = r["clips_per_s"] / dali_row["value"]
            util["x_r1_cpu"] = dali_row["cpu_ms_per_clip"] / r["cpu_ms_per_clip"]
        got = row(2, name, r["clips_per_s"], "clips/s", "ok", x_baseline=x_base, cpu_ms_per_clip=r["cpu_ms_per_clip"],
                  startup_s=r["startup_s"], **util)  # fmt: skip
        dali_row = got if name == dali_tube else dali_row
        print(f"[gpu_check] {name}: {r['clips_per_s']:.1f} clips/s {util}", flush=True)
        yield got
    if dali_row is not None:
        ratio = dali_row["x_baseline"]
        yield row(2, f"{dali_tube} / videomae baseline", ratio, "x", "info", metric="loader_x_baseline")
        if "dec_util" in dali_row:
            yield row(2, f"NVDEC utilization ({dali_tube})", dali_row["dec_util"], "%", "info")


def _nvml() -> Any:
    try:
        from profiling.gpu_sampler import GpuSampler

        return GpuSampler(0, 0.1)
    except Exception as e:  # no NVML: the row simply has no utilization columns
        print(f"[gpu_check] NVML unavailable ({type(e).__name__}: {e})", flush=True)
        return None


def _torchcodec_maker(entries: list[Any], batch: int, workers: int) -> Any:
    """torchcodec as an optional baseline (decode only, as in bench_decode.py); None when not importable."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception:
        return None
    from torch.utils.data import DataLoader

    return lambda: DataLoader(_TorchcodecClips([(e.path, e.num_frames) for e in entries]), batch_size=batch,
                              num_workers=workers, drop_last=True, persistent_workers=workers > 0)  # fmt: skip


class _TorchcodecClips:
    """Map-style dataset: 16 frames at stride 2 from a seeded random start, decoded by torchcodec."""

    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        import numpy as np
        from torchcodec.decoders import VideoDecoder

        path, n = self.items[i]
        start = int(np.random.default_rng(i).integers(0, max(n - 31, 1)))
        return VideoDecoder(path).get_frames_at(list(range(start, start + 32, 2))).data


# ---- step 3: training-step throughput ---------------------------------------------------------------------------
def step_step(a: argparse.Namespace, work: Path) -> Rows:
    """profiling/bench_step.py: ours vs HF on the same weights, input, tube mask, fused AdamW and bf16; eager first
    (kept if compiling fails or runs out of time), then ours compiled (the training default on CUDA)."""
    import torch

    from profiling import bench_step

    dev = "cpu" if a.cpu_smoke else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available (use --cpu-smoke on a machine without a GPU)")
    size = SMOKE_SIZE if a.cpu_smoke else 224
    # decoder masking (issue 13): ours with 0.5 and 0.25 of the tokens reconstructed, beside ours and HF; no
    # activation-checkpointing row (a memory knob: its time is bench_step's business)
    argv = ["--size", a.model, "--batch", str(a.batch), "--frames", "16", "--input-size", str(size), "--ratio", "0.9",
            "--precision", "bf16", "--rounds", str(a.rounds), "--steps", "2", "--warmup", "1" if a.cpu_smoke else "2",
            "--device", dev, "--decoder-targets", "0.5", "0.25", "--no-ckpt-row", *a.step_args.split()]  # fmt: skip
    for compiled in (False, True) if a.compile else (False,):
        res = bench_step.main(argv + (["--compile"] if compiled else []))
        ours = next(r for r in res["rows"] if r["model"] == ("ours_compiled" if compiled else "ours"))
        for r in [ours] if compiled else res["rows"]:
            finite = math.isfinite(r["first_loss"])
            yield row(3, f"{r['model']} ({r['size']}, bf16, batch {r['batch']})", r["clips_per_s"], "clips/s",
                      "ok" if finite else "FAIL", ms_per_step=r["ms_per_step"], first_loss=r["first_loss"],
                      paired_speedup=r["paired_speedup"])  # fmt: skip
        yield row(3, f"ours{' compiled' if compiled else ''} / HF (median step)", ours["speedup_vs_hf"], "x", "info",
                  metric="step_x_hf", paired=ours["paired_speedup"])  # fmt: skip
        for r in [] if compiled else [r for r in res["rows"] if r["decoder_targets"] > 0]:
            yield row(3, f"{r['model']} / ours (median step)", r["speedup_vs_ours"], "x", "info",
                      paired=r["paired_vs_ours"], vs_hf=r["speedup_vs_hf"],
                      gflop_per_step=r["gflop_per_step"])  # fmt: skip


# ---- step 4: training fed by the DALI loader --------------------------------------------------------------------
def step_train(a: argparse.Namespace, work: Path) -> Rows:
    """profiling/profile_train.py on configs/ssv2_vitb.yaml with the synthetic list: engine.fit + ProfileHook."""
    from profiling import profile_train

    p, out = data_paths(a, work), work / "train"
    root = Path(__file__).resolve().parents[1]
    smoke = a.cpu_smoke
    size = SMOKE_SIZE if smoke else 224
    ov = [f"data.train_list={p['bench']}", "data.loader=dali", f"data.dali_device={'cpu' if smoke else 'gpu'}",
          f"data.batch_size={a.batch}", f"data.num_workers={a.workers}", f"data.input_size={size}",
          f"motion.source={a.motion}", f"motion.cache_dir={p['motion']}", f"model.size={a.model}",
          f"train.device={'cpu' if smoke else 'cuda'}", f"train.precision={'fp32' if smoke else 'bf16'}",
          f"train.out_dir={out}", "profiling.trace_steps=[0,0]", f"model.compile={str(a.compile).lower()}"]  # fmt: skip
    if smoke:  # the config's decoder is ViT-B's; 0 = the tiny size's own
        ov += ["model.decoder_depth=0", "model.decoder_dim=0", "model.decoder_heads=0"]
    warmup = min(TRAIN_WARMUP, max(a.steps - 2, 0))
    s = profile_train.main(["--cfg", str(root / "configs" / "ssv2_vitb.yaml"), "--steps", str(a.steps),
                            "--warmup", str(warmup), "--out", str(out), *ov])  # fmt: skip
    doc = json.loads((out / "profile_train.json").read_text())
    eng, stats = doc["meta"]["engine"], doc["meta"]["loader_stats"]
    ok = eng["steps"] == a.steps and math.isfinite(eng["last_loss"]) and not stats.get("bad_files")
    gpu = s.get("gpu") or {}
    yield from [
        row(4, f"steps ({stats.get('loader')}, {a.model}, batch {a.batch})", eng["steps"], "steps",
            "ok" if ok else "FAIL", last_loss=eng["last_loss"], bad_files=stats.get("bad_files"), warmup=warmup),
        row(4, "data wait share of wall", s["data_wait_share"], "share", "info", metric="data_wait_share",
            wait_over_step=s["data_wait_s"] / max(s["step_s"], 1e-12), verdict=s["verdict"]),
        row(4, f"training clips/s (steady state, {a.model}{', compiled' if a.compile else ''})", s["clips_per_s"],
            "clips/s", "info", step_ms=s["step_ms"], metric="pretrain_clips_per_s"),
        row(4, "GPU util / NVDEC util", f"{gpu.get('gpu_util', 'n/a')} / {gpu.get('dec_util', 'n/a')}", "%", "info"),
    ]  # fmt: skip


# ---- step 5: the GPU tests -------------------------------------------------------------------------------------
def step_pytest(a: argparse.Namespace, work: Path) -> Rows:
    """`pytest -m gpu` in its own process group: a row per GPU test, then the count. On a GPU machine a skipped GPU
    test is a failure (-rs says why: no CUDA, DALI not importable); in the smoke run skips are expected."""
    import xml.etree.ElementTree as ET

    xml = work / "pytest_gpu.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=max(a.limits[5] - 10, 5))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the DALI workers its tests started
        log = proc.communicate()[0] + "\n[gpu_check] pytest killed at the step's limit"
    (Path(a.out) / "pytest_gpu.log").write_text(log)
    counts = {"ok": 0, "FAIL": 0, "skipped": 0}
    for case in ET.parse(xml).getroot().iter("testcase") if xml.is_file() else []:
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")  # Elements are falsy
        skip = case.find("skipped")
        if bad is not None:
            status, why = "FAIL", (bad.get("message") or "")[:300]
        elif skip is not None:
            status, why = ("info" if a.cpu_smoke else "FAIL"), "skipped: " + (skip.get("message") or "")[:200]
        else:
            status, why = "ok", ""
        counts["skipped" if skip is not None else status] += 1
        yield row(5, name, float(case.get("time", "nan")), "s", status, **({"error": why} if why else {}))
    ran = counts["ok"] + counts["FAIL"]
    good = proc.returncode == 0 and counts["FAIL"] == 0 and (a.cpu_smoke or (ran and not counts["skipped"]))
    why = {} if good else {"error": " | ".join(log.strip().splitlines()[-3:])[-300:]}
    yield row(5, "pytest -m gpu: passed", counts["ok"], "tests", "ok" if good else "FAIL", failed=counts["FAIL"],
              skipped=counts["skipped"], exit_code=proc.returncode, **why)  # fmt: skip


STEPS = {0: ("setup", step_setup), 1: ("decode", step_decode), 2: ("loader", step_loader), 3: ("step", step_step),
         4: ("train", step_train), 5: ("pytest", step_pytest)}  # fmt: skip
