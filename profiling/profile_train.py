"""Where does a training job spend its time? Runs N steps of any config through the trainer's own engine and
loader, with the profiling hook, and prints the breakdown (data wait vs mask vs compute, as shares of wall
time) and the verdict: input-bound or compute-bound, and by how much.

    python profiling/profile_train.py --cfg configs/demo.yaml --steps 30
    python profiling/profile_train.py --cfg configs/ssv2_vitb.yaml --steps 200 data.batch_size=16 \
        profiling.trace_steps=[50,53]

Writes into --out (default <train.out_dir>/profile): profile.jsonl (one record per interval + the summary),
profile_train.json (the shared bench format: rows = intervals, meta = summary; `profiling/report.py` plots
it) and, with profiling.trace_steps, a Chrome trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from profiling.hooks import ProfileHook  # noqa: E402
from profiling.report_format import format_table, machine_info, write_json  # noqa: E402

# Columns of the per-interval table (the JSON keeps every field).
TABLE_COLS = ("first_step", "last_step", "warmup", "clips_per_s", "frames_per_s", "step_ms", "data_wait_share",
              "compute_share", "mask_share", "gpu_util", "dec_util", "mem_used_mb", "power_w")  # fmt: skip


def flat_row(rec: dict[str, Any]) -> dict[str, Any]:
    """An interval record with its nested gpu/phase dicts flattened into columns (gpu_util, phase_forward_s, ...)."""
    row = {k: v for k, v in rec.items() if not isinstance(v, dict)}
    row.update(rec.get("gpu") or {})
    row.update({f"phase_{k}_s": v for k, v in (rec.get("phases_s") or {}).items()})
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", required=True, help="YAML config (same as train.py)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps to run (default 30)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the summary (start-up)")
    ap.add_argument("--interval", type=int, default=0, help="steps per record (default: about steps/10)")
    ap.add_argument("--out", default=None, help="output folder (default <train.out_dir>/profile)")
    ap.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint the engine writes at the end")
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import torch

    from dali_pipes import build_loader
    from mgm.config import load_config, save_config
    from mgm.engine import fit, resolve_device
    from mgm.model import model_from_config

    cfg = load_config(a.cfg, a.overrides)
    if not Path(cfg.data.train_list).is_file():
        sys.exit(
            f"profile_train: data.train_list {cfg.data.train_list} does not exist "
            f"(for the demo: mgm-prepare synth --out data/synth --num 32 --seed 0)"
        )
    out = Path(a.out or Path(cfg.train.out_dir) / "profile")
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.jsonl").unlink(missing_ok=True)  # one run per folder: report.py reads it whole
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)

    t0 = time.perf_counter()
    loader = build_loader(cfg, device=str(device))
    model = model_from_config(cfg)
    setup_s = time.perf_counter() - t0
    # Enough epochs for N steps; the LR schedule does not matter for timing.
    epochs = max(cfg.train.epochs, math.ceil(a.steps / max(len(loader) // cfg.optim.accum_steps, 1)))
    train = dataclasses.replace(
        cfg.train,
        out_dir=str(out),
        epochs=epochs,
        max_steps=a.steps,
        ckpt_every=10**9,  # the engine still saves once at the end, after the last timed step
        log_every=max(a.steps, 1),
        tensorboard=False,
        progress=False,
        resume="",  # a fresh timed run, whatever the config says
    )
    p = cfg.profiling
    interval = a.interval or max(1, min(p.interval, a.steps // 10))
    hook = ProfileHook(
        out_dir=out,
        interval=interval,
        device=str(device),
        nvml=p.nvml,
        nvtx=p.nvtx,
        trace_steps=tuple(p.trace_steps),
        warmup=a.warmup,
        name=Path(a.cfg).stem,
        verbose=False,
    )
    print(f"[profile_train] {a.cfg}: {a.steps} steps, loader {loader.stats.get('loader', '?')}, "
          f"model {cfg.model.size}, batch {cfg.data.batch_size}, device {device}", flush=True)  # fmt: skip
    try:
        result = fit(model, loader, cfg.optim, train, batch_size=cfg.data.batch_size, hook=hook, device=device,
                     log=lambda s: print(s, flush=True))  # fmt: skip
    finally:
        summary = hook.close()
        with_close = getattr(loader, "close", None)
        if callable(with_close):
            with_close()
    if not a.keep_checkpoint:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)

    rows = [flat_row(r) for r in hook.records]
    stats = {k: v for k, v in loader.stats.items() if k != "bad_videos"}
    meta = {"config": a.cfg, "overrides": a.overrides, "summary": summary, "loader_stats": stats,
            "setup_s": setup_s, "engine": result, "device": str(device)}  # fmt: skip
    path = write_json("profile_train", rows, out / "profile_train.json", meta)
    mi = machine_info()
    table = [{c: r[c] for c in TABLE_COLS if c in r} for r in rows]
    print(format_table(table, title=f"== intervals ({mi['cpu']}, {mi['cores']} cores, {mi['gpu'] or 'no GPU'})"))
    print(f"loader: {stats}")
    print(ProfileHook.format_summary(summary), flush=True)
    print(f"wrote {path} and {out / 'profile.jsonl'}" + (f" and {summary['trace']}" if summary["trace"] else ""))
    return summary


if __name__ == "__main__":
    main()
