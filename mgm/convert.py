"""Checkpoints in and out: VideoMAE / VideoMAE V2 `.pth` files, Hugging Face folders and our own checkpoints.

The networks are the same, so a conversion is a renaming (plus q, k, v stacked into one matrix or split from it),
checked against our model before anything is written. Key layouts, `i` a block index:

ours (mgm.model, mgm.classifier)   VideoMAE / V2 pretraining .pth   Hugging Face (VideoMAEForPreTraining, ...)
  patch_embed.proj.*                 encoder.patch_embed.proj.*       videomae.embeddings.patch_embeddings.projection.*
  blocks.i.norm1, norm2              encoder.blocks.i.(same)          videomae.encoder.layer.i.layernorm_before, _after
  blocks.i.attn.qkv.weight (3D, D)   encoder.blocks.i.(same)          ...attention.attention.{query,key,value}.weight
  blocks.i.attn.q_bias, v_bias       encoder.blocks.i.(same)          ...{query,value}.bias (transformers 4: q_bias..)
  blocks.i.attn.proj, mlp.fc1, fc2   encoder.blocks.i.(same)          ...attention.output.dense, intermediate.dense,
                                                                      output.dense
  norm.* (pretraining)               encoder.norm.*                   videomae.layernorm.* (use_mean_pooling=False)
  encoder_to_decoder.weight          (same)                           (same)
  mask_token                         (same)                           (same)
  decoder_blocks.i.*                 decoder.blocks.i.*               decoder.decoder_layers.i.* (block names as above)
  decoder_norm.*, head.* (pixels)    decoder.norm.*, decoder.head.*   decoder.norm.*, decoder.head.*
  fc_norm.*, head.* (classifier)     fine-tuning .pth: our names      fc_norm.*, classifier.*

VideoMAE files wrap the weights in "model" or "module" (DDP names may start with "module."). Every file is read
with `mgm.checkpoint.load` (weights_only / safetensors: nothing in it runs). The model size is inferred from the
tensors (width, depth) and looked up in mgm.model.MODEL_SIZES for the head count, which weights do not show.

Positions are VideoMAE's fixed sin-cos table, not weights, so the frame count and input size are free (the table
is rebuilt for the clip); a learned `pos_embed` is dropped when it equals that table and refused otherwise.
LayerNorm eps: ours is VideoMAE's 1e-6 everywhere; Hugging Face hard-codes 1e-5 for fc_norm and the decoder's
last norm (and its hub configs say 1e-12 elsewhere), so logits across the two differ by about 1e-6 relative.

    mgm-convert runs/ssv2/checkpoints/step_00100000.pt runs/ssv2/hf --to hf         # Hugging Face folder
    mgm-convert vit_b_k400_ft.pth runs/vit_b_k400.pt --to mgm                       # VideoMAE -> ours
    mgm-convert MCG-NJU-videomae-base/ runs/vmae_base.pt --to mgm --num-frames 16   # Hugging Face -> ours
    mgm-convert runs/ssv2/checkpoints/step_00100000.pt enc.pth --to videomae --encoder-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mgm import checkpoint as ckpt
from mgm.checkpoint import CheckpointError, CheckpointMismatch, LoadReport, architecture, load_state
from mgm.classifier import VideoMAEClassifier, encoder_state
from mgm.config import DataConfig, ModelConfig, load_config
from mgm.model import MODEL_SIZES, NORM_EPS, VideoMAEPretrain, model_size, sinusoid_table

# Inside a block: ours -> Hugging Face (q, k, v weights are handled apart: one (3D, D) matrix vs three (D, D)).
_HF_BLOCK = (
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
    ("attn.proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
    ("attn.q_bias", "attention.attention.query.bias"),
    ("attn.v_bias", "attention.attention.value.bias"),
)
_HF_QKV = tuple(f"attention.attention.{n}.weight" for n in ("query", "key", "value"))
_HF_LEGACY = {"attention.attention.q_bias": "attention.attention.query.bias",  # transformers 4.x names
              "attention.attention.v_bias": "attention.attention.value.bias"}  # fmt: skip
_HF_BLOCKS = {"blocks": "videomae.encoder.layer", "decoder_blocks": "decoder.decoder_layers"}
_HF_EMBED = ("patch_embed.proj", "videomae.embeddings.patch_embeddings.projection")
_HF_TOP = {
    "pretrain": (_HF_EMBED, ("norm", "videomae.layernorm"), ("decoder_norm", "decoder.norm"), ("head", "decoder.head"),
                 ("encoder_to_decoder", "encoder_to_decoder"), ("mask_token", "mask_token")),
    "classifier": (_HF_EMBED, ("fc_norm", "fc_norm"), ("head", "classifier"), ("norm", "videomae.layernorm")),
}  # fmt: skip
_VIDEOMAE_PRETRAIN = (("patch_embed", "encoder.patch_embed"), ("blocks", "encoder.blocks"), ("norm", "encoder.norm"),
                      ("pos_embed", "encoder.pos_embed"), ("decoder_blocks", "decoder.blocks"),
                      ("decoder_norm", "decoder.norm"), ("head", "decoder.head"),
                      ("encoder_to_decoder", "encoder_to_decoder"), ("mask_token", "mask_token"))  # fmt: skip
# VideoMAE V2 options this model does not have: refused by name rather than as a list of unexpected tensors.
_UNSUPPORTED = {"gamma_1": "layer scale (init_values > 0)", "gamma_2": "layer scale (init_values > 0)",
                "attn.scale": "cosine attention (cos_attn=True)", "cls_token": "a class token"}  # fmt: skip


@dataclass
class Weights:
    """A checkpoint read into our layout. kind: "pretrain" (VideoMAEPretrain) or "classifier" (VideoMAEClassifier)."""

    state: dict[str, torch.Tensor]
    kind: str
    source: str
    layout: str  # what the file was: "mgm", "videomae-pretrain", "videomae-finetune", "hf"
    hf_config: dict = field(default_factory=dict)  # config.json of a Hugging Face folder
    clip: dict = field(default_factory=dict)  # num_frames / input_size the file says it was made for, if it does
    notes: list[str] = field(default_factory=list)


def _rename(name: str, table: tuple[tuple[str, str], ...], *, reverse: bool = False) -> str | None:
    """`name` with the first matching prefix of `table` swapped (whole dotted parts only); None if none matches."""
    for a, b in table:
        src, dst = (b, a) if reverse else (a, b)
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    return None


def mgm_to_hf(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Our state dict (kind "pretrain" | "classifier") -> Hugging Face VideoMAEFor{PreTraining,VideoClassification}."""
    out = {}
    for key, val in state.items():
        if m := re.match(r"(blocks|decoder_blocks)\.(\d+)\.(.+)$", key):
            pre = f"{_HF_BLOCKS[m.group(1)]}.{m.group(2)}."
            if m.group(3) == "attn.qkv.weight":
                out.update({pre + n: w for n, w in zip(_HF_QKV, val.chunk(3), strict=True)})  # each (D, D)
                continue
            name = _rename(m.group(3), _HF_BLOCK)
            name = name and pre + name
        else:
            name = _rename(key, _HF_TOP[kind])
        if name is None:
            raise CheckpointError(f"no Hugging Face name for {key!r}")
        out[name] = val
    return out


def hf_to_mgm(hf: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A Hugging Face VideoMAE state dict (ForPreTraining, ForVideoClassification or the bare VideoMAEModel; 4.x or
    5.x bias names) -> (our state dict, kind)."""
    hf = {("videomae." + k if k.startswith(("embeddings.", "encoder.layer.", "layernorm.")) else k): v
          for k, v in hf.items()}  # fmt: skip  # a bare VideoMAEModel has no "videomae." prefix
    for old, new in _HF_LEGACY.items():
        hf = {k.replace(old, new): v for k, v in hf.items()}
    kind = "pretrain" if any(k.startswith(("decoder.", "encoder_to_decoder")) for k in hf) else "classifier"
    out = {}
    for key, val in hf.items():
        if m := re.match(r"(videomae\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$", key):
            group = {v: k for k, v in _HF_BLOCKS.items()}[m.group(1)]
            pre, rest = f"{group}.{m.group(2)}.", m.group(3)
            if rest in _HF_QKV:
                if rest == _HF_QKV[0]:
                    out[pre + "attn.qkv.weight"] = torch.cat([hf[f"{m.group(1)}.{m.group(2)}.{n}"] for n in _HF_QKV])
                continue
            name = _rename(rest, _HF_BLOCK, reverse=True)
            name = name and pre + name
        else:
            name = _rename(key, _HF_TOP[kind], reverse=True)
        if name is None:
            raise CheckpointError(f"Hugging Face tensor {key!r} has no counterpart in this model")
        out[name] = val
    return out, kind


def mgm_to_videomae(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Our state dict -> VideoMAE's names: pretraining `encoder.*` / `decoder.*`; a classifier's are already theirs."""
    if kind == "classifier":
        return dict(state)
    return {_rename(k, _VIDEOMAE_PRETRAIN) or k: v for k, v in state.items()}


def unwrap(obj: dict, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: under "model" / "module" / "state_dict" (VideoMAE, ours) or the file
    itself; a DDP "module." prefix removed. Non-tensor entries (epoch, args) are left out."""
    for key in ("model", "module", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: no tensors found (looked under 'model', 'module', 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A `save_pretrained` folder: config.json and model.safetensors (sharded or not) or pytorch_model.bin."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("model_type", "videomae") != "videomae":
        raise CheckpointError(f"{folder}: config.json says model_type={config['model_type']!r}, not videomae")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for s in shards for k, v in ckpt.load(folder / s).items()}, config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return unwrap(ckpt.load(folder / name), str(folder / name)), config
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin in this folder")


def _positions(state: dict[str, torch.Tensor], source: str, notes: list[str]) -> None:
    """Drop a saved `pos_embed` that is the fixed sin-cos table; refuse a learned one (this model has none)."""
    pos = state.pop("pos_embed", None)
    if pos is None:
        return
    if pos.ndim == 3 and torch.allclose(pos.float(), sinusoid_table(pos.shape[1], pos.shape[2]), atol=1e-4):
        notes.append(f"pos_embed {tuple(pos.shape)} is the fixed sin-cos table: rebuilt for the clip, not loaded")
        return
    raise CheckpointError(
        f"{source}: pos_embed {tuple(pos.shape)} is a learned position embedding (use_learnable_pos_emb=True); "
        "this model uses VideoMAE's fixed sin-cos positions, so it cannot take these weights"
    )


def videomae_to_mgm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VideoMAE / V2 pretraining names (`encoder.*`, `decoder.*`) -> ours; the encoder's Identity head is absent."""
    out = {}
    for k, v in state.items():
        name = _rename(k, _VIDEOMAE_PRETRAIN, reverse=True)
        if name is None:
            raise CheckpointError(f"VideoMAE tensor {k!r} has no counterpart in this model")
        out[name] = v
    return out


def _is_pretrain(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("decoder_blocks.", "encoder_to_decoder")) for k in state)


def read_weights(path: str | Path) -> Weights:
    """Any checkpoint this project takes, in our layout: our step_*.pt / exported .pt, a VideoMAE or VideoMAE V2
    pretraining or fine-tuning .pth, a .safetensors file, or a Hugging Face folder. Nothing in it is executed."""
    path = Path(path)
    source, hf_config, clip, ours = str(path), {}, {}, False
    if path.is_dir():
        raw, hf_config = _read_hf_folder(path)
        clip = {"num_frames": hf_config.get("num_frames", 16), "input_size": hf_config.get("image_size", 224)}
    else:
        obj = ckpt.load(path)
        ours = "kind" in obj or "optimizer" in obj  # an export_mgm file or a training checkpoint
        clip = obj.get("config", {}).get("data", {}) if "kind" in obj else {}
        raw = unwrap(obj, source)
    notes: list[str] = []
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings")) for k in raw):
        (state, kind), layout = hf_to_mgm(raw), "hf"
    elif any(k.startswith("encoder.") for k in raw):
        state, layout = videomae_to_mgm(raw), "videomae-pretrain"
        kind = "pretrain" if _is_pretrain(state) else "classifier"  # an encoder alone: a classifier's encoder
    else:
        state, layout = dict(raw), "mgm" if ours else "videomae-finetune"
        kind = "pretrain" if _is_pretrain(state) else "classifier"
    _positions(state, source, notes)
    odd = {why for k in state for part, why in _UNSUPPORTED.items() if re.search(rf"(^|\.){re.escape(part)}($|\.)", k)}
    if odd:
        raise CheckpointError(f"{source}: uses {' and '.join(sorted(odd))}, which this VideoMAE model does not have")
    if kind == "classifier" and "norm.weight" in state and "fc_norm.weight" not in state:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        notes.append("final encoder norm dropped: the classifier mean-pools, then fc_norm (VideoMAE's fine-tuning)")
    return Weights(state, kind, source, layout, hf_config, clip, notes)


def model_config_for(w: Weights, base: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig whose model has `w`'s tensors: size from width and depth, tubelet, patch, head and decoder
    from their shapes; head counts (not in the weights) from the size registry or the Hugging Face config."""
    arch, hf = architecture(w.state), w.hf_config
    if "dim" not in arch:
        raise CheckpointError(f"{w.source}: no patch embedding (patch_embed.proj.weight): not a VideoMAE checkpoint")
    dim, depth = arch["dim"], arch.get("depth")
    sizes = [n for n, s in MODEL_SIZES.items() if (s.dim, s.depth) == (dim, depth)]
    if not sizes:
        known = ", ".join(f"{n} {s.dim}x{s.depth}" for n, s in MODEL_SIZES.items())
        raise CheckpointMismatch(f"{w.source}: width {dim}, depth {depth} is no registered model.size ({known})")
    size = MODEL_SIZES[sizes[0]]
    if hf and hf.get("num_attention_heads", size.heads) != size.heads:
        raise CheckpointMismatch(f"{w.source}: {hf['num_attention_heads']} attention heads; model.size={sizes[0]} "
                                 f"has {size.heads}")  # fmt: skip
    out = dataclasses.replace(base or ModelConfig(), size=sizes[0], tubelet=arch["tubelet"], patch=arch["patch"],
                              num_classes=arch.get("num_classes", 0))  # fmt: skip
    if w.kind == "pretrain":
        ddim = arch["decoder_dim"]
        # VideoMAE's decoders use 64-wide heads (small 192/3, base 384/6, large and V2 512/8)
        guess = size.decoder_heads if ddim == size.decoder_dim else ddim // 64
        heads = hf.get("decoder_num_attention_heads") or guess
        out = dataclasses.replace(out, decoder_dim=ddim, decoder_depth=arch["decoder_depth"], decoder_heads=heads)
    return out


def build(w: Weights, model: ModelConfig, data: DataConfig) -> tuple[nn.Module, LoadReport]:
    """Our model for `w.kind`, built from model/data, with `w`'s weights (checked: names and shapes must fit)."""
    net = VideoMAEPretrain(model, data) if w.kind == "pretrain" else VideoMAEClassifier(model, data)
    fresh = ("fc_norm.", "head.") if w.kind == "classifier" and "head.weight" not in w.state else ()
    report = load_state(net, w.state, source=w.source, fresh=fresh)
    report.notes += w.notes
    return net.eval(), report


def classifier_from_file(
    path: str | Path, model: ModelConfig, data: DataConfig, *, strict: bool = False
) -> tuple[VideoMAEClassifier, LoadReport]:
    """The classifier the config describes, its weights from any checkpoint `read_weights` takes (model.init).

    A pretraining checkpoint gives the encoder (decoder dropped); fc_norm and head start fresh. A fine-tuned one
    gives everything; unless `strict` (evaluating a fine-tuned model), a head of another size than
    model.num_classes is dropped and starts fresh, as VideoMAE does. Shapes that do not fit raise
    `CheckpointMismatch` naming the tensor, both shapes and the config key to change.
    """
    w = read_weights(path)
    clf = VideoMAEClassifier(model, data)
    state, notes = w.state, list(w.notes)
    if w.kind == "pretrain":
        state, dropped = encoder_state(state)
        notes.append(f"pretraining checkpoint: encoder loaded, {len(dropped)} decoder tensors not used")
    head = clf.state_dict().get("head.weight")
    if not strict and "head.weight" in state and (head is None or head.shape != state["head.weight"].shape):
        notes.append(f"head {tuple(state['head.weight'].shape)} does not fit model.num_classes={model.num_classes}: "
                     "the head starts fresh")  # fmt: skip
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    report = load_state(clf, state, source=w.source, fresh=() if strict else ("fc_norm.", "head."))
    report.notes += notes
    return clf, report


def export_hf(net: nn.Module, model: ModelConfig, data: DataConfig, out_dir: str | Path) -> Path:
    """Write `net` (VideoMAEPretrain or VideoMAEClassifier) as a Hugging Face `save_pretrained` folder
    (config.json + model.safetensors), loadable with VideoMAEFor{PreTraining,VideoClassification}.from_pretrained.
    Needs `transformers` (pip install transformers)."""
    try:
        import transformers
    except ImportError as e:
        raise CheckpointError("exporting to Hugging Face needs transformers: pip install transformers") from e
    kind = "pretrain" if isinstance(net, VideoMAEPretrain) else "classifier"
    s = model_size(model)
    cfg = transformers.VideoMAEConfig(
        image_size=data.input_size, patch_size=model.patch, num_frames=data.num_frames, tubelet_size=model.tubelet,
        hidden_size=s.dim, num_hidden_layers=s.depth, num_attention_heads=s.heads,
        intermediate_size=int(s.dim * s.mlp_ratio), layer_norm_eps=NORM_EPS, qkv_bias=True,
        use_mean_pooling=kind == "classifier", norm_pix_loss=model.norm_pix_loss,
        num_labels=model.num_classes if kind == "classifier" else 2, decoder_hidden_size=s.decoder_dim,
        decoder_num_hidden_layers=s.decoder_depth, decoder_num_attention_heads=s.decoder_heads,
        decoder_intermediate_size=int(s.decoder_dim * s.mlp_ratio),
    )  # fmt: skip
    hf_cls = transformers.VideoMAEForPreTraining if kind == "pretrain" else transformers.VideoMAEForVideoClassification
    hf = hf_cls(cfg)
    state = mgm_to_hf(net.state_dict(), kind)
    if "videomae.encoder.layer.0.attention.attention.q_bias" in hf.state_dict():  # transformers 4.x names
        state = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v for k, v in state.items()}
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(out_dir)
    return Path(out_dir)


def export_videomae(net: nn.Module, path: str | Path, *, encoder_only: bool = False) -> Path:
    """Write `net` as VideoMAE's .pth ({"model": state dict}): a classifier in the fine-tuning layout, a pretraining
    model in the pretraining layout (`encoder.*`, `decoder.*`); encoder_only: patch_embed.* and blocks.* alone,
    what VideoMAE's fine-tuning starts from (its fc_norm and head start fresh)."""
    kind = "pretrain" if isinstance(net, VideoMAEPretrain) else "classifier"
    state = net.state_dict()
    if encoder_only:
        kind, state = "classifier", {k: v for k, v in state.items() if k.startswith(("patch_embed.", "blocks."))}
    return ckpt.save_atomic({"model": mgm_to_videomae(state, kind)}, path)


def export_mgm(net: nn.Module, model: ModelConfig, data: DataConfig, path: str | Path) -> Path:
    """Write `net` as our checkpoint ({"model", "kind", "config"}), the file model.init and mgm.model read."""
    kind = "pretrain" if isinstance(net, VideoMAEPretrain) else "classifier"
    clip = {"num_frames": data.num_frames, "input_size": data.input_size}
    return ckpt.save_atomic({"model": net.state_dict(), "kind": kind,
                             "config": {"model": dataclasses.asdict(model), "data": clip}}, path)  # fmt: skip


def _clip_shape(src: Path, w: Weights, frames: int | None, size: int | None) -> DataConfig:
    """The clip the exported model is for: --num-frames/--input-size, else what the file says (a Hugging Face
    config, our export), else the run's config.yaml beside a checkpoints/ folder, else 16 x 224^2."""
    run_cfg = src.parent.parent / "config.yaml"
    base = load_config(run_cfg).data if src.is_file() and run_cfg.is_file() else DataConfig()
    base = dataclasses.replace(base, **w.clip)
    return dataclasses.replace(base, num_frames=frames or base.num_frames, input_size=size or base.input_size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mgm-convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="our checkpoint, a VideoMAE / V2 .pth, a .safetensors file or a Hugging Face folder")
    ap.add_argument("dst", help="output file (--to mgm, videomae) or folder (--to hf)")
    ap.add_argument("--to", required=True, choices=("mgm", "hf", "videomae"))
    ap.add_argument("--num-frames", type=int, help="clip length the exported model is for (default: the source's)")
    ap.add_argument("--input-size", type=int, help="clip height = width (default: the source's)")
    ap.add_argument("--encoder-only", action="store_true", help="drop the decoder: the encoder for fine-tuning")
    args = ap.parse_args(argv)
    try:
        w = read_weights(args.src)
        if args.encoder_only and w.kind == "pretrain":
            w.state, _ = encoder_state(w.state)
            w.kind = "classifier"
        model = model_config_for(w)
        data = _clip_shape(Path(args.src), w, args.num_frames, args.input_size)
        net, report = build(w, model, data)
        if args.to == "hf":
            export_hf(net, model, data, args.dst)
        elif args.to == "videomae":
            export_videomae(net, args.dst, encoder_only=args.encoder_only)
        else:
            export_mgm(net, model, data, args.dst)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"mgm-convert: {e}", file=sys.stderr)
        return 2
    print(f"mgm-convert: {w.layout} {w.kind} (model.size={model.size}, {data.num_frames}x{data.input_size}^2) -> "
          f"{args.dst} ({args.to}); {report.summary()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
