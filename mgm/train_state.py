"""Where a training run stands and how long it runs; the checkpoint that lets a killed run go on exactly.

- `Progress`: the position (optimizer step, epoch, step within it, non-finite losses so far), saved in every
  checkpoint under the same names;
- `Plan`: the numbers fixed at start from optim.* / train.* and the loader's length (steps, warmup, peak LR);
- `Checkpoints`: model, optimizer, progress, loader position and every RNG state in one atomic file, so a run
  killed at any point and resumed from its newest checkpoint ends with bit-identical weights. The file holds
  tensors and plain Python only and is read with weights_only (mgm.checkpoint), so resuming runs no code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgm import checkpoint as ckpt
from mgm.config import OptimConfig, TrainConfig
from mgm.contracts import Loader
from mgm.lr_sched import lr_at, scaled_lr


@dataclass
class Progress:
    step: int = 0  # optimizer steps done (skipped non-finite ones included)
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in `epoch`
    bad_loss: int = 0  # steps skipped for a non-finite loss

    def advance(self, *, bad: bool) -> None:
        """Count one optimizer step; `bad` = its loss was non-finite and it was skipped."""
        self.step, self.step_in_epoch, self.bad_loss = self.step + 1, self.step_in_epoch + 1, self.bad_loss + int(bad)

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0


@dataclass(frozen=True)
class Plan:
    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int
    epochs: int
    total_steps: int  # where this run stops: the end of `epochs`, or train.max_steps when that comes first
    schedule_steps: int  # what the LR schedule spans: always `epochs`, so a capped run is a prefix of a long one
    warmup_steps: int
    peak_lr: float  # optim.base_lr scaled to the total batch
    min_lr: float
    total_batch: int  # clips per optimizer step over all ranks

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        return lr_at(step, peak_lr=self.peak_lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                     total_steps=self.schedule_steps)  # fmt: skip

    def done(self, p: Progress) -> bool:
        return p.step >= self.total_steps or p.epoch >= self.epochs


def plan_run(optim: OptimConfig, train: TrainConfig, *, batches_per_epoch: int, batch_size: int, world: int) -> Plan:
    """The run's length and LR schedule for `batches_per_epoch` micro-batches of `batch_size` clips per rank."""
    accum = max(1, optim.accum_steps)
    steps_per_epoch = batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise ValueError(f"loader yields {batches_per_epoch} batches per epoch, fewer than optim.accum_steps={accum}")
    schedule_steps = steps_per_epoch * train.epochs
    total_batch = batch_size * accum * world
    return Plan(
        accum=accum,
        steps_per_epoch=steps_per_epoch,
        epochs=train.epochs,
        total_steps=min(schedule_steps, train.max_steps) if train.max_steps > 0 else schedule_steps,
        schedule_steps=schedule_steps,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        peak_lr=scaled_lr(optim.base_lr, total_batch),
        min_lr=optim.min_lr,
        total_batch=total_batch,
    )


class Checkpoints:
    """A run's checkpoints in `ckpt_dir`: restore the newest (or a named one), save atomically, keep the last few.

    meta: what describes the run without being needed to resume it (its settings, world size). `last` is the
    newest complete checkpoint this run wrote or resumed from; `errors` counts writes that failed (a full disk
    is reported through `say` and training goes on: the previous checkpoint stays valid).
    """

    def __init__(
        self,
        ckpt_dir: Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Loader,
        keep_last: int,
        meta: dict[str, Any],
        say: Callable[[str], None],
    ) -> None:
        self.dir, self.model, self.optimizer, self.loader = ckpt_dir, model, optimizer, loader
        self.keep_last, self.meta, self.say = keep_last, meta, say
        self.last: Path | None = None
        self.errors = 0

    def restore(self, resume: str, plan: Plan) -> tuple[Progress, dict[str, Any] | None]:
        """Load the checkpoint train.resume names ("" = none, "auto" = the newest here, if any) into the model,
        optimizer and RNGs. Returns the progress to go on from and the loader state to load before the first
        batch (None: the epoch starts at its beginning, as after a checkpoint written at an epoch's end)."""
        self.last = ckpt.resolve_resume(resume, self.dir)
        if self.last is None:
            return Progress(), None
        state = ckpt.load(self.last)  # weights_only: a checkpoint is data, never code
        ckpt.load_state(self.model, state["model"], source=str(self.last))  # a size mismatch names tensor and key
        self.optimizer.load_state_dict(state["optimizer"])
        p = Progress(**{f.name: state[f.name] for f in dataclasses.fields(Progress)})
        loader_state = state["loader"]
        if p.step_in_epoch >= plan.steps_per_epoch:
            p.next_epoch()
            loader_state = None
        ckpt.set_rng_state(state["rng"])
        self.say(f"[engine] resumed from {self.last} at step {p.step} (epoch {p.epoch}, step {p.step_in_epoch} in it)")
        return p, loader_state

    def save(self, progress: Progress) -> None:
        """Write step_<progress.step>.pt atomically, then delete all but the newest `keep_last`."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **dataclasses.asdict(progress),
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            **self.meta,
        }
        try:
            self.last = ckpt.save_atomic(state, ckpt.checkpoint_path(self.dir, progress.step))
        except OSError as e:  # e.g. a full disk
            self.errors += 1
            kept = ckpt.list_checkpoints(self.dir)
            self.say(f"[engine] step {progress.step}: checkpoint not written ({e}); last complete checkpoint: "
                     f"{kept[-1] if kept else 'none'}")  # fmt: skip
            return
        ckpt.prune(self.dir, self.keep_last)
