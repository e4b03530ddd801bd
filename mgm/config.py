"""One typed config tree for a run: YAML -> dataclass defaults -> `section.key=value` overrides.

Every key is checked against the dataclasses below: an unknown key or a value of the wrong type raises
`ConfigError` naming the key, where it came from (file or command line) and the closest valid keys.
Numbers derived from the config (token grid, masked-token count) are computed once, in `Derived`. Turning YAML and
override text into typed values (and the messages when that fails) lives in `mgm.config_parse`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mgm.config_parse import ConfigError, closest, coerce, flatten, parse_override

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DataConfig:
    train_list: str = "data/synth/train.csv"  # CSV `path,label,num_frames`, paths relative to the CSV's folder
    num_frames: int = 16  # sampled frames per clip (T)
    stride: int = 2  # source frames between two sampled frames (SSv2: 2, K400: 4)
    input_size: int = 224
    crop_scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip: bool = False  # off for SSv2 pretraining: left/right carries the label there
    short_video: str = "loop"  # clips shorter than T*stride: "loop" the indices or "clamp" to the last frame
    batch_size: int = 32  # per process, in clips
    # Repeated sampling (VideoMAE V2's num_sample): clips per read of a video, each its own start, crop, flip and
    # mask; a batch then holds batch_size / repeat videos and an epoch repeat x videos clips (dali_pipes.sampler)
    repeat: int = 1
    # Frames of the R clips: "own" (each draws its own start, as MAE-ST) | "shared" (the R clips are the same frames
    # under their own crop, flip and mask, as VideoMAE V2's num_sample: the video is decoded once for one clip)
    repeat_frames: str = "own"
    num_workers: int = 4
    loader: str = "auto"  # "dali" | "cpu" | "auto" (DALI when importable, else the PyAV fallback)
    dali_device: str = "auto"  # "gpu" (NVDEC, H.264) | "cpu" (VP8/VP9 twins) | "auto"
    twin_suffix: str = ".webm"  # DALI's CPU decoder reads VP9 copies with this suffix beside each video
    output_dtype: str = "auto"  # "float32" | "float16" | "bfloat16" | "auto" (float16 on a CUDA device, else float32)
    dali_threads: int = 0  # DALI's CPU threads, also the NVDEC decoder's thread pool; 0 = sized per path (factory)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    max_bad_fraction: float = 0.01  # stop the run when more than this share of videos fail to decode
    seed: int = 0


@dataclass
class MotionConfig:
    source: str = "online"  # "cache" (mgm-prepare motion) | "online" (read the span a clip needs)
    cache_dir: str = ""
    cell: int = 8  # motion-energy cell size in source pixels
    threads: int = 1


@dataclass
class MaskConfig:
    name: str = "mgm"  # "tube" | "random" | "mgm"
    ratio: float = 0.9
    knobs: dict[str, Any] = field(default_factory=dict)  # generator-specific keyword arguments
    # Decoder masking (VideoMAE V2): the share of ALL tokens the decoder reconstructs (its loss targets), every
    # one a masked token, so at most `ratio`. 0 = off: every masked token is a target (VideoMAE's loss).
    # VideoMAE V2's --decoder_mask_ratio is the share it does NOT reconstruct: V2's 0.5 is 0.5 here, 0.75 is 0.25.
    decoder_target_ratio: float = 0.0
    decoder_name: str = "running_cell"  # which masked tokens: "running_cell" (V2's) | "random" | "mgm" (motion first)


@dataclass
class ModelConfig:
    size: str = "base"  # "tiny" | "small" | "base" | "large" | "huge" | "giant" (VideoMAE V2's ViT-g: use patch 14)
    tubelet: int = 2
    patch: int = 16
    decoder_depth: int = 0  # 0 = the size's own decoder (base: depth 4, width 384, 6 heads)
    decoder_dim: int = 0
    decoder_heads: int = 0
    norm_pix_loss: bool = True
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    compile: bool | str = "auto"  # torch.compile: true | false | "auto" (on when training on CUDA; resolve_compile)
    # Fine-tuning (mgm.classifier): the head over the mean-pooled encoder, and the weights the encoder starts from.
    num_classes: int = 0  # classifier head outputs; 0 = no head, the classifier returns pooled features
    head_dropout: float = 0.0  # dropout before the head (VideoMAE's fc_drop_rate)
    head_init_scale: float = 0.001  # the head's initial weights and bias are scaled by this (VideoMAE's init_scale)
    init: str = ""  # checkpoint the classifier starts from: ours, a VideoMAE / V2 .pth, or a Hugging Face folder


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4  # scaled by total batch / 256
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 40.0
    clip_grad: float = 1.0  # 0 disables clipping
    accum_steps: int = 1


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    epochs: int = 800
    max_steps: int = 0  # 0 = no cap; otherwise stop after this many optimizer steps
    precision: str = "auto"  # "bf16" | "fp32" | "auto" (bf16 on GPU, fp32 on CPU)
    device: str = "auto"  # "cuda" | "cpu" | "auto"
    ckpt_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 3
    max_bad_loss: int = 20  # non-finite losses skipped before the run stops
    log_every: int = 10
    tensorboard: bool = True  # also write the log as TensorBoard scalars to out_dir/tb (when tensorboard imports)
    progress: bool = True  # a tqdm progress bar on rank 0
    seed: int = 0
    resume: str = ""  # checkpoint path, or "auto" for the newest in out_dir


@dataclass
class ProfilingConfig:
    enabled: bool = True
    nvml: bool = True
    nvtx: bool = True
    trace_steps: list[int] = field(default_factory=lambda: [0, 0])  # [a, b): torch.profiler window; [0, 0] off
    interval: int = 50  # steps per JSONL record


@dataclass
class DistConfig:
    backend: str = "auto"  # "nccl" | "gloo" | "auto"


@dataclass
class FinetuneConfig:
    """Fine-tuning, evaluation and linear probe (finetune.py; VideoMAE's fine-tuning recipe). Pretraining ignores it."""

    val_list: str = ""  # evaluation list (CSV path,label,num_frames), e.g. data/ssv2/val.csv
    temporal: str = "stride"  # clip frames: "stride" (data.stride apart; K400) | "segment" (one per T-th; SSv2)
    crop: str = "resized"  # training crop: "resized" (RandomResizedCrop) | "multiscale" (pretraining's)
    crop_area: list[float] = field(default_factory=lambda: [0.08, 1.0])  # "resized": share of the frame's area
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # "resized": box width / height
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # timm/VideoMAE --aa string (n ops, magnitude m of 10); "" = off
    reprob: float = 0.25  # random erasing probability (one box through every frame)
    mixup: float = 0.8  # mixup alpha (0 = off)
    cutmix: float = 1.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    layer_decay: float = 0.75  # lr scale decay per block from the head down (1 = off)
    test_clips: int = 2  # evaluation views per video: temporal clips x spatial crops, softmax averaged
    test_crops: int = 3
    probe_epochs: int = 100  # linear probe on cached frozen features
    probe_lr: float = 1e-3
    probe_batch_size: int = 256


@dataclass(frozen=True)
class Derived:
    """Numbers every part needs, computed once from the config."""

    grid: tuple[int, int, int]  # (T2, Hp, Wp): tubelet slots x token rows x token cols
    tokens_per_slot: int
    num_tokens: int
    masked_per_slot: int  # round(ratio * tokens_per_slot): every slot masks the same count
    num_masked: int
    num_visible: int
    num_targets: int  # tokens in the loss per clip: num_masked, or round(decoder_target_ratio * num_tokens) if fewer


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @functools.cached_property
    def derived(self) -> Derived:
        """Computed on first use, after loading; the config is not changed after that."""
        return derive(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "data.short_video": ("loop", "clamp"),
    "data.loader": ("dali", "cpu", "auto"),
    "data.dali_device": ("gpu", "cpu", "auto"),
    "data.output_dtype": ("float32", "float16", "bfloat16", "auto"),
    "motion.source": ("cache", "online"),
    "mask.name": ("tube", "random", "mgm"),
    "mask.decoder_name": ("running_cell", "random", "mgm"),
    "data.repeat_frames": ("own", "shared"),
    "model.size": ("tiny", "small", "base", "large", "huge", "giant"),
    "train.precision": ("bf16", "fp32", "auto"),
    "train.device": ("cuda", "cpu", "auto"),
    "dist.backend": ("nccl", "gloo", "auto"),
    "finetune.temporal": ("stride", "segment"),
    "finetune.crop": ("resized", "multiscale"),
}


# Allowed range of numeric keys, inclusive; None = unbounded. A list key checks each of its items.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.num_frames": (1, None),
    "data.stride": (1, None),
    "data.input_size": (1, None),
    "data.crop_scales": (1e-3, 1.0),
    "data.batch_size": (1, None),
    "data.repeat": (1, None),
    "data.num_workers": (0, None),
    "data.dali_threads": (0, None),
    "data.std": (1e-6, None),
    "data.max_bad_fraction": (0.0, 1.0),
    "mask.decoder_target_ratio": (0.0, 1.0),
    "motion.cell": (1, None),
    "motion.threads": (1, None),
    "model.tubelet": (1, None),
    "model.patch": (1, None),
    "model.decoder_depth": (0, None),
    "model.decoder_dim": (0, None),
    "model.decoder_heads": (0, None),
    "model.drop_path": (0.0, 1.0),
    "model.num_classes": (0, None),
    "model.head_dropout": (0.0, 1.0),
    "model.head_init_scale": (0.0, None),
    "optim.base_lr": (0.0, None),
    "optim.min_lr": (0.0, None),
    "optim.weight_decay": (0.0, None),
    "optim.betas": (0.0, 1.0),
    "optim.warmup_epochs": (0.0, None),
    "optim.clip_grad": (0.0, None),
    "optim.accum_steps": (1, None),
    "train.epochs": (1, None),
    "train.max_steps": (0, None),
    "train.ckpt_every": (1, None),
    "train.keep_last": (0, None),
    "train.max_bad_loss": (0, None),
    "train.log_every": (1, None),
    "profiling.trace_steps": (0, None),
    "profiling.interval": (1, None),
    "finetune.crop_area": (1e-3, 1.0),
    "finetune.crop_ratio": (1e-2, 1e2),
    "finetune.reprob": (0.0, 1.0),
    "finetune.mixup": (0.0, None),
    "finetune.cutmix": (0.0, None),
    "finetune.mixup_prob": (0.0, 1.0),
    "finetune.mixup_switch_prob": (0.0, 1.0),
    "finetune.label_smoothing": (0.0, 1.0),
    "finetune.layer_decay": (1e-3, 1.0),
    "finetune.test_clips": (1, None),
    "finetune.test_crops": (1, None),
    "finetune.probe_epochs": (1, None),
    "finetune.probe_lr": (0.0, None),
    "finetune.probe_batch_size": (1, None),
}
_LENGTHS = {"data.mean": 3, "data.std": 3, "optim.betas": 2, "profiling.trace_steps": 2, "finetune.crop_area": 2,
            "finetune.crop_ratio": 2}  # fmt: skip


def _check_ranges(cfg: Config) -> None:
    """Every number finite and inside its range (_RANGES), lists of the right length, crop_scales non-empty."""
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            key, value = f"{section.name}.{f.name}", getattr(obj, f.name)
            items = value if isinstance(value, list) else [value]
            if key in _LENGTHS and len(items) != _LENGTHS[key]:
                raise ConfigError(f"{key}: expected {_LENGTHS[key]} values, got {value!r}")
            if key == "data.crop_scales" and not items:
                raise ConfigError(f"{key}: give at least one scale, e.g. [1.0, 0.875, 0.75, 0.66]")
            lo, hi = _RANGES.get(key, (None, None))
            for v in items:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
                    bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                    raise ConfigError(f"{key}: {v!r} is outside the allowed range {bounds}")


def derive(cfg: Config) -> Derived:
    """Token grid and mask counts for a (num_frames x input_size^2) clip cut into tubelet x patch^2 tokens."""
    d, m = cfg.data, cfg.model
    if m.tubelet < 1 or m.patch < 1:
        raise ConfigError(f"model.tubelet={m.tubelet} and model.patch={m.patch} must be positive")
    if d.num_frames % m.tubelet or d.input_size % m.patch:
        raise ConfigError(
            f"data.num_frames={d.num_frames} must divide by model.tubelet={m.tubelet} and "
            f"data.input_size={d.input_size} by model.patch={m.patch}"
        )
    grid = (d.num_frames // m.tubelet, d.input_size // m.patch, d.input_size // m.patch)
    per_slot = grid[1] * grid[2]
    masked_per_slot = round(cfg.mask.ratio * per_slot)
    num_tokens = grid[0] * per_slot
    targets = round(cfg.mask.decoder_target_ratio * num_tokens) if cfg.mask.decoder_target_ratio > 0 else num_tokens
    return Derived(
        grid=grid,
        tokens_per_slot=per_slot,
        num_tokens=num_tokens,
        masked_per_slot=masked_per_slot,
        num_masked=masked_per_slot * grid[0],
        num_visible=num_tokens - masked_per_slot * grid[0],
        num_targets=min(targets, masked_per_slot * grid[0]),  # as mgm.masking.DecoderMasking counts them
    )


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if len(parts) != 2:
        every = [f"{s}.{f.name}" for s in sections for f in dataclasses.fields(getattr(cfg, s))]
        raise ConfigError(f"'{dotted}' in {source}: keys have the form section.key.{closest(dotted, every)}")
    section, key = parts
    if section not in sections:
        raise ConfigError(f"unknown section '{section}' (key '{dotted}') in {source}.{closest(section, sections)}")
    obj = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if key not in fields:
        raise ConfigError(f"unknown key '{dotted}' in {source}.{closest(key, list(fields))}")
    hints = typing.get_type_hints(type(obj))
    coerced = coerce(value, hints[key], dotted, source)
    choices = _CHOICES.get(dotted)
    if choices and coerced not in choices:
        raise ConfigError(f"{dotted}: {coerced!r} in {source} is not one of {', '.join(choices)}")
    setattr(obj, key, coerced)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `section.key=value` overrides, all type-checked."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read as UTF-8 text ({e})") from None
        try:
            tree = yaml.safe_load(text) or {}
        except (yaml.YAMLError, RecursionError) as e:  # RecursionError: absurdly deep nesting
            raise ConfigError(f"{path}: not valid YAML ({str(e)[:500]})") from None
        for key, value in flatten(tree, str(path)):
            _set(cfg, key, value, str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, "the command line")
    if not 0.0 < cfg.mask.ratio < 1.0:  # also rejects nan
        raise ConfigError(f"mask.ratio: {cfg.mask.ratio} must lie strictly between 0 and 1")
    _check_ranges(cfg)
    if cfg.data.batch_size % cfg.data.repeat:
        raise ConfigError(f"data.repeat={cfg.data.repeat} must divide data.batch_size={cfg.data.batch_size}: a batch "
                          "of B clips holds B / repeat videos")  # fmt: skip
    g = derive(cfg)  # fail now, not mid-run, on an impossible grid
    if g.masked_per_slot in (0, g.tokens_per_slot):
        raise ConfigError(
            f"mask.ratio={cfg.mask.ratio} masks {g.masked_per_slot} of the {g.tokens_per_slot} tokens of each "
            f"slot ({g.grid[1]}x{g.grid[2]} grid from data.input_size / model.patch): nothing to learn from"
        )
    gen = mask_generator(cfg.mask.name, cfg.mask.ratio, g.grid, cfg.mask.knobs)  # a knob typo fails here
    if cfg.mask.decoder_target_ratio > 0:
        decoder_generator(cfg.mask.decoder_name, cfg.mask.decoder_target_ratio, gen)
    if isinstance(cfg.model.compile, str) and cfg.model.compile != "auto":
        raise ConfigError(f"model.compile: {cfg.model.compile!r} is not one of true, false, auto")
    if cfg.finetune.rand_augment:
        rand_augment_ops(cfg.finetune.rand_augment)
    return cfg


def decoder_generator(name: str, target_ratio: float, encoder: Any) -> Any:
    """mgm.masking.build_decoder_masking(name, target_ratio, encoder), with a ConfigError naming the mask keys."""
    from mgm.masking import build_decoder_masking

    try:
        return build_decoder_masking(name, target_ratio, encoder)
    except ValueError as e:
        raise ConfigError(
            f"mask.decoder_target_ratio={target_ratio} (mask.decoder_name={name}, mask.ratio={encoder.ratio}): {e}"
        ) from None


def resolve_compile(setting: bool | str, device_type: str) -> bool:
    """model.compile for a run on `device_type` ("cuda" | "cpu" | ...): true/false as given, "auto" = on CUDA only
    (on the CPU, compiling needs a C++ compiler and adds start-up time)."""
    return device_type == "cuda" if setting == "auto" else bool(setting)


def rand_augment_ops(spec: str) -> tuple[int, int]:
    """timm's RandAugment string ("rand-m7-n4-mstd0.5-inc1", VideoMAE's --aa) -> (ops per clip n, magnitude m of 10).

    mstd (magnitude noise) and inc (timm's increasing-strength op variants) are accepted so VideoMAE's string reads
    as is; torchvision's and DALI's RandAugment, which the loaders run, have neither (fixed magnitude).
    """
    parts = spec.split("-")
    rest = [p for p in parts[1:] if not p.startswith(("mstd", "inc"))]
    known = {p[0]: p[1:] for p in rest if p[:1] in ("m", "n")}
    others = [p for p in rest if p[:1] not in ("m", "n")]
    try:
        n, m = int(known.get("n", "2")), int(known.get("m", "9"))
    except ValueError:
        n = m = -1
    if parts[0] != "rand" or others or not (n >= 1 and 0 <= m <= 10):
        raise ConfigError(f"finetune.rand_augment: {spec!r} is not a RandAugment string like rand-m7-n4-mstd0.5-inc1 "
                          "(n ops >= 1, magnitude m in 0..10), or \"\" for none")  # fmt: skip
    return n, m


def mask_generator(name: str, ratio: float, grid: tuple[int, int, int], knobs: dict[str, Any]) -> Any:
    """mgm.masking.build_masking(name, ratio, grid, **knobs), with the config's errors: an unknown knob, a wrong
    type or a value out of range is a ConfigError naming `mask.knobs.<key>` and the generator's knobs."""
    import inspect

    from mgm.masking import GENERATORS, build_masking

    if name not in GENERATORS:
        raise ConfigError(f"mask.name: {name!r} is not one of {', '.join(GENERATORS)}")
    init = GENERATORS[name].__init__
    valid = [p for p in inspect.signature(init).parameters if p not in ("self", "ratio", "grid")]
    hints = typing.get_type_hints(init)
    for key, value in knobs.items():
        if key not in valid:
            takes = f"takes the knobs {', '.join(valid)}" if valid else "takes no knobs"
            hint = closest(str(key), valid) if valid else ""
            raise ConfigError(f"unknown key 'mask.knobs.{key}': mask.name={name} {takes}.{hint}")
        coerce(value, hints[key], f"mask.knobs.{key}", "the config")
    try:
        return build_masking(name, ratio, grid, **knobs)
    except ValueError as e:
        raise ConfigError(f"mask.knobs of mask.name={name}: {e}") from None


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with `load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
