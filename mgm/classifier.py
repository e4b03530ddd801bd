"""VideoMAE fine-tuning model: the pretrained encoder over every token, mean pooling, fc_norm, a linear head.

The same network as VideoMAE's `modeling_finetune.VisionTransformer` with use_mean_pooling=True (its fine-tuning
default): no final encoder `norm`; the tokens are averaged, then `fc_norm`, dropout and `head`. The state-dict keys
are that model's, so VideoMAE fine-tuned checkpoints load by name and conversions are renames:

    patch_embed.proj.{weight,bias}                          Conv3d (D, 3, ts, p, p)
    blocks.{i}.norm1 / attn.qkv.weight / attn.q_bias / attn.v_bias / attn.proj / norm2 / mlp.fc1 / mlp.fc2
    fc_norm.{weight,bias}, head.{weight,bias}               head absent when model.num_classes = 0

Positions are the fixed sin-cos table (not a weight, not in the state dict), recomputed for whatever clip shape
data.* asks, so a checkpoint trained on 16 frames loads for 8 frames or another input size unchanged.

Built from the config tree like the pretraining model: `VideoMAEClassifier(cfg.model, cfg.data)`; from one of our
pretraining checkpoints (encoder weights, decoder dropped): `classifier_from_pretrain(state["model"], cfg.model,
cfg.data)`. Blocks, positions and sizes are mgm.model's, so the encoder is the pretraining encoder exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mgm.checkpoint import LoadReport, load_state
from mgm.config import Config, DataConfig, ModelConfig, resolve_compile
from mgm.model import IN_CHANS, NORM_EPS, Block, model_size, sinusoid_table, token_grid

# Keys of our pretraining model that are not the encoder: the decoder, its pixel head, and the encoder's final
# norm, which VideoMAE drops for mean pooling (fc_norm replaces it and starts fresh).
PRETRAIN_ONLY = ("norm.", "encoder_to_decoder.", "mask_token", "decoder_", "head.")


class VideoMAEClassifier(nn.Module):
    """Video classifier: (B, 3, T, H, W) normalized clips -> (B, num_classes) logits (or (B, D) features).

    model: size, tubelet, patch, drop_path (per block, 0 -> model.drop_path linearly), num_classes, head_dropout,
    head_init_scale, grad_checkpointing, compile (mgm.config.ModelConfig); data: the clip shape (num_frames x
    input_size^2).
    """

    def __init__(self, model: ModelConfig, data: DataConfig) -> None:
        super().__init__()
        s = model_size(model)
        self.grid = token_grid(model, data)
        self.num_tokens = math.prod(self.grid)
        self.num_classes, self.dim = model.num_classes, s.dim
        self.grad_checkpointing = model.grad_checkpointing
        kernel = (model.tubelet, model.patch, model.patch)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(IN_CHANS, s.dim, kernel, kernel)
        self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, s.dim), persistent=False)
        rates = torch.linspace(0, model.drop_path, s.depth, device="cpu").tolist()  # cpu: also under a meta device
        self.blocks = nn.ModuleList(Block(s.dim, s.heads, r, s.mlp_ratio) for r in rates)
        self.fc_norm = nn.LayerNorm(s.dim, eps=NORM_EPS)
        self.head_drop = nn.Dropout(model.head_dropout) if model.head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(s.dim, model.num_classes) if model.num_classes > 0 else nn.Identity()
        self._init_weights(model.head_init_scale)
        if resolve_compile(model.compile, "cuda" if torch.cuda.is_available() else "cpu"):
            self.compile()  # in place, lazily on the first call, as the pretraining model: state_dict keys unchanged

    def _init_weights(self, head_scale: float) -> None:
        """VideoMAE's fine-tuning init: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorms; the head
        then scaled by head_scale (init_scale 0.001) so the first logits are near zero. The encoder is normally
        overwritten by pretrained weights; this matters for training from scratch and for the head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_scale)
                self.head.bias.mul_(head_scale)

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, N, D): every token through the encoder blocks (no mask, no final norm)."""
        t, h, w = video.shape[2:]
        kt, kh, kw = self.patch_embed.proj.kernel_size
        if (t // kt, h // kh, w // kw) != self.grid or t % kt or h % kh or w % kw:
            raise ValueError(
                f"clip of {t} frames x {h}x{w} does not match the model's token grid {self.grid} "
                f"(data.num_frames / data.input_size with tubelet {kt}, patch {kh})"
            )
        x = self.patch_embed.proj(video.to(self.patch_embed.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return x

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D): tokens averaged, then fc_norm (what the head and a linear probe see)."""
        return self.fc_norm(self.forward_tokens(video).mean(1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, num_classes) logits; (B, D) features when model.num_classes = 0."""
        return self.head(self.head_drop(self.forward_features(video)))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer ids for timm's `param_groups_layer_decay` (VideoMAE's layer-wise lr decay): patch_embed 0,
        blocks.i i+1, fc_norm and head (unmatched) depth+1."""
        return {"stem": r"^patch_embed", "blocks": r"^blocks\.(\d+)"}

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay beyond the 1-D ones: none (positions are a fixed buffer)."""
        return set()


def classifier_from_config(cfg: Config) -> VideoMAEClassifier:
    """The classifier a run's config describes: model.* (size, head, drop path) for data.*'s clip shape."""
    return VideoMAEClassifier(cfg.model, cfg.data)


def encoder_state(pretrain: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split our pretraining state dict (mgm.model.VideoMAEPretrain) into the classifier's encoder weights (same
    names: patch_embed.*, blocks.*) and the names it drops (decoder, pixel head, final norm, mask token)."""
    keep = {k: v for k, v in pretrain.items() if not k.startswith(PRETRAIN_ONLY)}
    return keep, sorted(set(pretrain) - set(keep))


def classifier_from_pretrain(
    state_dict: dict[str, torch.Tensor], model: ModelConfig, data: DataConfig, *, source: str = "checkpoint"
) -> tuple[VideoMAEClassifier, LoadReport]:
    """A classifier whose encoder is the one in our pretraining `state_dict`; fc_norm and head start fresh.

    Every encoder tensor must be there with the config's shape: a missing block or another width, tubelet or patch
    raises `CheckpointMismatch` naming the tensor, both shapes and the config key to change. The report lists
    what was loaded, what stayed at its init (fc_norm, head) and what was dropped (decoder, final norm).
    """
    clf = VideoMAEClassifier(model, data)
    weights, dropped = encoder_state(state_dict)
    report = load_state(clf, weights, source=source, fresh=("fc_norm.", "head."))
    report.dropped += dropped
    return clf, report
