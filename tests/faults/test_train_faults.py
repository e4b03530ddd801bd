"""Training survives interruptions: `kill -9` mid-step or mid-checkpoint then `--resume auto` ends with the
same weights as an uninterrupted run; a full disk keeps the previous checkpoint; non-finite losses are skipped,
counted, and past train.max_bad_loss stop the run naming the step.

Runs train.py on a tiny synthetic set (4 clips of 48x64, batch 2: 2 steps per epoch, 3 epochs, checkpoints
every 3 steps, so the resumed checkpoint sits mid-epoch). Kills happen at exact points: a small wrapper patches
the step function / the checkpoint writer of the real train.py process to SIGKILL itself there.
"""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mgm.model
import train
from mgm import checkpoint as ckpt
from mgm.prep.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY = 6, 3

_WRAPPER = """
import os, signal, sys, runpy
mode, at = sys.argv[1], int(sys.argv[2])
sys.argv = ["train.py"] + sys.argv[3:]
if mode == "kill_in_step":  # SIGKILL at the start of optimizer step call number `at` (1-based)
    import mgm.engine as engine
    real_step, calls = engine._optimizer_step, [0]
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(*args, **kwargs)
    engine._optimizer_step = step
elif mode == "kill_in_save":  # SIGKILL after part of the checkpoint of step `at` reached the disk
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == at:
            f.write(b"PK\\x03\\x04 the first bytes of a zip archive")
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_set"), num=4, seed=0, size=(48, 64), num_frames=20,
                        vp9_twin=False)  # fmt: skip


def _args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["--cfg", str(REPO / "configs" / "demo.yaml"), f"data.train_list={csv}", f"train.out_dir={out}",
            "data.input_size=32", "data.num_frames=4", "data.batch_size=2", "data.num_workers=0", "data.loader=cpu",
            "model.size=tiny", "train.epochs=3", f"train.ckpt_every={CKPT_EVERY}", "train.log_every=1",
            "train.device=cpu", "train.precision=fp32", "profiling.enabled=false", *extra]  # fmt: skip


def _start(mode: str, at: int, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRAPPER), mode, str(at), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(p: subprocess.Popen) -> tuple[int, str]:
    out, err = p.communicate(timeout=180)
    return p.returncode, out + err


def _final(out: Path) -> dict:
    files = ckpt.list_checkpoints(out / "checkpoints")
    assert files and files[-1].name == f"step_{STEPS:08d}.pt", files
    return ckpt.load(files[-1])


def _same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])


@pytest.fixture(scope="module")
def killed_runs(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted run and two runs killed with SIGKILL (mid-step 5; while writing checkpoint 6), each
    then resumed with `--resume auto`; independent runs go side by side."""
    root = tmp_path_factory.mktemp("runs")
    outs = {name: root / name for name in ("full", "kill_step", "kill_save")}
    first = {
        "full": _start("none", 0, _args(tiny_set, outs["full"])),
        "kill_step": _start("kill_in_step", 5, _args(tiny_set, outs["kill_step"])),
    }
    first["kill_save"] = _start("kill_in_save", STEPS, _args(tiny_set, outs["kill_save"]))
    results = {name: _finish(p) for name, p in first.items()}
    assert results["full"][0] == 0, results["full"][1][-3000:]
    for name in ("kill_step", "kill_save"):
        assert results[name][0] == -9, results[name][1][-3000:]  # really killed, not a clean exit
    survivors = {name: sorted(p.name for p in (outs[name] / "checkpoints").iterdir()) for name in outs}
    resumed = {n: _start("none", 0, _args(tiny_set, outs[n], "--resume", "auto")) for n in ("kill_step", "kill_save")}
    for name, p in resumed.items():
        rc, log = _finish(p)
        assert rc == 0 and f"resumed from {outs[name] / 'checkpoints' / f'step_{CKPT_EVERY:08d}.pt'}" in log, log[
            -3000:
        ]
    return {**outs, "survivors": survivors}  # type: ignore[dict-item]


def test_kill_9_mid_step_then_resume_gives_the_same_weights(killed_runs: dict) -> None:
    assert killed_runs["survivors"]["kill_step"] == [f"step_{CKPT_EVERY:08d}.pt"]  # step 4 was lost with the kill
    _same_weights(_final(killed_runs["full"]), _final(killed_runs["kill_step"]))


def test_kill_9_while_writing_a_checkpoint_leaves_the_previous_one_loadable(killed_runs: dict) -> None:
    left = killed_runs["survivors"]["kill_save"]
    assert left[0] == f"step_{CKPT_EVERY:08d}.pt" and len(left) == 2  # the torn write is only a .tmp
    assert left[1].startswith(f"step_{STEPS:08d}.pt.") and left[1].endswith(".tmp")
    _same_weights(_final(killed_runs["full"]), _final(killed_runs["kill_save"]))


def _enospc_save(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):  # part of the file is written, then the disk is full
        if isinstance(obj, dict) and obj.get("step") == at_step:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)


def _run_in_process(args: list[str]) -> tuple[int | None, BaseException | None]:
    try:
        return train.main(args), None
    except Exception as e:  # noqa: BLE001 - the test inspects what escaped
        return None, e


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _enospc_save(monkeypatch, at_step=STEPS)
    _run_in_process(_args(tiny_set, tmp_path))  # whether it stops or goes on, the old checkpoint must survive
    kept = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == [f"step_{CKPT_EVERY:08d}.pt"]
    assert ckpt.load(kept[0])["step"] == CKPT_EVERY  # still complete and loadable


def test_disk_full_is_reported_cleanly(
    tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _enospc_save(monkeypatch, at_step=STEPS)
    rc, raised = _run_in_process(_args(tiny_set, tmp_path))
    out = capsys.readouterr()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the partial file does not eat the disk
    assert raised is None and rc == 0, f"escaped: {raised!r}"  # reported, and the run ends normally
    said = out.out + out.err
    assert f"step {STEPS}: checkpoint not written" in said and "No space left on device" in said
    assert f"last complete checkpoint: {tmp_path / 'checkpoints' / f'step_{CKPT_EVERY:08d}.pt'}" in said


def _nan_model(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """mgm.model.model_from_config (what train.py builds), with the loss of the forward calls in `bad_calls`
    (1-based) made NaN."""
    real_build = mgm.model.model_from_config

    def build(cfg):
        model, calls = real_build(cfg), [0]
        forward = model.forward

        def nan_forward(video, mask):
            calls[0] += 1
            loss, pred = forward(video, mask)
            return (loss * math.nan if calls[0] in bad_calls else loss), pred

        model.forward = nan_forward
        return model

    monkeypatch.setattr(mgm.model, "model_from_config", build)


def test_nan_losses_are_skipped_and_counted(
    tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _nan_model(monkeypatch, {2, 3})
    assert train.main(_args(tiny_set, tmp_path, "train.max_bad_loss=2")) == 0
    said = capsys.readouterr()
    assert "2 non-finite losses skipped" in said.out
    assert "step 1: non-finite loss" in said.out + said.err and "step 2: non-finite loss" in said.out + said.err
    final = _final(tmp_path)
    assert final["bad_loss"] == 2
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())


def test_nan_losses_past_the_limit_stop_the_run_naming_the_step(
    tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _nan_model(monkeypatch, {3, 4, 5, 6})
    assert train.main(_args(tiny_set, tmp_path, "train.max_bad_loss=2")) == 1
    err = capsys.readouterr().err
    m = re.search(r"stopped: step (\d+): non-finite loss", err)
    assert m and int(m.group(1)) == 4, err[-2000:]  # the third bad loss, at 0-based step 4
    assert "train.max_bad_loss=2" in err
