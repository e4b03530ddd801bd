"""Fine-tune a pretrained VideoMAE encoder as a video classifier, evaluate it over multiple views, or linear-probe it.

    python finetune.py --cfg configs/ssv2_vitb_ft.yaml model.init=runs/ssv2_vitb_mgm/checkpoints/step_N.pt
    python finetune.py --cfg configs/ssv2_vitb_ft.yaml --eval-only [runs/ssv2_vitb_ft/checkpoints/step_N.pt]
    python finetune.py --cfg configs/ssv2_vitb_ft.yaml --probe model.init=runs/ssv2_vitb_mgm/checkpoints/step_N.pt
    torchrun --nproc_per_node 8 finetune.py --cfg configs/ssv2_vitb_ft.yaml model.init=...

Reads top to bottom: config and label lists checked -> process group and device -> classifier from model.init ->
fine-tune (loader with labels and random views, the recipe's loss, layer-wise lr decay, engine.fit: bf16, DDP,
checkpoints, exact resume, logs, profiling) -> multi-view evaluation on finetune.val_list. --eval-only skips the
training (default checkpoint: the newest in train.out_dir/checkpoints); --probe trains a linear classifier on
frozen features instead. Outputs in train.out_dir: config.yaml, checkpoints/, log.jsonl, tb/, predictions.csv,
eval.json (probe.json and probe/ features for --probe).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import train
from mgm.config import Config, ConfigError, load_config, save_config
from mgm.labels import read_labelled_list
from mgm.prep.filelist import FileListError


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """--eval-only [CKPT] and --probe here; --cfg, --resume and the key=value overrides as train.py reads them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        sys.exit(0)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--eval-only", nargs="?", const="auto", default=None)
    ap.add_argument("--probe", action="store_true")
    mine, rest = ap.parse_known_args(argv)
    if mine.eval_only and "=" in mine.eval_only:  # `--eval-only model.init=...`: an override, not a checkpoint
        rest, mine.eval_only = [*rest, mine.eval_only], "auto"
    args, overrides = train.parse_args(rest)
    args.eval_only, args.probe = mine.eval_only, mine.probe
    return args, overrides


def check_lists(cfg: Config, args: argparse.Namespace) -> None:
    """Every list this run reads exists and labels only classes of the head (model.num_classes)."""
    needed = [] if args.eval_only else [("data.train_list", cfg.data.train_list)]
    needed += [("finetune.val_list", cfg.finetune.val_list)] if cfg.finetune.val_list else []
    if (args.eval_only or args.probe) and not cfg.finetune.val_list:
        raise FileListError("finetune.val_list is empty: --eval-only and --probe evaluate on it")
    if args.probe and args.eval_only:
        raise FileListError("--probe and --eval-only: choose one")
    for key, path in needed:
        if not Path(path).is_file():
            raise FileListError(f"{key} {path} does not exist (README, 'Fine-tune and evaluate')")
        read_labelled_list(path, cfg.model.num_classes)


def run_eval(cfg: Config, model: object, build_loader: Callable, dist: object, device: object) -> dict[str, Any]:
    """Multi-view evaluation of `model` on finetune.val_list (finetune.test_clips x test_crops views per video)."""
    from mgm.engine import _autocast
    from mgm.evaluate import evaluate_views, summary_line

    loader = build_loader(cfg, rank=dist.rank, world_size=dist.world_size, device=str(device), task="eval")
    csv_path = Path(cfg.train.out_dir) / "predictions.csv" if dist.is_main else None
    result = evaluate_views(model, loader, num_classes=cfg.model.num_classes, world_size=dist.world_size,
                            device=device, amp=_autocast(device, cfg.train.precision), csv_path=csv_path)  # fmt: skip
    result["views"] = f"{cfg.finetune.test_clips}x{cfg.finetune.test_crops}"
    result["summary"] = f"{summary_line(result)} ({result['views']} views each)"
    return result


def run_probe(cfg: Config, build_loader: Callable, dist: object, device: object, say: Callable) -> dict[str, Any]:
    """Linear probe: frozen features of data.train_list and finetune.val_list (cached in out_dir/probe, keyed by
    the checkpoint, the list and the views), a linear classifier trained on the first, measured on the second."""
    from mgm.engine import _autocast
    from mgm.finetune import load_classifier
    from mgm.probe import cached_features, file_key, split_features, train_probe

    model = load_classifier(cfg, say=say).to(device)
    amp, ft, d = _autocast(device, cfg.train.precision), cfg.finetune, cfg.data
    feats = {}
    for split, list_path in (("train", d.train_list), ("val", ft.val_list)):
        key = {"init": file_key(cfg.model.init) if cfg.model.init else "random", "list": file_key(list_path),
               "clip": [d.num_frames, d.stride, d.input_size, ft.temporal], "views": [ft.test_clips, ft.test_crops],
               "mean_std": [*d.mean, *d.std]}  # fmt: skip

        def compute(list_path: str = list_path) -> Any:
            loader = build_loader(cfg, rank=dist.rank, world_size=dist.world_size, device=str(device), task="eval",
                                  list_path=list_path)  # fmt: skip
            return split_features(model, loader, world_size=dist.world_size, device=device, amp=amp)

        cache = Path(cfg.train.out_dir) / "probe" / f"{split}_features.pt"
        feats[split] = cached_features(cache, key, compute, write=dist.is_main, say=say)
    result = train_probe(feats["train"], feats["val"], cfg.model.num_classes, epochs=ft.probe_epochs,
                         lr=ft.probe_lr, batch_size=ft.probe_batch_size, seed=cfg.train.seed)  # fmt: skip
    if dist.is_main:
        (Path(cfg.train.out_dir) / "probe.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.cfg, overrides)
        check_lists(cfg, args)
    except (ConfigError, FileListError) as e:
        print(f"finetune.py: {e}", file=sys.stderr)
        return 2
    from mgm.checkpoint import CheckpointError

    try:
        return run(cfg, args)
    except CheckpointError as e:  # model.init, --eval-only or train.resume names an unusable checkpoint
        print(f"finetune.py: {e}", file=sys.stderr)
        return 2


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Fine-tune, evaluate or probe as `args` says, with a checked `cfg`; 0 on success, 1 on a diverged run."""
    # Heavy imports after the cheap checks.
    from dali_pipes import build_loader
    from mgm.engine import NonFiniteLossError, fit, resolve_device, seed_everything, setup_distributed
    from mgm.finetune import ClassificationLoss, layer_decay_groups, load_classifier, newest_checkpoint
    from profiling.hooks import hook_from_config

    dist = setup_distributed(cfg.dist.backend)
    device = resolve_device(cfg.train.device, dist)
    out_dir = Path(cfg.train.out_dir)
    say = print if dist.is_main else (lambda _m: None)
    if dist.is_main:
        save_config(cfg, out_dir / "config.yaml")
    seed_everything(cfg.train.seed + dist.rank)

    if args.probe:
        result = run_probe(cfg, build_loader, dist, device, say)
        say(f"[probe] top-1 {100 * result['top1']:.2f}% on {result['videos']} videos (train split "
            f"{100 * result['train_top1']:.2f}%); {out_dir / 'probe.json'}")  # fmt: skip
        return 0

    weights = ""
    if args.eval_only:
        weights = str(newest_checkpoint(out_dir) if args.eval_only == "auto" else args.eval_only)
    model = load_classifier(cfg, weights, say=say, strict=bool(args.eval_only))
    if not args.eval_only:
        loader = build_loader(cfg, rank=dist.rank, world_size=dist.world_size, device=str(device), task="finetune")
        hook = hook_from_config(cfg, out_dir if dist.is_main else None, str(device))
        say(f"[finetune] {cfg.model.size} classifier, {cfg.model.num_classes} classes, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; {len(loader)} batches of "
            f"{cfg.data.batch_size} per epoch; outputs in {out_dir}")  # fmt: skip
        loss_fn = ClassificationLoss(cfg.finetune, cfg.model.num_classes, device)
        groups = layer_decay_groups(model, cfg.optim.weight_decay, cfg.finetune.layer_decay)
        try:
            summary = fit(model, loader, cfg.optim, cfg.train, batch_size=cfg.data.batch_size, hook=hook, dist=dist,
                          device=device, loss_fn=loss_fn, groups=groups)  # fmt: skip
        except NonFiniteLossError as e:
            print(f"finetune.py: stopped: {e}", file=sys.stderr)
            return 1
        finally:
            if hook is not None:
                hook.close()
        say(f"[finetune] done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
            f"{summary['last_loss']:.4f}; checkpoint {summary['checkpoint']}")  # fmt: skip
    if cfg.finetune.val_list:
        result = run_eval(cfg, model.to(device), build_loader, dist, device)
        if dist.is_main:
            (out_dir / "eval.json").write_text(json.dumps(result, indent=1))
        say(f"[eval] {result['summary']}; predictions in {out_dir / 'predictions.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
