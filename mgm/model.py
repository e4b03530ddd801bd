"""VideoMAE pretraining model: tubelet embedding, ViT encoder over visible tokens, light decoder, pixel loss.

Conventions (shared with the loader and the masks):
- video: (B, 3, T, H, W) float, normalized with data.mean / data.std (ImageNet's by default);
- mask: (B, N) bool, True = masked, the same number of True per row; N = T/ts * H/p * W/p, token order (t, h, w);
- decoder_mask (optional, VideoMAE V2's decoder masking): (B, N) bool, True = reconstructed (a loss target), a
  subset of `mask` with the same number of True per row; without it every masked token is a target;
- a predicted patch vector is laid out (ts, p, p, C) (`patchify`), as in VideoMAE and Hugging Face
  `VideoMAEForPreTraining`, so weights map one to one (mgm.convert) and predictions compare directly.

Speed, with the same math: the tubelet embedding is a Conv3d with stride = kernel, i.e. a linear map of each
patch vector, so the encoder embeds only the visible patches (10% at ratio 0.9) instead of every tubelet; the
input is cut into channel-first patch vectors (`patch_tokens`) so the target's per-channel statistics reduce
over contiguous memory; the un-normalization of the target folds into the epsilon (see `targets`).

Settings come from the config tree, defined once there: `VideoMAEPretrain(cfg.model, cfg.data)` (what
`model_from_config` does) or, without a whole Config, `create_model("small", DataConfig(num_frames=8), drop_path=0.1)`.
timm supplies the layers that are the same math as VideoMAE's (Mlp, DropPath); einops the patch layouts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from mgm.config import Config, DataConfig, ModelConfig, resolve_compile

IN_CHANS = 3  # RGB
MLP_RATIO = 4.0
NORM_EPS = 1e-6  # VideoMAE's LayerNorm epsilon


@dataclass(frozen=True)
class ModelSize:
    dim: int
    depth: int
    heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = MLP_RATIO  # MLP width / dim, encoder and decoder alike (as VideoMAE V2)


# A new size is a registry entry, not a new class. huge and giant are VideoMAE V2's ViT-H and ViT-g (decoder 512
# wide, 8 heads, depth 4 as its pretraining scripts run them); V2's ViT-g cuts 14x14 patches: model.patch=14.
MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(192, 4, 3, 96, 2, 3),
    "small": ModelSize(384, 12, 6, 192, 4, 3),
    "base": ModelSize(768, 12, 12, 384, 4, 6),
    "large": ModelSize(1024, 24, 16, 512, 4, 8),
    "huge": ModelSize(1280, 32, 16, 512, 4, 8),
    "giant": ModelSize(1408, 40, 16, 512, 4, 8, mlp_ratio=48 / 11),  # MLP 6144 wide (decoder's: 2234)
}


def model_size(model: ModelConfig) -> ModelSize:
    """The widths and depths `model` asks for: its registered size, with decoder_* keys other than 0 applied."""
    if model.size not in MODEL_SIZES:
        raise ValueError(f"model.size={model.size!r} is not one of {sorted(MODEL_SIZES)}")
    s = MODEL_SIZES[model.size]
    return dataclasses.replace(
        s,
        decoder_dim=model.decoder_dim or s.decoder_dim,
        decoder_depth=model.decoder_depth or s.decoder_depth,
        decoder_heads=model.decoder_heads or s.decoder_heads,
    )


def token_grid(model: ModelConfig, data: DataConfig) -> tuple[int, int, int]:
    """(T2, Hp, Wp): tubelet slots x token rows x token cols of a num_frames x input_size^2 clip."""
    tubelet, patch = model.tubelet, model.patch
    if data.num_frames % tubelet or data.input_size % patch:
        raise ValueError(
            f"data.num_frames={data.num_frames} / data.input_size={data.input_size} not divisible by "
            f"model.tubelet={tubelet} / model.patch={patch}"
        )
    return data.num_frames // tubelet, data.input_size // patch, data.input_size // patch


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, ts*p*p*C), tokens in (t, h, w) order, each vector laid out (ts, p, p, C)."""
    return rearrange(video, "b c (t ts) (h p) (w q) -> b (t h w) (ts p q c)", ts=tubelet, p=patch, q=patch)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """(B, N, ts*p*p*C) -> (B, C, T, H, W); the inverse of `patchify` for a token grid (T2, Hp, Wp)."""
    t2, hp, wp = grid
    pattern = "b (t h w) (ts p q c) -> b c (t ts) (h p) (w q)"
    return rearrange(patches, pattern, t=t2, h=hp, w=wp, ts=tubelet, p=patch, q=patch)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, num_positions, dim) fixed 1D sin-cos table over the flattened token index (VideoMAE's positions)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (N, D)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()[None]


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's bias layout: q and v biases, no k bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # one matmul for q, k, v
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3C)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)  # each (B, h, N, C/h)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, drop_path: float = 0.0, mlp_ratio: float = MLP_RATIO) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # fc1 -> GELU -> fc2, as VideoMAE (dropout 0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoMAEPretrain(nn.Module):
    """VideoMAE encoder-decoder for masked-video pretraining; `forward(video, mask[, decoder_mask])` -> (loss, pred).

    model: size, token shape (tubelet, patch), decoder overrides, loss and memory switches (mgm.config.ModelConfig;
    with model.compile true, or "auto" where CUDA is available, the module compiles itself in place, so state_dict
    keys stay unprefixed).
    data: the clips it is fed: num_frames x input_size^2, normalized with mean / std (mgm.config.DataConfig).
    """

    def __init__(self, model: ModelConfig, data: DataConfig) -> None:
        super().__init__()
        tubelet, patch, s = model.tubelet, model.patch, model_size(model)
        self.tubelet, self.patch = tubelet, patch
        self.grid = token_grid(model, data)
        self.num_tokens = math.prod(self.grid)
        self.norm_pix_loss = model.norm_pix_loss
        self.grad_checkpointing = model.grad_checkpointing
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(IN_CHANS, s.dim, (tubelet, patch, patch), (tubelet, patch, patch))
        self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, s.dim), persistent=False)
        rates = torch.linspace(0, model.drop_path, s.depth, device="cpu").tolist()  # cpu: also under a meta device
        self.blocks = nn.ModuleList(Block(s.dim, s.heads, r, s.mlp_ratio) for r in rates)
        self.norm = nn.LayerNorm(s.dim, eps=NORM_EPS)
        self.encoder_to_decoder = nn.Linear(s.dim, s.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(self.num_tokens, s.decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(s.decoder_dim, s.decoder_heads, mlp_ratio=s.mlp_ratio) for _ in range(s.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(s.decoder_dim, eps=NORM_EPS)
        self.head = nn.Linear(s.decoder_dim, tubelet * patch * patch * IN_CHANS)
        # The loader's normalization, undone for pixel targets when norm_pix_loss is off.
        self.register_buffer("pixel_mean", torch.tensor(data.mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(data.std), persistent=False)
        self._init_weights()
        if resolve_compile(model.compile, "cuda" if torch.cuda.is_available() else "cpu"):
            self.compile()  # lazily, on the first call (after .to(device))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map of the patch vector (MAE)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return x

    def split_ids(self, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Token ids (B, N): visible ones first, then masked ones, each ascending; and the visible count V.

        mask: (B, N) bool, True = masked; every row must mask the same number of tokens.
        """
        if mask.ndim != 2 or mask.shape[1] != self.num_tokens:
            raise ValueError(f"mask must be (B, {self.num_tokens}) bool, got {tuple(mask.shape)}")
        counts = mask.sum(1).tolist()  # one host sync; the gathers below need a fixed V anyway
        if min(counts) != max(counts) or counts[0] in (0, self.num_tokens):
            raise ValueError(f"mask rows must mask the same number (0 < n < {self.num_tokens}) of tokens: {counts}")
        ids = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        return ids, self.num_tokens - counts[0]

    def split_target_ids(self, mask: torch.Tensor, decoder_mask: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Token ids (B, V + M): visible ones first, then the decoder's targets, each ascending; V and M.

        mask: (B, N) bool, True = masked; decoder_mask: (B, N) bool, True = reconstructed, a subset of `mask`; each
        with the same count in every row. The masked tokens that are not targets take no part in the step.
        """
        if mask.ndim != 2 or mask.shape[1] != self.num_tokens:
            raise ValueError(f"mask must be (B, {self.num_tokens}) bool, got {tuple(mask.shape)}")
        if decoder_mask.shape != mask.shape or decoder_mask.dtype != torch.bool:
            raise ValueError(f"decoder_mask must be {tuple(mask.shape)} bool like mask, got "
                             f"{tuple(decoder_mask.shape)} {decoder_mask.dtype}")  # fmt: skip
        counts = torch.stack([mask.sum(1), decoder_mask.sum(1), (decoder_mask & ~mask).sum(1)]).tolist()  # one sync
        masked, targets, stray = counts
        if min(masked) != max(masked) or masked[0] in (0, self.num_tokens):
            raise ValueError(f"mask rows must mask the same number (0 < n < {self.num_tokens}) of tokens: {masked}")
        if min(targets) != max(targets) or targets[0] == 0:
            raise ValueError(f"decoder_mask rows must have the same number (> 0) of targets: {targets}")
        if max(stray):
            raise ValueError(f"decoder_mask marks visible tokens as targets ({stray} per row); targets must be masked")
        # 0 = visible, 1 = target, 2 = masked but not reconstructed
        ids = torch.argsort(mask.to(torch.uint8) + (mask & ~decoder_mask).to(torch.uint8), dim=1, stable=True)
        v = self.num_tokens - masked[0]
        return ids[:, : v + targets[0]], v, targets[0]

    def patch_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, C*ts*p*p), each vector laid out (C, ts, p, p) like the Conv3d kernel.

        Channel-first keeps each channel's pixels contiguous for the per-patch statistics of the target, and
        makes the embedding a plain linear map with the flattened kernel.
        """
        pattern = "b c (t ts) (h p) (w q) -> b (t h w) (c ts p q)"
        return rearrange(video, pattern, ts=self.tubelet, p=self.patch, q=self.patch)  # (B, T2*Hp*Wp, C*ts*p*p)

    def forward_encoder(self, patches_vis: torch.Tensor, vis_ids: torch.Tensor) -> torch.Tensor:
        """(B, V, C*ts*p*p) visible `patch_tokens` at token ids (B, V) -> (B, V, D) encoded tokens."""
        w = self.patch_embed.proj.weight.flatten(1)  # (D, C*ts*p*p): the Conv3d as a matrix
        x = F.linear(patches_vis.to(w.dtype), w, self.patch_embed.proj.bias)  # (B, V, D); fp16 loader output is fine
        x = x + self.pos_embed[0][vis_ids]
        return self.norm(self._run(self.blocks, x))

    def forward_decoder(self, x_vis: torch.Tensor, ids: torch.Tensor, num_visible: int) -> torch.Tensor:
        """(B, V, D) encoded visible tokens, ids (B, V + M) from `split_ids` (M = all masked) or `split_target_ids`
        (M = the targets) -> (B, M, ts*p*p*C) predictions of the M tokens after the visible ones in `ids`."""
        x_vis = self.encoder_to_decoder(x_vis)  # (B, V, Dd)
        pos = self.decoder_pos_embed[0][ids]  # (B, N, Dd), visible positions first
        b, m = x_vis.shape[0], ids.shape[1] - num_visible
        x = torch.cat([x_vis, self.mask_token.expand(b, m, -1)], dim=1) + pos  # (B, N, Dd)
        x = self._run(self.decoder_blocks, x)
        return self.head(self.decoder_norm(x[:, num_visible:]))  # (B, M, ts*p*p*C)

    def targets(self, patches_masked: torch.Tensor) -> torch.Tensor:
        """(B, M, C*ts*p*p) masked `patch_tokens` (normalized input) -> (B, M, ts*p*p*C) loss target in pixels.

        With norm_pix_loss each patch is standardised per channel over its ts*p*p pixels (unbiased std + 1e-6),
        the VideoMAE recipe. Standardising x*s+m equals standardising x with eps 1e-6/s, so the video is never
        un-normalized; the statistics reduce over contiguous channel-first memory, then one copy lays the
        target out like the predictions.
        """
        x = rearrange(patches_masked, "b m (c k) -> b m c k", c=self.pixel_std.numel())  # (B, M, C, ts*p*p)
        std, mean = self.pixel_std[:, None], self.pixel_mean[:, None]  # (C, 1)
        if self.norm_pix_loss:
            d = x - x.mean(-1, keepdim=True)
            sd = torch.linalg.vector_norm(d, dim=-1, keepdim=True) / math.sqrt(x.shape[-1] - 1)  # unbiased std
            x = d.div_(sd.add_(1e-6 / std))
        else:
            x = x * std + mean
        return rearrange(x, "b m c k -> b m (k c)")  # (B, M, ts*p*p*C)

    def forward(
        self, video: torch.Tensor, mask: torch.Tensor, decoder_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, T, H, W), mask (B, N) bool True = masked, decoder_mask None (every masked token is a target)
        or (B, N) bool True = reconstructed, a subset of mask -> (scalar loss, (B, M, ts*p*p*C) predictions of the
        M targets in token order). The loss is the mean over the targets only; without decoder_mask it is VideoMAE's.
        """
        if decoder_mask is None:
            ids, v = self.split_ids(mask)  # (B, N)
        else:
            ids, v, _ = self.split_target_ids(mask, decoder_mask)  # (B, V + M): the decoder never sees the rest
        patches = self.patch_tokens(video)  # (B, N, C*ts*p*p)
        patches = torch.gather(patches, 1, ids[..., None].expand(-1, -1, patches.shape[-1]))  # visible first
        x_vis = self.forward_encoder(patches[:, :v], ids[:, :v])
        pred = self.forward_decoder(x_vis, ids, v)  # (B, M, ts*p*p*C)
        with torch.no_grad():
            target = self.targets(patches[:, v:].float())  # (B, M, ts*p*p*C)
        return F.mse_loss(pred.float(), target), pred  # fp32 loss under bf16 autocast


def create_model(size: str = "base", data: DataConfig | None = None, **model: Any) -> VideoMAEPretrain:
    """A registered size ("tiny" | "small" | "base" | "large") without a whole Config.

    data: the clip shape and normalization (default DataConfig(): 16 frames of 224^2, ImageNet mean/std);
    model: any other ModelConfig key, e.g. drop_path=0.1 or norm_pix_loss=False (a wrong name is a TypeError).
    """
    return VideoMAEPretrain(ModelConfig(size=size, **model), data or DataConfig())


def load_hf_state_dict(model: VideoMAEPretrain, hf: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face `VideoMAEForPreTraining` weights into `model` (every name and shape must fit).

    The renaming lives with the other checkpoint layouts in mgm.convert (imported here, when called, since it
    builds on this module)."""
    from mgm.convert import hf_to_mgm

    state, _ = hf_to_mgm(hf)
    model.load_state_dict(state, strict=True)


def model_from_config(cfg: Config) -> VideoMAEPretrain:
    """The model a run's config describes: model.* and the clips data.* describes (shape, mean/std)."""
    return VideoMAEPretrain(cfg.model, cfg.data)
