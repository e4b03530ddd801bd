"""Training-step throughput: our VideoMAE vs Hugging Face `VideoMAEForPreTraining`, same size, same weights.

Every model gets the same input, tube mask, fused AdamW and precision; steps are interleaved in rounds
(ours, HF, ..., then the reverse order) so that load from other processes hits all alike; the median step is
reported. Rows: Hugging Face, ours, ours with decoder masking (VideoMAE V2's running-cell targets among the
masked tokens; `--decoder-targets` gives the share of ALL tokens reconstructed, default 0.5 and 0.25), ours with
activation checkpointing. GFLOP/step is counted by torch.utils.flop_counter over one whole step.
`--memory` adds memory per step with and without activation checkpointing: on CUDA torch.cuda.max_memory_allocated
over a step; on the CPU the peak RSS (VmHWM) of a fresh process per variant, as torch keeps no CPU allocator
statistics.

    python profiling/bench_step.py --size small --batch 2 --memory --out runs/bench_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from mgm.config import DataConfig  # noqa: E402
from mgm.masking import build_decoder_masking, build_masking  # noqa: E402
from mgm.model import MODEL_SIZES, create_model, load_hf_state_dict  # noqa: E402
from profiling.report_format import emit  # noqa: E402


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(B, N) bool, True = masked: one random spatial mask per clip repeated over the T2 slots (VideoMAE tube)."""
    t2, hp, wp = grid
    k = round(ratio * hp * wp)
    rows = []
    for _ in range(batch):
        slot = torch.zeros(hp * wp, dtype=torch.bool)
        slot[torch.randperm(hp * wp, generator=gen)[:k]] = True
        rows.append(slot.repeat(t2))
    return torch.stack(rows)


def running_cell_targets(mask: torch.Tensor, grid: tuple[int, int, int], ratio: float, share: float) -> torch.Tensor:
    """(B, N) bool, True = reconstructed: VideoMAE V2's running-cell targets, round(share * N) masked tokens a row."""
    dec = build_decoder_masking("running_cell", share, build_masking("tube", ratio, grid))
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([dec(m, None, rng) for m in mask.cpu().numpy()])).to(mask.device)


def hf_model(size: str, frames: int, input_size: int, norm_pix_loss: bool) -> torch.nn.Module:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    s = MODEL_SIZES[size]
    cfg = VideoMAEConfig(
        image_size=input_size,
        num_frames=frames,
        hidden_size=s.dim,
        num_hidden_layers=s.depth,
        num_attention_heads=s.heads,
        intermediate_size=int(s.mlp_ratio * s.dim),
        decoder_hidden_size=s.decoder_dim,
        decoder_num_hidden_layers=s.decoder_depth,
        decoder_num_attention_heads=s.decoder_heads,
        decoder_intermediate_size=int(s.mlp_ratio * s.decoder_dim),
        use_mean_pooling=False,  # the pretraining layout: final encoder LayerNorm, as ours
        layer_norm_eps=1e-6,
        norm_pix_loss=norm_pix_loss,
    )
    return VideoMAEForPreTraining(cfg)


def step_gflops(step) -> float:
    """GFLOPs (multiply-adds count 2) that one call of `step` (forward, backward, optimizer) runs.

    torch's counter knows the CUDA attention kernels only; the CPU's fused attention (forward and backward) is
    counted here with the same formulas, or the decoder's attention, most of its work at 1568 tokens, goes missing.
    """
    from torch.utils import flop_counter as fc

    def forward(q, k, v, *_, out_shape=None, **__) -> int:  # shapes of the op's arguments
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *_, out_shape=None, **__) -> int:
        return fc.sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    cpu_attention = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
                     aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}  # fmt: skip
    with fc.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        step()
    return counter.get_total_flops() / 1e9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument(
        "--decoder-targets",
        type=float,
        nargs="*",
        default=[0.5, 0.25],
        help="decoder-masking rows: share of ALL tokens reconstructed (V2's decoder_mask_ratio = 1 - it)",
    )
    ap.add_argument("--no-ckpt-row", action="store_true", help="skip the activation-checkpointing timing row")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    ap.add_argument("--memory", action="store_true", help="also measure memory per step, with/without checkpointing")
    ap.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)  # one variant, in a subprocess
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON output path")
    return ap.parse_args(argv)


class Setup:
    """The shared input: clip, tube mask, decoder targets per share, and a step factory (fused AdamW)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.dev = a, torch.device(a.device)
        self.clip = DataConfig(num_frames=a.frames, input_size=a.input_size)
        gen = torch.Generator().manual_seed(0)
        self.video = torch.randn(a.batch, 3, a.frames, a.input_size, a.input_size, generator=gen).to(self.dev)
        self.grid = (a.frames // 2, a.input_size // 16, a.input_size // 16)
        self.mask = tube_mask(a.batch, self.grid, a.ratio, gen).to(self.dev)

    def targets(self, share: float) -> torch.Tensor | None:
        return running_cell_targets(self.mask, self.grid, self.a.ratio, share) if share > 0 else None

    def ours(self, **model) -> torch.nn.Module:
        return create_model(self.a.size, self.clip, compile=False, **model).to(self.dev)

    def make_step(self, model: torch.nn.Module, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
        bf16 = self.a.precision == "bf16"

        def step() -> float:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = loss_fn(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if self.dev.type == "cuda":
                torch.cuda.synchronize()
            return loss.item()

        return step

    def ours_step(self, model: torch.nn.Module, share: float):
        dec = self.targets(share)
        return self.make_step(model, lambda m: m(self.video, self.mask, dec)[0])


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(a: argparse.Namespace) -> dict:
    """Memory of one variant (a.ckpt, a.target) over a.steps steps after a warmup step, in MB.

    CUDA: max_memory_allocated during the steps (peak_mb) and memory_allocated before them (rest_mb). CPU (this
    process must be fresh: RSS never goes back down for the allocator's cached pages): the peak RSS (VmHWM, reset
    after warmup where the kernel allows) and the RSS at rest after malloc_trim.
    """
    s = Setup(a)
    step = s.ours_step(s.ours(grad_checkpointing=a.ckpt), a.target)
    step()  # warmup: optimizer state and gradients exist from here on
    gc.collect()
    if s.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
        for _ in range(a.steps):
            step()
        peak, how = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand cached free pages back, so the RSS at rest is honest
        rest = _proc_status_kb("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            how = "peak RSS (VmHWM) over the steps"
        except OSError:
            how = "peak RSS (VmHWM) since start (no reset allowed)"
        for _ in range(a.steps):
            step()
        peak = _proc_status_kb("VmHWM") * 1024
    return {"peak_mb": peak / 2**20, "rest_mb": rest / 2**20, "step_mb": (peak - rest) / 2**20, "measure": how}


def memory_rows(a: argparse.Namespace) -> list[dict]:
    """Memory per step of ours with and without activation checkpointing, without and with decoder masking."""
    rows = []
    for target in sorted({0.0, *a.decoder_targets[:1]}):
        for ckpt in (False, True):
            if a.device.startswith("cuda"):
                res = memory_probe(argparse.Namespace(**{**vars(a), "ckpt": ckpt, "target": target}))
                torch.cuda.empty_cache()
            else:  # a fresh process per variant: peak RSS is per process
                cmd = [sys.executable, __file__, "--memory-probe", "--size", a.size, "--batch", str(a.batch),
                       "--frames", str(a.frames), "--input-size", str(a.input_size), "--ratio", str(a.ratio),
                       "--precision", a.precision, "--steps", "2", "--target", str(target), "--device", a.device,
                       *(["--ckpt"] if ckpt else [])]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": "ours", "grad_checkpointing": ckpt, "decoder_targets": target, **res})
    return rows


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    torch.manual_seed(0)
    if a.memory_probe:
        res = memory_probe(a)
        print(json.dumps(res))
        return res
    s = Setup(a)
    load_before = os.getloadavg()
    hf = hf_model(a.size, a.frames, a.input_size, True).to(s.dev)
    ours = s.ours()
    load_hf_state_dict(ours, hf.state_dict())  # same weights: the first losses must agree
    ours.decoder_norm.eps = hf.decoder.norm.eps
    hf_video = s.video.transpose(1, 2).contiguous()  # HF takes (B, T, C, H, W)

    def copy_of_ours(**model) -> torch.nn.Module:
        m = s.ours(**model)
        m.load_state_dict(ours.state_dict())
        m.decoder_norm.eps = ours.decoder_norm.eps
        return m

    runs = {"ours": s.ours_step(ours, 0.0),
            "hf_transformers": s.make_step(hf, lambda m: m(hf_video, bool_masked_pos=s.mask).loss)}  # fmt: skip
    shares = {"ours": 0.0, "hf_transformers": 0.0}
    for share in a.decoder_targets:
        runs[f"ours_dec{share:g}"], shares[f"ours_dec{share:g}"] = s.ours_step(copy_of_ours(), share), share
    if not a.no_ckpt_row:
        runs["ours_ckpt"], shares["ours_ckpt"] = s.ours_step(copy_of_ours(grad_checkpointing=True), 0.0), 0.0
    first = {name: fn() for name, fn in runs.items()}  # also a warmup step each
    # FLOPs of one forward+backward: the speedup a model can get at equal kernel efficiency is HF's over ours.
    gflops = {name: step_gflops(fn) for name, fn in runs.items()}
    if a.compile:
        comp = copy_of_ours()
        comp.compile()
        runs["ours_compiled"], shares["ours_compiled"] = s.ours_step(comp, 0.0), 0.0
        first["ours_compiled"] = runs["ours_compiled"]()
    for fn in runs.values():
        for _ in range(a.warmup - 1):
            fn()

    # Wall time is what users get; process CPU time (all threads) is steadier when other jobs share the cores.
    # paired: per round, HF's (or ours') time over this row's, so that load drifting between rounds cancels out.
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    per_round: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(a.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            t_round = 0.0
            for _ in range(a.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                t_round += times[name][-1]
            per_round[name].append(t_round)

    def paired(base: str, name: str) -> float:
        return statistics.median(b / o for b, o in zip(per_round[base], per_round[name], strict=True))

    hf_ms = statistics.median(times["hf_transformers"]) * 1e3
    ours_ms = statistics.median(times["ours"]) * 1e3
    hf_cpu = statistics.median(cpu["hf_transformers"])
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        rows.append(
            {
                "model": name,
                "size": a.size,
                "batch": a.batch,
                "precision": a.precision,
                "decoder_targets": shares[name],
                "first_loss": first[name],
                "ms_per_step": ms,
                "min_ms": min(ts) * 1e3,
                "cpu_s": statistics.median(cpu[name]),
                "clips_per_s": a.batch / ms * 1e3,
                "speedup_vs_hf": hf_ms / ms,
                "paired_speedup": paired("hf_transformers", name),
                "speedup_vs_ours": ours_ms / ms,
                "paired_vs_ours": paired("ours", name),
                "cpu_speedup_vs_hf": hf_cpu / statistics.median(cpu[name]),
                "gflop_per_step": gflops.get(name, float("nan")),
                "flop_ceiling_vs_hf": gflops["hf_transformers"] / gflops.get(name, float("nan")),
            }
        )
    meta = {
        "frames": a.frames,
        "input_size": a.input_size,
        "mask_ratio": a.ratio,
        "decoder_mask": "running_cell targets among the masked tokens; decoder_targets = share of all tokens",
        "rounds": a.rounds,
        "steps_per_round": a.steps,
        "optimizer": "torch.optim.AdamW(fused=True)",
        "threads": torch.get_num_threads(),
        "device": str(s.dev),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    if a.memory:
        meta["memory"] = memory_rows(a)
    emit("bench_step", rows, out=a.out, meta=meta)
    if a.memory:
        emit("bench_step memory per step (MB)", meta["memory"])
    print(f"load average (1, 5, 15 min): before {load_before}, after {meta['loadavg_after']}", flush=True)
    return {"rows": rows, "meta": meta}


if __name__ == "__main__":
    main()
