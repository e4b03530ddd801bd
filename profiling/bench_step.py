"""Training-step throughput: our VideoMAE vs Hugging Face `VideoMAEForPreTraining`, same size, same weights.

Both models get the same input, tube mask, fused AdamW and precision; steps are interleaved in rounds
(ours, HF, HF, ours, ...) so that load from other processes hits both alike; the median step is reported.

    python profiling/bench_step.py --size small --batch 2 --out runs/bench_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from mgm.config import DataConfig  # noqa: E402
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


def hf_model(size: str, frames: int, input_size: int, norm_pix_loss: bool) -> torch.nn.Module:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    s = MODEL_SIZES[size]
    cfg = VideoMAEConfig(
        image_size=input_size,
        num_frames=frames,
        hidden_size=s.dim,
        num_hidden_layers=s.depth,
        num_attention_heads=s.heads,
        intermediate_size=4 * s.dim,
        decoder_hidden_size=s.decoder_dim,
        decoder_num_hidden_layers=s.decoder_depth,
        decoder_num_attention_heads=s.decoder_heads,
        decoder_intermediate_size=4 * s.decoder_dim,
        use_mean_pooling=False,  # the pretraining layout: final encoder LayerNorm, as ours
        layer_norm_eps=1e-6,
        norm_pix_loss=norm_pix_loss,
    )
    return VideoMAEForPreTraining(cfg)


def step_gflops(step) -> float:
    """GFLOPs (multiply-adds count 2) that one call of `step` (forward, backward, optimizer) runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON output path")
    a = ap.parse_args(argv)

    torch.manual_seed(0)
    dev = torch.device(a.device)
    clip = DataConfig(num_frames=a.frames, input_size=a.input_size)
    hf = hf_model(a.size, a.frames, a.input_size, True).to(dev)
    ours = create_model(a.size, clip).to(dev)
    load_hf_state_dict(ours, hf.state_dict())  # same weights: the first losses must agree
    ours.decoder_norm.eps = hf.decoder.norm.eps
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(a.batch, 3, a.frames, a.input_size, a.input_size, generator=gen).to(dev)
    mask = tube_mask(a.batch, ours.grid, a.ratio, gen).to(dev)
    hf_video = video.transpose(1, 2).contiguous()  # HF takes (B, T, C, H, W)

    def autocast():
        if a.precision == "bf16":
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def make_step(model: torch.nn.Module, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)

        def step() -> float:
            with autocast():
                loss = loss_fn(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return loss.item()

        return step

    runs = {
        "ours": make_step(ours, lambda m: m(video, mask)[0]),
        "hf_transformers": make_step(hf, lambda m: m(hf_video, bool_masked_pos=mask).loss),
    }
    first = {name: fn() for name, fn in runs.items()}  # also a warmup step each
    # FLOPs of one forward+backward: the speedup a model can get at equal kernel efficiency is HF's over ours.
    gflops = {name: step_gflops(fn) for name, fn in runs.items()}
    if a.compile:
        comp = create_model(a.size, clip).to(dev)
        comp.load_state_dict(ours.state_dict())
        comp.compile()
        runs["ours_compiled"] = make_step(comp, lambda m: m(video, mask)[0])
        first["ours_compiled"] = runs["ours_compiled"]()
    for fn in runs.values():
        for _ in range(a.warmup - 1):
            fn()

    # Wall time is what users get; process CPU time (all threads) is steadier when other jobs share the cores.
    # paired: per round, HF's mean step over ours, so that load drifting between rounds cancels out.
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

    hf_ms = statistics.median(times["hf_transformers"]) * 1e3
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
                "first_loss": first[name],
                "ms_per_step": ms,
                "min_ms": min(ts) * 1e3,
                "cpu_s": statistics.median(cpu[name]),
                "clips_per_s": a.batch / ms * 1e3,
                "speedup_vs_hf": hf_ms / ms,
                "paired_speedup": statistics.median(
                    h / o for h, o in zip(per_round["hf_transformers"], per_round[name], strict=True)
                ),
                "cpu_speedup_vs_hf": hf_cpu / statistics.median(cpu[name]),
                "gflop_per_step": gflops.get(name, float("nan")),
                "flop_ceiling_vs_hf": gflops["hf_transformers"] / gflops.get(name, float("nan")),
            }
        )
    meta = {
        "frames": a.frames,
        "input_size": a.input_size,
        "mask_ratio": a.ratio,
        "rounds": a.rounds,
        "steps_per_round": a.steps,
        "optimizer": "torch.optim.AdamW(fused=True)",
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    emit("bench_step", rows, out=a.out, meta=meta)
    return {"rows": rows, "meta": meta}


if __name__ == "__main__":
    main()
