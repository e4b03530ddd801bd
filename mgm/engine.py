"""Training engine: optimizer, schedule, mixed precision, non-finite guard, checkpoints, logs, DDP.

`fit(model, loader, opts, hook=..., dist=..., resume=...)` runs the whole loop; train.py only wires things.
The loader is anything with __iter__, __len__, set_epoch, state_dict, load_state_dict yielding dict batches
(video (B,3,T,H,W), mask (B,N) bool True = masked, mask_time (B,) seconds). The profiling hook is passed in
(wait/step/phase/close); `NullHook` is used when none is given, so the loop has no `if prof:` branches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from mgm import checkpoint as ckpt
from mgm.lr_sched import lr_at, scaled_lr


class NullHook:
    """The profiling hook contract with every method a no-op."""

    @contextlib.contextmanager
    def wait(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def step(self, *, clips: int, frames: int, tokens: int, mask_seconds: float) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def close(self) -> dict[str, Any]:
        return {}


class NonFiniteLossError(RuntimeError):
    """Raised when more than `max_bad_loss` optimizer steps had a non-finite loss."""


@dataclass
class TrainOptions:
    """Plain training settings; field names match config sections optim.* and train.* (see `train_options`)."""

    out_dir: str
    epochs: int
    batch_size: int  # clips per process per micro-batch
    max_steps: int = 0  # 0 = no cap; the schedule still spans `epochs` so a capped run is a prefix of a long one
    base_lr: float = 1.5e-4  # scaled by total batch / 256
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 40.0
    clip_grad: float = 1.0  # 0 disables clipping
    accum_steps: int = 1
    precision: str = "auto"  # "bf16" | "fp32" | "auto" (bf16 on CUDA, fp32 on CPU)
    ckpt_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 3
    max_bad_loss: int = 20
    log_every: int = 10
    seed: int = 0
    compile: bool = False
    tensorboard: bool = True
    progress: bool = True


def train_options(optim: Any, train: Any, *, batch_size: int, **extra: Any) -> TrainOptions:
    """Build TrainOptions from two objects with same-named attributes (e.g. cfg.optim and cfg.train)."""
    names = {f.name for f in dataclasses.fields(TrainOptions)}
    kw = {n: getattr(src, n) for src in (optim, train) for n in names if hasattr(src, n)}
    return TrainOptions(**{**kw, "batch_size": batch_size, **extra})


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(backend: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise.

    backend "auto" is NCCL when CUDA is available, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def resolve_device(device: str, dist: DistInfo | None = None) -> torch.device:
    """ "auto" -> this rank's CUDA device when there is one, else the CPU."""
    local = dist.local_rank if dist else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available (use train.device=cpu or auto)")
        return torch.device("cuda", local)
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weight matrices; no decay for norms, biases, q/v biases, position terms, mask token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "mask_token" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], device: torch.device
) -> tuple[torch.optim.Optimizer, str]:
    """apex FusedAdam (AdamW mode) on CUDA when apex is importable, else torch AdamW fused, else foreach.

    Returns the optimizer and a name saying which one was built.
    """
    groups = param_groups(model, weight_decay)
    betas = (float(betas[0]), float(betas[1]))
    if device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # NVIDIA apex, never the unrelated PyPI "apex"

            return FusedAdam(groups, lr=lr, betas=betas, adam_w_mode=True), "apex.optimizers.FusedAdam"
        except Exception:  # apex missing or built without its CUDA extensions
            pass
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True), "torch.optim.AdamW(fused=True)"
    except (RuntimeError, ValueError):  # fused kernel not available for this device / dtype
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True), "torch.optim.AdamW(foreach=True)"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"train.precision={precision!r}: one of bf16, fp32, auto")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class _Logger:
    """JSONL always, TensorBoard when importable and wanted, tqdm bar; rank 0 only."""

    def __init__(self, out_dir: Path, total: int, initial: int, opts: TrainOptions, enabled: bool) -> None:
        self.enabled, self.every = enabled, max(1, opts.log_every)
        self.tb = self.bar = self.jsonl = None
        self.clips, self.t0 = 0, time.perf_counter()
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "log.jsonl", "a")  # noqa: SIM115 (closed in close())
        if opts.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard not installed: JSONL is the log of record
                self.tb = None
        if opts.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, clips: int, force: bool, **fields: float) -> None:
        """Count one optimizer step of `clips` clips (all ranks); write a record every log_every steps."""
        self.clips += clips
        if self.bar is not None:
            self.bar.update(1)
        if not self.enabled or (step % self.every and not force):
            return
        now = time.perf_counter()
        rec = {"step": step, **fields, "clips_per_s": self.clips / max(now - self.t0, 1e-9)}
        self.clips, self.t0 = 0, now
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", clips_s=f"{rec['clips_per_s']:.1f}")

    def close(self) -> None:
        for h in (self.bar, self.tb, self.jsonl):
            if h is not None:
                h.close()


def fit(
    model: nn.Module,
    loader: Any,
    opts: TrainOptions,
    *,
    hook: Any = None,
    dist: DistInfo | None = None,
    device: torch.device | str = "auto",
    resume: str | Path = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train `model` (forward(video, mask) -> (loss, pred)) on `loader` until `opts.epochs` or `opts.max_steps`.

    resume: "" (fresh), "auto" (newest checkpoint in out_dir/checkpoints, if any), a file or a folder.
    Returns a summary: steps, last/first logged loss, bad_loss count, optimizer name, last checkpoint path.
    """
    hook = hook or NullHook()
    dist = dist or DistInfo()
    device = resolve_device(device, dist) if isinstance(device, str) else device
    out_dir, ckpt_dir = Path(opts.out_dir), Path(opts.out_dir) / "checkpoints"
    say = log if dist.is_main else (lambda _msg: None)

    raw = model.to(device)
    if opts.compile:
        raw.compile()  # in place: state_dict keys stay unprefixed
    net: nn.Module = raw
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    accum = max(1, opts.accum_steps)
    total_batch = opts.batch_size * accum * dist.world_size
    peak_lr = scaled_lr(opts.base_lr, total_batch)
    optimizer, opt_name = build_optimizer(
        raw, lr=peak_lr, weight_decay=opts.weight_decay, betas=tuple(opts.betas), device=device
    )
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"loader yields {len(loader)} batches per epoch, fewer than accum_steps={accum}")
    schedule_steps = steps_per_epoch * opts.epochs
    total_steps = min(schedule_steps, opts.max_steps) if opts.max_steps > 0 else schedule_steps
    warmup_steps = round(opts.warmup_epochs * steps_per_epoch)
    say(f"[engine] optimizer {opt_name}, peak lr {peak_lr:.3g} (total batch {total_batch}), device {device}")

    step, epoch, in_epoch, bad, loader_state = 0, 0, 0, 0, None
    path = ckpt.resolve_resume(resume, ckpt_dir)
    if path is not None:
        state = ckpt.load(path)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, in_epoch, bad = state["step"], state["epoch"], state["step_in_epoch"], state["bad_loss"]
        loader_state = state["loader"]
        if in_epoch >= steps_per_epoch:  # saved at an epoch's end: the next one starts fresh
            epoch, in_epoch, loader_state = epoch + 1, 0, None
        ckpt.set_rng_state(state["rng"])
        say(f"[engine] resumed from {path} at step {step} (epoch {epoch}, step {in_epoch} in it)")

    logger = _Logger(out_dir, total_steps, step, opts, dist.is_main)
    amp = _autocast(device, opts.precision)
    last_ckpt, first_loss, loss_val, ckpt_errors = path, None, float("nan"), 0
    raw.train()
    try:
        while step < total_steps and epoch < opts.epochs:
            loader.set_epoch(epoch)
            if loader_state is not None:
                loader.load_state_dict(loader_state)
                loader_state = None
            batches_it = iter(loader)
            while in_epoch < steps_per_epoch and step < total_steps:
                batches = _next_batches(batches_it, accum, hook)
                if batches is None:  # the loader ran short of len(loader) (e.g. files dropped): next epoch
                    say(f"[engine] epoch {epoch} ended after {in_epoch} of {steps_per_epoch} steps")
                    in_epoch = steps_per_epoch
                    break
                lr = lr_at(
                    step, peak_lr=peak_lr, min_lr=opts.min_lr, warmup_steps=warmup_steps, total_steps=schedule_steps
                )
                for g in optimizer.param_groups:
                    g["lr"] = lr
                work = _work(batches, raw.num_tokens)
                with hook.step(**work):
                    loss_val, grad_norm = _optimizer_step(net, optimizer, batches, amp, hook, opts, device, dist)
                step, in_epoch = step + 1, in_epoch + 1
                if not math.isfinite(loss_val):
                    bad += 1
                    say(f"[engine] step {step - 1}: non-finite loss {loss_val}, step skipped ({bad} so far)")
                    if bad > opts.max_bad_loss:
                        raise NonFiniteLossError(
                            f"step {step - 1}: non-finite loss for the {bad}th time (train.max_bad_loss="
                            f"{opts.max_bad_loss}); lower optim.base_lr or check the data"
                        )
                first_loss = loss_val if first_loss is None else first_loss
                logger.update(step, work["clips"] * dist.world_size, step == total_steps, epoch=epoch,
                              loss=loss_val, lr=lr, grad_norm=grad_norm, bad_loss=bad)  # fmt: skip
                if step % opts.ckpt_every == 0 or step == total_steps:
                    try:
                        last_ckpt = _save(raw, optimizer, loader, step, epoch, in_epoch, bad, opts, ckpt_dir, dist)
                    except OSError as e:  # e.g. a full disk: keep training, the previous checkpoint stays valid
                        ckpt_errors += 1
                        kept = ckpt.list_checkpoints(ckpt_dir)
                        say(f"[engine] step {step}: checkpoint not written ({e}); last complete checkpoint: "
                            f"{kept[-1] if kept else 'none'}")  # fmt: skip
            if in_epoch >= steps_per_epoch:
                epoch, in_epoch = epoch + 1, 0
    finally:
        logger.close()
    return {
        "steps": step,
        "epoch": epoch,
        "first_loss": float("nan") if first_loss is None else first_loss,  # nan: no step ran (already finished)
        "last_loss": loss_val,
        "bad_loss": bad,
        "optimizer": opt_name,
        "peak_lr": peak_lr,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "checkpoint_errors": ckpt_errors,
    }


def _next_batches(it: Iterator[dict[str, torch.Tensor]], accum: int, hook: Any) -> list | None:
    """The next `accum` micro-batches, each fetched inside hook.wait(); None when the epoch runs out."""
    batches = []
    for _ in range(accum):
        with hook.wait():
            b = next(it, None)
        if b is None:
            return None
        batches.append(b)
    return batches


def _work(batches: list[dict[str, torch.Tensor]], tokens_per_clip: int) -> dict[str, Any]:
    """What one optimizer step processes on this rank, in the hook.step(...) keywords."""
    clips = sum(b["video"].shape[0] for b in batches)
    return {
        "clips": clips,
        "frames": clips * batches[0]["video"].shape[2],
        "tokens": clips * tokens_per_clip,
        "mask_seconds": float(sum(float(b["mask_time"].sum()) for b in batches if "mask_time" in b)),
    }


def _optimizer_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[dict[str, torch.Tensor]],
    amp: contextlib.AbstractContextManager,
    hook: Any,
    opts: TrainOptions,
    device: torch.device,
    dist: DistInfo,
) -> tuple[float, float]:
    """Forward/backward over the micro-batches, then clip and step unless the loss is non-finite.

    Returns (mean loss over micro-batches and ranks, grad norm before clipping; nan when skipped).
    """
    accum = len(batches)
    total = torch.zeros((), device=device)
    for i, b in enumerate(batches):
        # Gradients are all-reduced once, on the last micro-batch.
        sync = i == accum - 1 or not isinstance(net, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else net.no_sync():
            with hook.phase("forward"), amp:
                loss, _ = net(b["video"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True))
            with hook.phase("backward"):
                (loss / accum).backward()
        total += loss.detach().float()
    if dist.world_size > 1:  # every rank takes the same skip decision
        tdist.all_reduce(total)
    loss_val = total.item() / (accum * dist.world_size)
    if not math.isfinite(loss_val):
        optimizer.zero_grad(set_to_none=True)
        return loss_val, float("nan")
    with hook.phase("optimizer"):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip = opts.clip_grad if opts.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss_val, grad_norm


def _save(
    raw: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    step: int,
    epoch: int,
    in_epoch: int,
    bad: int,
    opts: TrainOptions,
    ckpt_dir: Path,
    dist: DistInfo,
) -> Path | None:
    """Rank 0 writes model, optimizer, position, loader state and RNG atomically, then prunes old files."""
    if not dist.is_main:
        return None
    state = {
        "model": raw.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": None,  # bf16 needs no loss scaler; the key keeps the file layout stable
        "step": step,
        "epoch": epoch,
        "step_in_epoch": in_epoch,
        "bad_loss": bad,
        "loader": loader.state_dict(),
        "rng": ckpt.rng_state(),
        "options": dataclasses.asdict(opts),
        "world_size": dist.world_size,
    }
    path = ckpt.save_atomic(state, ckpt.checkpoint_path(ckpt_dir, step))
    ckpt.prune(ckpt_dir, opts.keep_last)
    return path
