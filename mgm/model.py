"""VideoMAE pretraining model: tubelet embedding, ViT encoder over visible tokens, light decoder, pixel loss.

Conventions (shared with the loader and the masks):
- video: (B, 3, T, H, W) float, normalized with ImageNet mean/std;
- mask: (B, N) bool, True = masked, the same number of True per row; N = T/ts * H/p * W/p, token order (t, h, w);
- a predicted patch vector is laid out (ts, p, p, C) (`patchify`), as in VideoMAE and Hugging Face
  `VideoMAEForPreTraining`, so weights map one to one (`load_hf_state_dict`) and predictions compare directly.

Speed, with the same math: the tubelet embedding is a Conv3d with stride = kernel, i.e. a linear map of each
patch vector, so the encoder embeds only the visible patches (10% at ratio 0.9) instead of every tubelet; the
input is cut into channel-first patch vectors (`patch_tokens`) so the target's per-channel statistics reduce
over contiguous memory; the un-normalization of the target folds into the epsilon (see `targets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSize:
    dim: int
    depth: int
    heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int


# A new size is a registry entry, not a new class.
MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(192, 4, 3, 96, 2, 3),
    "small": ModelSize(384, 12, 6, 192, 4, 3),
    "base": ModelSize(768, 12, 12, 384, 4, 6),
    "large": ModelSize(1024, 24, 16, 512, 4, 8),
}


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, ts*p*p*C), tokens in (t, h, w) order, each vector laid out (ts, p, p, C)."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T2, Hp, Wp, ts, p, p, C)
    return x.reshape(b, -1, tubelet * patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """(B, N, ts*p*p*C) -> (B, C, T, H, W); the inverse of `patchify` for a token grid (T2, Hp, Wp)."""
    b = patches.shape[0]
    t2, hp, wp = grid
    x = patches.reshape(b, t2, hp, wp, tubelet, patch, patch, -1)  # (B, T2, Hp, Wp, ts, p, p, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T2, ts, Hp, p, Wp, p)
    return x.reshape(b, -1, t2 * tubelet, hp * patch, wp * patch)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, num_positions, dim) fixed 1D sin-cos table over the flattened token index (VideoMAE's positions)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (N, D)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()[None]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `p` (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


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
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, C/heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoMAEPretrain(nn.Module):
    """VideoMAE encoder-decoder for masked-video pretraining; `forward(video, mask)` returns (loss, pred)."""

    def __init__(
        self,
        *,
        num_frames: int = 16,
        input_size: int = 224,
        tubelet: int = 2,
        patch: int = 16,
        in_chans: int = 3,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        norm_pix_loss: bool = True,
        drop_path: float = 0.0,
        grad_checkpointing: bool = False,
        pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
        pixel_std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if num_frames % tubelet or input_size % patch:
            raise ValueError(f"num_frames={num_frames} / input_size={input_size} not divisible by {tubelet}/{patch}")
        self.tubelet, self.patch = tubelet, patch
        self.grid = (num_frames // tubelet, input_size // patch, input_size // patch)
        self.num_tokens = math.prod(self.grid)
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(in_chans, dim, (tubelet, patch, patch), (tubelet, patch, patch))
        self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, dim), persistent=False)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, norm_eps, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.encoder_to_decoder = nn.Linear(dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(self.num_tokens, decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio, norm_eps) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=norm_eps)
        self.head = nn.Linear(decoder_dim, tubelet * patch * patch * in_chans)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std), persistent=False)
        self._init_weights()

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

    def patch_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, C*ts*p*p), each vector laid out (C, ts, p, p) like the Conv3d kernel.

        Channel-first keeps each channel's pixels contiguous for the per-patch statistics of the target, and
        makes the embedding a plain linear map with the flattened kernel.
        """
        b, c, t, h, w = video.shape
        ts, p = self.tubelet, self.patch
        x = video.reshape(b, c, t // ts, ts, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * ts * p * p)  # (B, T2*Hp*Wp, C*ts*p*p)

    def forward_encoder(self, patches_vis: torch.Tensor, vis_ids: torch.Tensor) -> torch.Tensor:
        """(B, V, C*ts*p*p) visible `patch_tokens` at token ids (B, V) -> (B, V, D) encoded tokens."""
        w = self.patch_embed.proj.weight.flatten(1)  # (D, C*ts*p*p): the Conv3d as a matrix
        x = F.linear(patches_vis.to(w.dtype), w, self.patch_embed.proj.bias)  # (B, V, D); fp16 loader output is fine
        x = x + self.pos_embed[0][vis_ids]
        return self.norm(self._run(self.blocks, x))

    def forward_decoder(self, x_vis: torch.Tensor, ids: torch.Tensor, num_visible: int) -> torch.Tensor:
        """(B, V, D) encoded visible tokens, ids (B, N) from `split_ids` -> (B, M, ts*p*p*C) masked predictions."""
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
        b, m, _ = patches_masked.shape
        c = self.pixel_std.numel()
        x = patches_masked.reshape(b, m, c, -1)  # (B, M, C, ts*p*p)
        std, mean = self.pixel_std[:, None], self.pixel_mean[:, None]  # (C, 1)
        if self.norm_pix_loss:
            d = x - x.mean(-1, keepdim=True)
            sd = torch.linalg.vector_norm(d, dim=-1, keepdim=True) / math.sqrt(x.shape[-1] - 1)  # unbiased std
            x = d.div_(sd.add_(1e-6 / std))
        else:
            x = x * std + mean
        return x.transpose(2, 3).reshape(b, m, -1)  # (B, M, ts*p*p*C)

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, T, H, W), mask (B, N) bool True = masked -> (scalar loss, (B, M, ts*p*p*C) predictions)."""
        ids, v = self.split_ids(mask)
        patches = self.patch_tokens(video)  # (B, N, C*ts*p*p)
        patches = torch.gather(patches, 1, ids[..., None].expand(-1, -1, patches.shape[-1]))  # visible first
        x_vis = self.forward_encoder(patches[:, :v], ids[:, :v])
        pred = self.forward_decoder(x_vis, ids, v)  # (B, M, ts*p*p*C)
        with torch.no_grad():
            target = self.targets(patches[:, v:].float())  # (B, M, ts*p*p*C)
        return F.mse_loss(pred.float(), target), pred  # fp32 loss under bf16 autocast


def create_model(
    size: str,
    *,
    num_frames: int = 16,
    input_size: int = 224,
    tubelet: int = 2,
    patch: int = 16,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    norm_pix_loss: bool = True,
    drop_path: float = 0.0,
    grad_checkpointing: bool = False,
) -> VideoMAEPretrain:
    """Build a registered size ("tiny" | "small" | "base" | "large"); decoder_* = None keeps the size's default."""
    if size not in MODEL_SIZES:
        raise ValueError(f"model.size={size!r} is not one of {sorted(MODEL_SIZES)}")
    s = MODEL_SIZES[size]
    return VideoMAEPretrain(
        num_frames=num_frames,
        input_size=input_size,
        tubelet=tubelet,
        patch=patch,
        dim=s.dim,
        depth=s.depth,
        heads=s.heads,
        decoder_dim=decoder_dim or s.decoder_dim,
        decoder_depth=decoder_depth or s.decoder_depth,
        decoder_heads=decoder_heads or s.decoder_heads,
        norm_pix_loss=norm_pix_loss,
        drop_path=drop_path,
        grad_checkpointing=grad_checkpointing,
    )


_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
}


def hf_to_mgm_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face `VideoMAEForPreTraining` state dict (use_mean_pooling=False) to this model's keys."""
    out: dict[str, torch.Tensor] = {}
    prefixes = [("videomae.encoder.layer.", "blocks."), ("decoder.decoder_layers.", "decoder_blocks.")]
    fixed = {
        "videomae.embeddings.patch_embeddings.projection": "patch_embed.proj",
        "videomae.layernorm": "norm",
        "decoder.norm": "decoder_norm",
        "decoder.head": "head",
    }
    for key, val in hf.items():
        for src, dst in prefixes:
            if key.startswith(src):
                idx, rest = key[len(src) :].split(".", 1)
                if rest.endswith(("query.weight", "key.weight", "value.weight")):
                    if rest.endswith("query.weight"):  # q, k, v stacked into one (3D, D) matrix
                        base = f"{src}{idx}.attention.attention."
                        qkv = [hf[base + n + ".weight"] for n in ("query", "key", "value")]
                        out[f"{dst}{idx}.attn.qkv.weight"] = torch.cat(qkv)
                    break
                name = next((v + rest[len(k) :] for k, v in _HF_BLOCK.items() if rest.startswith(k)), None)
                if name is None:
                    raise KeyError(f"hf_to_mgm_state_dict: no mapping for {key!r}")
                out[f"{dst}{idx}.{name}"] = val
                break
        else:
            stem, _, leaf = key.rpartition(".")
            out[f"{fixed[stem]}.{leaf}" if stem in fixed else key] = val
    return out


def load_hf_state_dict(model: VideoMAEPretrain, hf: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face `VideoMAEForPreTraining` weights into `model` (strict: every key must match)."""
    model.load_state_dict(hf_to_mgm_state_dict(hf), strict=True)


def model_from_config(cfg: Any) -> VideoMAEPretrain:
    """The model a run's config (mgm.config.Config) describes: model.* and the clip shape from data.*."""
    m, d = cfg.model, cfg.data
    return create_model(
        m.size,
        num_frames=d.num_frames,
        input_size=d.input_size,
        tubelet=m.tubelet,
        patch=m.patch,
        decoder_dim=m.decoder_dim,
        decoder_depth=m.decoder_depth,
        decoder_heads=m.decoder_heads,
        norm_pix_loss=m.norm_pix_loss,
        drop_path=m.drop_path,
        grad_checkpointing=m.grad_checkpointing,
    )
