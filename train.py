"""Pretrain VideoMAE with motion-guided masking.

    python train.py --cfg configs/ssv2_vitb.yaml [section.key=value ...] [--section.key value ...]
    python train.py --cfg configs/demo.yaml --resume auto
    torchrun --nproc_per_node 8 train.py --cfg configs/ssv2_vitb.yaml

Reads top to bottom: config -> process group and device -> loader -> model -> profiling hook -> engine.fit.
Outputs go to train.out_dir: config.yaml (the resolved config), checkpoints/, log.jsonl, tb/ (TensorBoard),
profile.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mgm.config import ConfigError, load_config, save_config


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", required=True, help="YAML config, e.g. configs/ssv2_vitb.yaml")
    ap.add_argument("--resume", default=None, help='checkpoint file or folder, or "auto" (newest in out_dir)')
    args, rest = ap.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):  # `--data.batch_size 8` and `data.batch_size=8` mean the same
        tok = rest[i]
        if tok.startswith("--") and "=" not in tok and i + 1 < len(rest):
            overrides.append(f"{tok[2:]}={rest[i + 1]}")
            i += 2
        else:
            overrides.append(tok[2:] if tok.startswith("--") else tok)
            i += 1
    if args.resume is not None:
        overrides.append(f"train.resume={args.resume}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.cfg, overrides)
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return 2
    if not Path(cfg.data.train_list).is_file():
        print(
            f"train.py: data.train_list {cfg.data.train_list} does not exist. Prepare the data first:\n"
            "  demo:        mgm-prepare synth --out data/synth --num 32\n"
            "  SSv2 / K400: mgm-prepare lists ... && mgm-prepare transcode ... && mgm-prepare motion ... "
            "(README, 'Preparing real datasets')",
            file=sys.stderr,
        )
        return 2

    # Heavy imports after the cheap checks: a typo in a key should not wait for torch and DALI.
    from dali_pipes import build_loader
    from mgm.checkpoint import CheckpointError
    from mgm.engine import NonFiniteLossError, fit, resolve_device, seed_everything, setup_distributed
    from mgm.model import model_from_config
    from profiling.hooks import hook_from_config

    dist = setup_distributed(cfg.dist.backend)
    device = resolve_device(cfg.train.device, dist)
    out_dir = Path(cfg.train.out_dir)
    if dist.is_main:
        save_config(cfg, out_dir / "config.yaml")
    seed_everything(cfg.train.seed + dist.rank)

    loader = build_loader(cfg, rank=dist.rank, world_size=dist.world_size, device=str(device))
    model = model_from_config(cfg)
    hook = hook_from_config(cfg, out_dir if dist.is_main else None, str(device))
    if dist.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"[train] {cfg.model.size} VideoMAE, {n_params / 1e6:.1f}M parameters; {cfg.mask.name} masking at "
              f"ratio {cfg.mask.ratio} ({cfg.derived.num_masked}/{cfg.derived.num_tokens} tokens); "
              f"{len(loader)} batches of {cfg.data.batch_size} per epoch; outputs in {out_dir}")  # fmt: skip
    try:
        summary = fit(model, loader, cfg.optim, cfg.train, batch_size=cfg.data.batch_size, hook=hook, dist=dist,
                      device=device)  # fmt: skip
    except NonFiniteLossError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:  # train.resume names a file that is not a usable checkpoint of this model
        print(f"train.py: cannot resume (train.resume={cfg.train.resume}): {e}", file=sys.stderr)
        return 2
    finally:
        if hook is not None:
            hook.close()
    if dist.is_main:
        stats = getattr(loader, "stats", {})
        print(
            f"[train] done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}, "
            f"{summary['bad_loss']} non-finite losses skipped, loader {stats}"
        )
        print(f"[train] checkpoint {summary['checkpoint']}; config, logs and profile in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
