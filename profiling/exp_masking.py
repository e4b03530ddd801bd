"""Does motion-guided masking learn a better video encoder than tube or random masking? A small, honest test.

    python profiling/exp_masking.py --out runs/exp_masking            # ~30 min on 2 shared CPU cores
    python profiling/exp_masking.py --out /tmp/exp --quick            # smoke run, about a minute

Data: synthetic clips (mgm.prep.synth, kind "single": one textured object moving over a textured background)
whose label is the object's direction (right, left, down, up: 4 classes, chance 25%); a training split and a
held-out split made with another seed. 24-frame videos of 96x96 make the object move 3 px per frame (48 frames
would give 1 px); a clip of 8 frames, stride 2, spans 15 of them: the object travels 45 px (30 px at the 64 px
input, two patches), so the direction is plainly in every clip (a centroid-of-change rule gets 95% of the loaded
training clips right). One frame shows where the object is, not where it goes, so the label needs motion; the "one
frame" row measures how far a single frame gets anyway (the object's position carries a little
about its direction: it starts where the whole path fits in the frame).

Per masking (mgm, tube, random) and seed: pretrain a tiny VideoMAE for the same number of steps on the training
split (train.py's loop), then (a) a linear probe on frozen features (centre clip) of the training split, measured on the
held-out split (mgm.probe), and (b) a short fine-tune on the training split, measured on the held-out split over 2 views
(finetune.py's loop). Rows without pretraining (random encoder) and a one-frame control (the middle frame repeated,
no pretraining) say what the pretraining adds and what motion adds. Mean +- std over seeds; a markdown table is
printed and written to <out>/table.md, every number to <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

ROOT = Path(__file__).resolve().parents[1]
MASKS = ("mgm", "tube", "random")
VIDEO_FRAMES = 24  # at 96x96: speed 3 px per frame (synth: min((96 - 19) // frames, 3))
# Clips: 8 frames (stride 2) of 64x64 from 96x96 videos of 24 frames; 16x16 patches: 4 x 4 x 4 = 64 tokens.
CLIP = ["data.num_frames=8", "data.stride=2", "data.input_size=64", "model.size=tiny", "model.patch=16",
        "data.num_workers=1", "data.loader=cpu", "train.device=cpu", "train.progress=false", "train.log_every=25",
        "train.tensorboard=false", "profiling.enabled=false", "train.ckpt_every=100000"]  # fmt: skip


def make_data(out: Path, train: int, held_out: int) -> tuple[Path, Path]:
    """The two splits' file lists (made once; kept clips are reused)."""
    from mgm.prep.synth import make_dataset

    common = {"size": (96, 96), "num_frames": VIDEO_FRAMES, "vp9_twin": False, "kinds": ("single",)}
    return (make_dataset(out / "train", num=train, seed=0, **common),
            make_dataset(out / "held_out", num=held_out, seed=1, **common))  # fmt: skip


def pretrain(mask: str, seed: int, train_list: Path, out: Path, epochs: int) -> Path:
    """A tiny VideoMAE pretrained with `mask` masking (ratio 0.75) on the training split; its last checkpoint."""
    from dali_pipes import build_loader
    from mgm.config import load_config
    from mgm.engine import fit, seed_everything
    from mgm.model import model_from_config

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        *CLIP, f"data.train_list={train_list}", f"mask.name={mask}", "mask.ratio=0.75", f"train.out_dir={out}",
        f"train.epochs={epochs}", f"train.seed={seed}", f"data.seed={seed}", "data.batch_size=16",
        "optim.base_lr=2.4e-2", "optim.warmup_epochs=2",
    ])  # fmt: skip
    seed_everything(seed)
    model = model_from_config(cfg)
    summary = fit(model, build_loader(cfg), cfg.optim, cfg.train, batch_size=cfg.data.batch_size, log=lambda _m: None)
    return Path(summary["checkpoint"])


def ft_config(train_list: Path, held_out: Path, out: Path, seed: int, init: str, epochs: int) -> Any:
    from mgm.config import load_config

    return load_config(ROOT / "configs" / "demo_ft.yaml", [
        *CLIP, f"data.train_list={train_list}", f"finetune.val_list={held_out}", f"train.out_dir={out}",
        f"model.init={init}", "model.num_classes=4", f"train.seed={seed}", f"data.seed={seed}", "mask.ratio=0.75",
        f"train.epochs={epochs}", "data.batch_size=16", "optim.base_lr=8.0e-3", "optim.warmup_epochs=1",
        "model.drop_path=0", "finetune.probe_epochs=200", "finetune.probe_lr=3.0e-3",
        "finetune.rand_augment=", "finetune.mixup=0", "finetune.cutmix=0", "finetune.reprob=0",
        "finetune.crop=multiscale", "finetune.test_clips=2", "finetune.test_crops=1",
    ])  # fmt: skip


class OneFrame(nn.Module):
    """The control: the classifier sees the middle frame repeated T times (no motion, same appearance)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.num_tokens = inner, inner.num_tokens

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        mid = video.shape[2] // 2
        return self.inner(video[:, :, mid : mid + 1].expand_as(video).contiguous())


def probe(cfg: Any) -> dict[str, Any]:
    """Linear probe on frozen features of the encoder in cfg.model.init: top-1 on the held-out split ("top1") and
    on the training split it was fitted on ("train_top1": a probe that cannot fit its own data says so)."""
    from dali_pipes import build_loader
    from dali_pipes.sampler import EvalViews
    from mgm.finetune import load_classifier
    from mgm.probe import split_features, train_probe

    model = load_classifier(cfg, say=lambda _m: None)
    dev = torch.device("cpu")
    one_view = EvalViews(1, 1)  # the centre clip: features are cheap, the probe is a quick signal
    feats = [split_features(model, build_loader(cfg, task="eval", list_path=p, views=one_view), device=dev)
             for p in (cfg.data.train_list, cfg.finetune.val_list)]  # fmt: skip
    ft = cfg.finetune
    return train_probe(*feats, 4, epochs=ft.probe_epochs, lr=ft.probe_lr, seed=cfg.train.seed)


def finetune(cfg: Any, one_frame: bool = False) -> float:
    """Held-out top-1 (2 views per video) after a short fine-tune from cfg.model.init."""
    from dali_pipes import build_loader
    from mgm.engine import fit, seed_everything
    from mgm.evaluate import evaluate_views
    from mgm.finetune import ClassificationLoss, layer_decay_groups, load_classifier

    seed_everything(cfg.train.seed)
    model = load_classifier(cfg, say=lambda _m: None)
    net = OneFrame(model) if one_frame else model
    dev = torch.device("cpu")
    groups = layer_decay_groups(model, cfg.optim.weight_decay, cfg.finetune.layer_decay)
    fit(net, build_loader(cfg, task="finetune"), cfg.optim, cfg.train, batch_size=cfg.data.batch_size,
        loss_fn=ClassificationLoss(cfg.finetune, 4, dev), groups=groups, log=lambda _m: None)  # fmt: skip
    return evaluate_views(net, build_loader(cfg, task="eval"), num_classes=4, device=dev)["top1"]


def stats(xs: list[float]) -> str:
    mean = 100 * statistics.mean(xs)
    return f"{mean:.1f} ± {100 * statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{mean:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/exp_masking")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-clips", type=int, default=384)
    ap.add_argument("--held-out-clips", type=int, default=192)
    ap.add_argument("--pretrain-epochs", type=int, default=24, help="epochs of 24 steps (384 clips, batch 16)")
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch each, 32 + 16 clips")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # torch/DALI deprecation noise; failures still raise
    # One thread: on the shared 2-core machine (load ~5) a training step of this model took 1.7-2.3 s with 2 torch
    # threads (OpenMP threads wait on each other) and 0.18 s with 1; the loader's worker process uses the other core.
    torch.set_num_threads(1)
    out = Path(a.out)
    seeds = range(1 if a.quick else a.seeds)
    pre_epochs, ft_epochs = (1, 1) if a.quick else (a.pretrain_epochs, a.finetune_epochs)
    t0 = time.perf_counter()
    sizes = (32, 16) if a.quick else (a.train_clips, a.held_out_clips)
    train_list, held_out = make_data(out / "data", *sizes)
    loads = [os.getloadavg()[0]]
    print(f"[exp] data ready ({time.perf_counter() - t0:.0f} s); load average {loads[0]:.1f}", flush=True)

    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        inits = {"none (random encoder)": ""}
        for mask in MASKS:
            t = time.perf_counter()
            inits[f"{mask} masking"] = str(pretrain(mask, seed, train_list, out / f"pre_{mask}_{seed}", pre_epochs))
            print(f"[exp] seed {seed}: pretrained with {mask} masking in {time.perf_counter() - t:.0f} s", flush=True)
        for name, init in inits.items():
            cfg = ft_config(train_list, held_out, out / f"ft_{name.split()[0]}_{seed}", seed, init, ft_epochs)
            row = rows.setdefault(name, {"probe": [], "probe_train": [], "finetune": []})
            fitted = probe(cfg)
            row["probe"].append(fitted["top1"])
            row["probe_train"].append(fitted["train_top1"])
            row["finetune"].append(finetune(cfg))
            loads.append(os.getloadavg()[0])
            print(f"[exp] seed {seed} {name}: probe {row['probe'][-1]:.3f} (train split {fitted['train_top1']:.3f}), "
                  f"fine-tune {row['finetune'][-1]:.3f} ({time.perf_counter() - t0:.0f} s so far, load average "
                  f"{loads[-1]:.1f})", flush=True)  # fmt: skip
        cfg = ft_config(train_list, held_out, out / f"ft_oneframe_{seed}", seed, "", ft_epochs)
        control = rows.setdefault("one frame (control, no pretraining)", {"probe": [], "probe_train": [],
                                                                           "finetune": []})  # fmt: skip
        control["finetune"].append(finetune(cfg, one_frame=True))
        print(f"[exp] seed {seed} one frame: fine-tune {control['finetune'][-1]:.3f}", flush=True)

    minutes = (time.perf_counter() - t0) / 60
    lines = ["| pretraining | linear probe top-1 (%) | probe, training split (%) | fine-tune top-1 (%) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {name} | {stats(r['probe']) if r['probe'] else '-'} | "
              f"{stats(r['probe_train']) if r['probe_train'] else '-'} | {stats(r['finetune'])} |"
              for name, r in rows.items()]  # fmt: skip
    loads.append(os.getloadavg()[0])
    held_labels = [int(line.split(",")[1]) for line in held_out.read_text().splitlines()[1:]]
    majority = max(held_labels.count(c) for c in range(4)) / len(held_labels)  # one class always: this top-1
    note = (f"{len(seeds)} seed(s); {sizes[0]} training / {sizes[1]} held-out clips, 4 classes (chance 25%, the "
            f"held-out split's largest class {100 * majority:.1f}%); "
            f"pretraining {pre_epochs * (sizes[0] // 16)} steps, fine-tuning {ft_epochs * (sizes[0] // 16)} steps "
            f"(batch 16); {minutes:.1f} min on {os.cpu_count()} CPU cores, 1-minute load average "
            f"{statistics.mean(loads):.1f} on average ({min(loads):.1f}-{max(loads):.1f})")  # fmt: skip
    table = "\n".join(lines) + f"\n\n{note}\n"
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"rows": rows, "minutes": minutes, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
