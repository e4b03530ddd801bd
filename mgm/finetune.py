"""VideoMAE's fine-tuning recipe, from maintained parts: the classifier and where its weights come from, layer-wise
lr decay groups (timm), and the classification loss `engine.fit` runs per micro-batch (timm's Mixup / CutMix with
label smoothing, soft-target cross-entropy, random erasing).

The loader does the per-clip augmentation (random views, RandAugment: dali_pipes); this module does what needs
the whole batch on the device. Video clips (B, 3, T, H, W) are seen as (B, 3T, H, W) images by timm's batch ops,
so an erased box or a cutmix box cuts through every frame at the same place, as VideoMAE's video variants do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgm import checkpoint as ckpt
from mgm.classifier import VideoMAEClassifier
from mgm.config import Config, FinetuneConfig
from mgm.contracts import Batch


def load_classifier(
    cfg: Config, path: str = "", say: Callable[[str], None] = print, *, strict: bool = False
) -> VideoMAEClassifier:
    """The classifier cfg.model / cfg.data describe, with the weights of `path` (default model.init):

    - "": from scratch (VideoMAE's init; no pretraining);
    - any checkpoint mgm.convert reads: ours (pretraining: its encoder, a fresh fc_norm and head; fine-tuned:
      everything), VideoMAE / VideoMAE V2 .pth, Hugging Face folders, .safetensors.
    strict: every tensor, the head included, must come from the checkpoint (evaluating a fine-tuned model). A
    checkpoint that does not fit the config raises mgm.checkpoint.CheckpointMismatch naming the tensors.
    """
    from mgm.convert import classifier_from_file

    path = path or cfg.model.init
    if not path:
        say("[finetune] model.init is empty: the encoder starts from random weights (no pretraining)")
        return VideoMAEClassifier(cfg.model, cfg.data)
    model, report = classifier_from_file(path, cfg.model, cfg.data, strict=strict)
    say(f"[finetune] {report.summary()}")
    return model


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with VideoMAE's layer-wise lr decay (timm.optim.param_groups_layer_decay): the head and
    fc_norm at scale 1, block i of L at layer_decay^(L - i), the patch embedding at layer_decay^(L + 1); no weight
    decay on 1-D tensors (norms, biases). Each group's "lr_scale" multiplies the scheduled lr in engine.fit."""
    from timm.optim import param_groups_layer_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)


class ClassificationLoss:
    """`loss_fn` for engine.fit: random erasing, then mixup / cutmix, then the classifier's cross-entropy.

    ft: the recipe (finetune.reprob, mixup, cutmix, mixup_prob, mixup_switch_prob, label_smoothing). With mixup or
    cutmix on, targets become soft (label smoothing folded in) and the loss is timm's SoftTargetCrossEntropy;
    otherwise LabelSmoothingCrossEntropy (or plain cross-entropy at smoothing 0). Randomness comes from numpy's
    and torch's global generators, which checkpoints restore, so a resumed run draws the same boxes and mixes.
    """

    def __init__(self, ft: FinetuneConfig, num_classes: int, device: torch.device) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.erase = RandomErasing(ft.reprob, mode="pixel", max_count=1, device=str(device)) if ft.reprob > 0 else None
        self.mixup = None
        if ft.mixup > 0 or ft.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                               switch_prob=ft.mixup_switch_prob, mode="batch", label_smoothing=ft.label_smoothing,
                               num_classes=num_classes)  # fmt: skip
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif ft.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=ft.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def __call__(self, net: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
        """Scalar loss of one micro-batch: video (B, 3, T, H, W), label (B,) int64 class ids."""
        video = batch["video"].to(device, non_blocking=True)
        target = batch["label"].to(device, non_blocking=True)
        b, c, t, h, w = video.shape
        frames = video.reshape(b, c * t, h, w)  # every frame's channels as one image: boxes cut through all frames
        if self.erase is not None:
            frames = self.erase(frames)
        if self.mixup is not None:
            if b % 2:
                raise ValueError(f"mixup / cutmix pair the clips of a batch: data.batch_size={b} must be even")
            frames, target = self.mixup(frames, target)
        return self.criterion(net(frames.view(b, c, t, h, w)).float(), target)


def newest_checkpoint(out_dir: str | Path) -> Path:
    """The newest step_*.pt of a fine-tuning run's out_dir/checkpoints (what --eval-only evaluates by default)."""
    files = ckpt.list_checkpoints(Path(out_dir) / "checkpoints")
    if not files:
        raise FileNotFoundError(f"no fine-tuned checkpoint in {Path(out_dir) / 'checkpoints'}: train first, or "
                                "name one: --eval-only path/to/step_N.pt")  # fmt: skip
    return files[-1]
