"""Training engine: optimizer, schedule, mixed precision, non-finite guard, checkpoints, logs, DDP.

`fit(model, loader, cfg.optim, cfg.train, batch_size=cfg.data.batch_size, hook=..., dist=...)` runs the whole
loop; train.py only wires things. The loader and the profiling hook are the `mgm.contracts` Protocols (dali_pipes
and profiling implement them); `NullHook` is used when no hook is given, so the loop has no `if prof:` branches.
Where the run stands and how long it runs (`Progress`, `Plan`) and its checkpoints are `mgm.train_state`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from mgm.config import OptimConfig, TrainConfig
from mgm.contracts import Batch, Hook, Loader, NullHook
from mgm.train_state import Checkpoints, Plan, Progress, plan_run


class NonFiniteLossError(RuntimeError):
    """Raised when more than train.max_bad_loss optimizer steps had a non-finite loss."""


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
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    groups: list[dict[str, Any]] | None = None,
) -> tuple[torch.optim.Optimizer, str]:
    """apex FusedAdam (AdamW mode) on CUDA when apex is importable, else torch AdamW fused, else foreach.

    groups: parameter groups (default `param_groups(model, weight_decay)`). Returns the optimizer and a name
    saying which one was built.
    """
    groups = param_groups(model, weight_decay) if groups is None else groups
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


def wrap_model(raw: nn.Module, *, ddp: bool, device: torch.device) -> nn.Module:
    """The module the loop calls: `raw` itself, or DDP(raw) with a model.compile moved from `raw` onto the wrapper.

    A model built with model.compile compiles itself in place, lazily (mgm.model). Under DDP the wrapper compiles
    instead, PyTorch's order (torch.compile(DDP(model))): dynamo then meets the model inside DDP's forward and its
    DDPOptimizer cuts the graph at DDP's gradient-bucket boundaries, so each bucket's all-reduce starts while the
    backward of the rest still runs. A graph traced outside DDP (the module called before it was wrapped) would be
    reused whole under DDP, all-reduce after the whole backward: nothing calls the model before this.
    tests/test_compile_ddp.py counts the graphs.
    """
    if not ddp:
        return raw
    net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if getattr(raw, "_compiled_call_impl", None) is not None:  # nn.Module.compile's slot: compiled in place
        raw._compiled_call_impl = None
        net.compile()
    return net


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"train.precision={precision!r}: one of bf16, fp32, auto")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class _Logger:
    """JSONL always, TensorBoard when importable and wanted, tqdm bar; rank 0 only."""

    def __init__(self, train: TrainConfig, total: int, initial: int, enabled: bool) -> None:
        out_dir = Path(train.out_dir)
        self.enabled, self.every = enabled, max(1, train.log_every)
        self.tb = self.bar = self.jsonl = None
        self.clips, self.t0 = 0, time.perf_counter()
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "log.jsonl", "a")  # noqa: SIM115 (closed in close())
        if train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard not installed: JSONL is the log of record
                self.tb = None
        if train.progress:
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


LossFn = Callable[[nn.Module, Batch, torch.device], torch.Tensor]  # (model, batch, device) -> scalar loss


def masked_video_loss(net: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """Pretraining's loss: the model's forward(video, mask[, decoder_mask]) -> (loss, pred)."""
    # decoder masking (VideoMAE V2): the batch names the masked tokens to reconstruct; else all of them
    dec = {"decoder_mask": batch["decoder_mask"].to(device, non_blocking=True)} if "decoder_mask" in batch else {}
    loss, _ = net(batch["video"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True), **dec)
    return loss


def fit(
    model: nn.Module,
    loader: Loader,
    optim: OptimConfig,
    train: TrainConfig,
    *,
    batch_size: int,
    hook: Hook | None = None,
    dist: DistInfo | None = None,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
    loss_fn: LossFn = masked_video_loss,
    groups: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train `model` on `loader` until train.epochs or train.max_steps.

    batch_size: clips per process per micro-batch (data.batch_size); device: None = train.device for this rank.
    loss_fn(net, batch, device): the loss of one micro-batch (default: pretraining's masked-video loss; fine-tuning
    passes its classification loss). groups: the optimizer's parameter groups (default `param_groups`); a group's
    "lr_scale" multiplies the scheduled lr (layer-wise lr decay).
    train.resume: "" (fresh), "auto" (newest checkpoint in out_dir/checkpoints, if any), a file or a folder.
    Returns a summary: steps, last/first logged loss, bad_loss count, optimizer name, last checkpoint path.
    """
    hook, dist = hook or NullHook(), dist or DistInfo()
    device = device or resolve_device(train.device, dist)
    say = log if dist.is_main else (lambda _msg: None)

    raw = model.to(device)
    net = wrap_model(raw, ddp=dist.world_size > 1, device=device)
    plan = plan_run(optim, train, batches_per_epoch=len(loader), batch_size=batch_size, world=dist.world_size)
    optimizer, opt_name = build_optimizer(
        raw, lr=plan.peak_lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas), device=device, groups=groups
    )
    say(f"[engine] optimizer {opt_name}, peak lr {plan.peak_lr:.3g} (total batch {plan.total_batch}), device {device}")
    ckpts = Checkpoints(Path(train.out_dir) / "checkpoints", model=raw, optimizer=optimizer, loader=loader,
                        keep_last=train.keep_last, meta=_run_meta(optim, train, dist), say=say)  # fmt: skip
    progress, loader_state = ckpts.restore(train.resume, plan)

    logger = _Logger(train, plan.total_steps, progress.step, dist.is_main)
    amp = _autocast(device, train.precision)
    first_loss, loss = None, float("nan")
    raw.train()
    try:
        for batches in _step_batches(loader, loader_state, plan, progress, hook, say):
            step, lr = progress.step, plan.lr(progress.step)  # step: 0-based number of this optimizer step
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            work = _work(batches, raw.num_tokens)
            with hook.step(**work):
                loss, grad_norm = _optimizer_step(net, optimizer, batches, amp, hook, optim.clip_grad, device, dist,
                                                  loss_fn)  # fmt: skip
            progress.advance(bad=not math.isfinite(loss))
            if not math.isfinite(loss):
                say(f"[engine] step {step}: non-finite loss {loss}, step skipped ({progress.bad_loss} so far)")
                if progress.bad_loss > train.max_bad_loss:
                    raise NonFiniteLossError(
                        f"step {step}: non-finite loss for the {progress.bad_loss}th time (train.max_bad_loss="
                        f"{train.max_bad_loss}); lower optim.base_lr or check the data"
                    )
            first_loss = loss if first_loss is None else first_loss
            end = progress.step == plan.total_steps
            logger.update(progress.step, work["clips"] * dist.world_size, end, epoch=progress.epoch, loss=loss, lr=lr,
                          grad_norm=grad_norm, bad_loss=progress.bad_loss)  # fmt: skip
            if dist.is_main and (progress.step % train.ckpt_every == 0 or end):
                ckpts.save(progress)
    finally:
        logger.close()
    return {
        "steps": progress.step,
        "epoch": progress.epoch,
        "first_loss": float("nan") if first_loss is None else first_loss,  # nan: no step ran (already finished)
        "last_loss": loss,
        "bad_loss": progress.bad_loss,
        "optimizer": opt_name,
        "peak_lr": plan.peak_lr,
        "checkpoint": str(ckpts.last) if ckpts.last else None,
        "checkpoint_errors": ckpts.errors,
    }


def _step_batches(
    loader: Loader,
    loader_state: dict[str, Any] | None,
    plan: Plan,
    progress: Progress,
    hook: Hook,
    say: Callable[[str], None],
) -> Iterator[list[Batch]]:
    """The micro-batches of each optimizer step left to run, epoch by epoch from `progress`'s position.

    The caller advances `progress` after each step; this moves it to the next epoch when one is used up, or
    when the loader runs short of len(loader) (e.g. files dropped). loader_state: where to resume mid-epoch.
    """
    while not plan.done(progress):
        loader.set_epoch(progress.epoch)
        if loader_state is not None:
            loader.load_state_dict(loader_state)
            loader_state = None
        batches_it = iter(loader)
        while progress.step_in_epoch < plan.steps_per_epoch:
            if progress.step >= plan.total_steps:
                return  # train.max_steps reached mid-epoch: this epoch is not over
            batches = _next_batches(batches_it, plan.accum, hook)
            if batches is None:  # the loader ran short of len(loader) (e.g. files dropped)
                say(f"[engine] epoch {progress.epoch} ended after {progress.step_in_epoch} of "
                    f"{plan.steps_per_epoch} steps")  # fmt: skip
                break
            yield batches
        progress.next_epoch()


def _run_meta(optim: OptimConfig, train: TrainConfig, dist: DistInfo) -> dict[str, Any]:
    """What a checkpoint records about the run beyond its state: the settings it ran with."""
    return {"config": {"optim": dataclasses.asdict(optim), "train": dataclasses.asdict(train)},
            "world_size": dist.world_size}  # fmt: skip


def _next_batches(it: Iterator[Batch], accum: int, hook: Hook) -> list[Batch] | None:
    """The next `accum` micro-batches, each fetched inside hook.wait(); None when the epoch runs out."""
    batches = []
    for _ in range(accum):
        with hook.wait():
            b = next(it, None)
        if b is None:
            return None
        batches.append(b)
    return batches


def _work(batches: list[Batch], tokens_per_clip: int) -> dict[str, Any]:
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
    batches: list[Batch],
    amp: contextlib.AbstractContextManager,
    hook: Hook,
    clip_grad: float,
    device: torch.device,
    dist: DistInfo,
    loss_fn: LossFn = masked_video_loss,
) -> tuple[float, float]:
    """Forward/backward over the micro-batches, then clip and step unless the loss is non-finite.

    clip_grad: max gradient norm, 0 = no clipping. Returns (mean loss over micro-batches and ranks, grad norm
    before clipping; nan when skipped).
    """
    accum = len(batches)
    total = torch.zeros((), device=device)
    for i, b in enumerate(batches):
        # Gradients are all-reduced once, on the last micro-batch.
        sync = i == accum - 1 or not isinstance(net, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else net.no_sync():
            with hook.phase("forward"), amp:
                loss = loss_fn(net, b, device)
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
        max_norm = clip_grad if clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss_val, grad_norm
