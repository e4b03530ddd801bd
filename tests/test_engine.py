"""Engine: schedule, parameter groups, optimizer choice, training lowers the loss, exact resume, the
non-finite guard, checkpoint rotation, gradient accumulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _fakes import FakeLoader, KillAt, tiny_model

from mgm import checkpoint as ckpt
from mgm.config import OptimConfig, TrainConfig
from mgm.engine import NonFiniteLossError, build_optimizer, fit, param_groups
from mgm.lr_sched import lr_at
from mgm.train_state import plan_run


def _quiet(_msg: str) -> None:
    pass


def _fit(model: torch.nn.Module, loader: FakeLoader, out: Path, *, optim: dict[str, Any] | None = None,
         hook: Any = None, log: Any = _quiet, **train: Any) -> dict[str, Any]:  # fmt: skip
    """fit() with these tests' settings: `optim` sets OptimConfig keys, the other keywords TrainConfig keys."""
    o = OptimConfig(**{"base_lr": 0.05, "warmup_epochs": 0.5, "min_lr": 0.0, **(optim or {})})
    t = TrainConfig(**{"out_dir": str(out), "epochs": 2, "ckpt_every": 1000, "log_every": 1, "device": "cpu",
                       "progress": False, "tensorboard": False, **train})  # fmt: skip
    return fit(model, loader, o, t, batch_size=loader.batch_size, hook=hook, log=log)


def test_lr_schedule_warms_up_then_decays_to_min() -> None:
    lrs = [lr_at(s, peak_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110) for s in range(111)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.55)


def test_plan_caps_the_run_not_the_schedule() -> None:
    optim, train = OptimConfig(base_lr=1e-3, warmup_epochs=1.0, accum_steps=2), TrainConfig(epochs=4)
    full = plan_run(optim, train, batches_per_epoch=10, batch_size=8, world=2)
    assert (full.steps_per_epoch, full.total_steps, full.warmup_steps, full.total_batch) == (5, 20, 5, 32)
    assert full.peak_lr == pytest.approx(1e-3 * 32 / 256)
    capped = plan_run(optim, TrainConfig(epochs=4, max_steps=7), batches_per_epoch=10, batch_size=8, world=2)
    assert capped.total_steps == 7 and [capped.lr(s) for s in range(7)] == [full.lr(s) for s in range(7)]
    with pytest.raises(ValueError, match="optim.accum_steps=2"):
        plan_run(optim, train, batches_per_epoch=1, batch_size=8, world=1)


def test_no_weight_decay_on_norms_biases_and_tokens() -> None:
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert {"mask_token", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.norm1.weight"} <= nd
    assert {"patch_embed.proj.bias", "head.bias"} <= nd
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} <= d
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(d) + len(nd) == len(list(model.parameters()))


def test_cpu_optimizer_is_fused_adamw() -> None:
    opt, name = build_optimizer(tiny_model(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), device=torch.device("cpu"))
    assert name == "torch.optim.AdamW(fused=True)" and opt.defaults["fused"]


def test_short_cpu_run_lowers_the_loss(tmp_path: Path) -> None:
    model = tiny_model()
    out = _fit(model, FakeLoader(8, 2), tmp_path, epochs=10, optim={"base_lr": 0.3})
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert out["steps"] == len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # deterministic: ~1.07 -> ~0.92
    assert out["checkpoint"] and Path(out["checkpoint"]).is_file()


@pytest.mark.parametrize("kill_at", [3, 4])  # 3: at an epoch boundary (3 steps per epoch); 4: mid-epoch
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path, kill_at: int) -> None:
    # drop_path draws from torch's RNG every step, so the RNG state must come back too.
    kw = dict(epochs=3, ckpt_every=1, keep_last=2)
    full = tiny_model(drop_path=0.2)
    _fit(full, FakeLoader(6, 2), tmp_path / "full", **kw)

    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_model(drop_path=0.2), FakeLoader(6, 2), run, hook=KillAt(kill_at), **kw)
    assert ckpt.list_checkpoints(run / "checkpoints")[-1].name == f"step_{kill_at:08d}.pt"
    torch.manual_seed(123)  # the restored RNG state, not this, must drive the rest of the run
    resumed = tiny_model(seed=99, drop_path=0.2)  # different init: everything must come from the checkpoint
    out = _fit(resumed, FakeLoader(6, 2), run, resume="auto", **kw)
    assert out["steps"] == 9
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_non_finite_loss_is_skipped_then_stops_naming_the_step(tmp_path: Path) -> None:
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    out = _fit(model, FakeLoader(4, 2, nan_at=frozenset({0})), tmp_path / "a", epochs=1)
    assert out["bad_loss"] == 1 and out["steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    with pytest.raises(NonFiniteLossError, match="step 1:"):
        _fit(tiny_model(), FakeLoader(4, 2, nan_at=frozenset({1})), tmp_path / "b", max_bad_loss=0)


def test_checkpoints_rotate_and_are_complete(tmp_path: Path) -> None:
    _fit(tiny_model(), FakeLoader(8, 2), tmp_path, epochs=1, ckpt_every=1, keep_last=2)
    files = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [f.name for f in files] == ["step_00000003.pt", "step_00000004.pt"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    state = ckpt.load(files[-1])
    assert state["step"] == 4 and state["loader"] == {"epoch": 0, "position": 4}
    assert (state["epoch"], state["step_in_epoch"], state["bad_loss"]) == (0, 4, 0)
    assert {"model", "optimizer", "rng", "config", "world_size"} <= set(state)
    assert state["config"]["optim"]["base_lr"] == 0.05 and state["config"]["train"]["keep_last"] == 2


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    # Same 4 clips per step: one batch of 4 vs two micro-batches of 2 (equal mask counts, so equal mean loss).
    a, b = tiny_model(), tiny_model()
    _fit(a, FakeLoader(4, 4), tmp_path / "a", epochs=1, optim={"base_lr": 0.01})
    _fit(b, FakeLoader(4, 2), tmp_path / "b", epochs=1, optim={"base_lr": 0.01, "accum_steps": 2})
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _fit(tiny_model(), FakeLoader(4, 2), tmp_path, resume=str(tmp_path / "nope.pt"))


def test_failed_checkpoint_write_is_reported_and_training_goes_on(tmp_path: Path, monkeypatch: Any) -> None:
    real_save, said = torch.save, []

    def full_disk(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        if isinstance(obj, dict) and obj.get("step") == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    out = _fit(tiny_model(), FakeLoader(6, 2), tmp_path, epochs=1, ckpt_every=1, log=said.append)
    assert out["steps"] == 3 and out["checkpoint_errors"] == 1 and out["checkpoint"].endswith("step_00000003.pt")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001.pt", "step_00000003.pt"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert any("step 2: checkpoint not written" in m and "No space left" in m and "step_00000001.pt" in m for m in said)


class _ShortLoader(FakeLoader):
    """Claims one batch more per epoch than it yields (as when bad files are dropped mid-epoch)."""

    def __len__(self) -> int:
        return super().__len__() + 1

    def __iter__(self):  # type: ignore[override]
        it = super().__iter__()
        return iter([next(it) for _ in range(super().__len__() - self.position)])


def test_a_loader_running_short_ends_the_epoch_instead_of_crashing(tmp_path: Path) -> None:
    said: list[str] = []
    out = _fit(tiny_model(), _ShortLoader(4, 2), tmp_path, epochs=2, log=said.append)
    assert out["steps"] == 4 and out["epoch"] == 2
    assert sum("ended after 2 of 3 steps" in m for m in said) == 2


def test_resuming_a_finished_run_trains_no_further(tmp_path: Path) -> None:
    _fit(tiny_model(), FakeLoader(4, 2), tmp_path, epochs=1)
    model = tiny_model(seed=5)
    out = _fit(model, FakeLoader(4, 2), tmp_path, epochs=1, resume="auto")
    assert out["steps"] == 2 and out["first_loss"] != out["first_loss"]  # nan: nothing ran
    saved = ckpt.load(out["checkpoint"])["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
