"""Fine-tuning: labels checked against the head, the recipe's parts (RandAugment per clip, layer-wise lr decay,
erasing and mixup through every frame), exact resume of a fine-tuning run, a tiny run that learns its labels, and
finetune.py's --eval-only and --probe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fakes import KillAt
from _ft_data import CLASSES, labelled_clips, tiny_config

import finetune
from mgm import checkpoint as ckpt
from mgm.config import FinetuneConfig
from mgm.labels import read_labelled_list
from mgm.prep.filelist import FileListError


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_clips(tmp_path_factory.mktemp("ftclips"), num=16, seed=0)


def test_labels_missing_or_outside_the_head_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "val.csv"
    bad.write_text("path,label,num_frames\na.mp4,3,16\nb.mp4,,16\nc.mp4,4,16\nd.mp4,-1,16\ne.mp4,x,16\n")
    with pytest.raises(FileListError) as e:
        read_labelled_list(bad, 4)
    msg = str(e.value)
    assert str(bad) in msg and "4 row(s)" in msg and "model.num_classes=4" in msg
    assert "line 3: label missing" in msg and "line 4: label 4 not in 0..3 (c.mp4)" in msg
    assert "line 5: label -1" in msg and "line 6: label 'x'" in msg
    ok = tmp_path / "ok.csv"
    ok.write_text("path,label,num_frames\na.mp4,3,16\n")
    assert [e.label for e in read_labelled_list(ok, 4)] == [3]
    with pytest.raises(FileListError, match="model.num_classes=0: set the number of classes"):
        read_labelled_list(bad, 0)


def test_finetune_cli_stops_on_a_bad_label_before_loading_anything(clips: Path, tmp_path: Path, capsys) -> None:
    val = tmp_path / "val.csv"
    val.write_text(clips.read_text().replace(",3,16", ",7,16"))  # label 7 with model.num_classes=4
    rc = finetune.main(["--cfg", "configs/demo_ft.yaml", f"data.train_list={clips}", f"finetune.val_list={val}",
                        "model.num_classes=4", f"train.out_dir={tmp_path}"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and str(val) in err and "label 7 not in 0..3" in err
    assert not (tmp_path / "config.yaml").exists()


def test_finetune_cli_names_an_unusable_init_checkpoint_and_exits_2(clips: Path, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "released.pth"
    junk.write_bytes(b"\x80\x02not a pickle")
    rc = finetune.main(["--cfg", "configs/demo_ft.yaml", *_tiny_args(clips, tmp_path / "run"), f"model.init={junk}"])
    err = capsys.readouterr().err
    assert rc == 2 and str(junk) in err and "Traceback" not in err


def test_clip_rand_augment_is_one_draw_for_every_frame() -> None:
    from dali_pipes.augment import ClipRandAugment, magnitude_bin

    assert magnitude_bin(7) == 21 and magnitude_bin(10) == 30
    aug = ClipRandAugment(4, 7)
    frame = torch.randint(0, 256, (3, 1, 24, 24), dtype=torch.uint8)
    clip = frame.repeat(1, 6, 1, 1)  # (3, T, S, S): six identical frames
    outs = [aug(clip.clone(), seed) for seed in range(8)]
    for out in outs:
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(6))  # the same op and magnitude on every frame
    assert torch.equal(outs[3], aug(clip.clone(), 3))  # a seed gives the same draw again (resume, any worker)
    assert len({o.float().sum().item() for o in outs}) > 4  # and seeds draw different ops
    before = torch.get_rng_state()
    aug(clip, 11)
    assert torch.equal(before, torch.get_rng_state())  # the caller's RNG is left alone


def test_layer_decay_follows_videomae() -> None:
    from mgm.classifier import VideoMAEClassifier
    from mgm.config import DataConfig, ModelConfig
    from mgm.finetune import layer_decay_groups

    model = VideoMAEClassifier(ModelConfig(size="tiny", num_classes=3), DataConfig(num_frames=4, input_size=32))
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in layer_decay_groups(model, 0.05, 0.75)
             for p in g["params"]}  # fmt: skip
    depth = 4  # tiny: VideoMAE's scale for layer id i of depth + 2 ids is 0.75 ** (depth + 1 - i)
    assert scale["patch_embed.proj.weight"] == (pytest.approx(0.75 ** (depth + 1)), 0.05)
    assert scale["blocks.0.attn.qkv.weight"] == (pytest.approx(0.75**depth), 0.05)
    assert scale["blocks.3.norm1.weight"] == (pytest.approx(0.75), 0.0)
    assert scale["head.weight"] == (1.0, 0.05) and scale["fc_norm.bias"] == (1.0, 0.0)
    assert len(scale) == len(list(model.parameters()))


def test_erasing_and_cutmix_cut_through_every_frame() -> None:
    from mgm.finetune import ClassificationLoss

    seen: dict[str, torch.Tensor] = {}

    def net(video: torch.Tensor) -> torch.Tensor:  # records what the model would see; logits all zero
        seen["video"] = video.detach().clone()
        return torch.zeros(video.shape[0], 3, requires_grad=True)

    video = torch.ones(4, 3, 6, 16, 16)
    batch = {"video": video.clone(), "label": torch.tensor([0, 1, 2, 0])}
    ft = FinetuneConfig(reprob=1.0, mixup=0.0, cutmix=0.0, label_smoothing=0.0)
    torch.manual_seed(0)
    ClassificationLoss(ft, 3, torch.device("cpu"))(net, batch, torch.device("cpu"))
    changed = seen["video"] != video  # (B, 3, T, H, W)
    for b in range(4):
        assert changed[b].any()  # reprob 1: every clip has a box ...
        assert torch.equal(changed[b, :, 0], changed[b, :, -1])  # ... at the same place in every frame

    np.random.seed(0)
    ft = FinetuneConfig(reprob=0.0, mixup=0.0, cutmix=1.0, label_smoothing=0.1)
    loss_fn = ClassificationLoss(ft, 3, torch.device("cpu"))
    clips = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 6, 16, 16).clone()
    loss = loss_fn(net, {"video": clips.clone(), "label": torch.tensor([0, 1, 2, 0])}, torch.device("cpu"))
    mixed = seen["video"]
    assert torch.isfinite(loss)
    assert torch.equal(mixed[0, :, 0], mixed[0, :, 5]) and not torch.equal(mixed[0], clips[0])  # one box, all frames
    with pytest.raises(ValueError, match="must be even"):
        loss_fn(net, {"video": clips[:3].clone(), "label": torch.tensor([0, 1, 2])}, torch.device("cpu"))


def _finetune(cfg: Any, hook: Any = None, seed: int = 0) -> torch.nn.Module:
    """finetune.py's training part: loader with labels, the recipe's loss, layer-decay groups, engine.fit."""
    from dali_pipes import build_loader
    from mgm.engine import fit, seed_everything
    from mgm.finetune import ClassificationLoss, layer_decay_groups, load_classifier

    seed_everything(seed)  # python's RNG too: timm's random erasing draws from it
    model = load_classifier(cfg, say=lambda _m: None)
    dev = torch.device("cpu")
    groups = layer_decay_groups(model, cfg.optim.weight_decay, cfg.finetune.layer_decay)
    loss_fn = ClassificationLoss(cfg.finetune, cfg.model.num_classes, dev)
    fit(model, build_loader(cfg, task="finetune"), cfg.optim, cfg.train, batch_size=cfg.data.batch_size, hook=hook,
        loss_fn=loss_fn, groups=groups, log=lambda _m: None)  # fmt: skip
    return model


def test_killed_and_resumed_finetune_ends_with_the_same_weights(clips: Path, tmp_path: Path) -> None:
    # Every random part on: RandAugment (per sample, in the loader), erasing and mixup (numpy / torch global RNG),
    # drop path; 8 clips in batches of 4: 2 steps per epoch, killed inside the second epoch.
    subset = tmp_path / "eight.csv"
    subset.write_text("\n".join(clips.read_text().splitlines()[:9]).replace("videos/", f"{clips.parent}/videos/"))
    recipe = ["model.drop_path=0.2", "train.epochs=2", "train.ckpt_every=1", "data.flip=true"]
    full = _finetune(tiny_config(subset, subset, tmp_path / "full", *recipe))
    run = tiny_config(subset, subset, tmp_path / "killed", *recipe)
    with pytest.raises(KeyboardInterrupt):
        _finetune(run, hook=KillAt(3))
    assert ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")[-1].name == "step_00000003.pt"
    resumed = _finetune(tiny_config(subset, subset, tmp_path / "killed", *recipe, "train.resume=auto"), seed=7)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    groups = ckpt.load(ckpt.list_checkpoints(tmp_path / "full" / "checkpoints")[-1])["optimizer"]["param_groups"]
    lrs = {round(g["lr_scale"], 6): g["lr"] for g in groups}
    assert lrs[1.0] > 0 and lrs[0.75] == pytest.approx(0.75 * lrs[1.0])  # layer-wise decay reached the optimizer


def test_a_tiny_finetune_learns_its_labels_then_eval_only_and_probe(clips: Path, tmp_path: Path) -> None:
    # 16 clips, 4 directions (chance 25%), from scratch: the loop must fit them (held-out accuracy of a from-scratch
    # ViT on 16 clips is the masking experiment's question, not a unit test's: profiling/exp_masking.py).
    out = tmp_path / "run"
    args = ["--cfg", "configs/demo_ft.yaml", *_tiny_args(clips, out), "train.epochs=40", "optim.base_lr=0.064",
            "optim.warmup_epochs=2", "finetune.rand_augment=", "finetune.mixup=0", "finetune.cutmix=0",
            "finetune.reprob=0", "finetune.crop=multiscale", "model.drop_path=0",
            "finetune.layer_decay=1.0"]  # fmt: skip
    assert finetune.main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["videos"] == 16 and result["excluded"] == 0
    assert result["top1"] >= 0.6, result  # chance is 0.25
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 17 and rows[0].startswith("path,label,pred")

    (out / "eval.json").unlink()
    assert finetune.main([*args, "--eval-only"]) == 0  # the newest fine-tuned checkpoint, evaluated again
    assert json.loads((out / "eval.json").read_text())["top1"] == result["top1"]

    ckpt_path = ckpt.list_checkpoints(out / "checkpoints")[-1]
    probe_args = ["--cfg", "configs/demo_ft.yaml", *_tiny_args(clips, tmp_path / "probe"), f"model.init={ckpt_path}",
                  "finetune.probe_epochs=30"]  # fmt: skip
    assert finetune.main([*probe_args, "--probe"]) == 0
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["videos"] == probe["train_videos"] == 16 and probe["train_top1"] >= 0.6
    cached = tmp_path / "probe" / "probe" / "val_features.pt"
    stamp = cached.stat().st_mtime_ns
    assert finetune.main([*probe_args, "--probe"]) == 0
    assert cached.stat().st_mtime_ns == stamp  # the features were read back, not computed again
    assert json.loads((tmp_path / "probe" / "probe.json").read_text()) == probe


def _tiny_args(clips: Path, out: Path) -> list[str]:
    from _ft_data import TINY

    return [*TINY, f"data.train_list={clips}", f"finetune.val_list={clips}", f"train.out_dir={out}",
            f"model.num_classes={CLASSES}"]  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs nvidia-dali")
def test_dali_rand_augment_is_one_draw_for_every_frame(synth_clips: dict[str, Path], tmp_path: Path) -> None:
    # The static clip's frames are (nearly) identical, so after the same op they stay so; per-frame ops would not.
    from dali_pipes import build_loader

    static = synth_clips["static"]
    lst = tmp_path / "static.csv"
    lst.write_text("path,label,num_frames\n" + "".join(f"{static},4,60\n" for _ in range(4)))
    common = [f"data.train_list={lst}", "data.loader=dali", "data.dali_device=cpu", "data.num_workers=1",
              "data.batch_size=4", "data.num_frames=6", "data.input_size=64", "model.num_classes=5",
              "mask.ratio=0.5"]  # fmt: skip

    def clips(*more: str) -> torch.Tensor:
        loader = build_loader(tiny_config(lst, lst, tmp_path, *common, *more), task="finetune")
        batch = next(iter(loader))
        loader.close()
        return batch["video"]  # (B, 3, T, S, S)

    plain, aug = clips("finetune.rand_augment="), clips("finetune.rand_augment=rand-m9-n2")
    frame_change = (aug - aug[:, :, :1]).abs().mean((1, 3, 4)).max()  # frame t vs frame 0, worst clip and frame
    plain_change = (plain - plain[:, :, :1]).abs().mean((1, 3, 4)).max()
    by_aug = (aug - plain).abs().mean((1, 2, 3, 4))  # (B,) how much each clip was changed
    assert by_aug.max() > 5 * max(float(frame_change), 0.01)  # the clips were augmented ...
    assert frame_change < plain_change + 0.05  # ... and every frame alike
