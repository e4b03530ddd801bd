"""Untrusted checkpoints: a pickle that would run code is refused by every loader, naming the file, and nothing
runs; our own checkpoints hold only tensors and plain Python (the numpy RNG state as a tensor), so they load with
weights_only and resume exactly; older files with a numpy RNG array still load; a resumed model of another size
is named, tensor and config key."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _fakes import CLIP, FakeLoader, tiny_model

from mgm import checkpoint as ckpt
from mgm import convert
from mgm.checkpoint import CheckpointError, CheckpointMismatch
from mgm.config import ModelConfig, OptimConfig, TrainConfig
from mgm.model import VideoMAEPretrain
from mgm.train_state import Checkpoints, Plan, Progress, plan_run


class _Payload:
    """Unpickling this calls open(marker, "w"), creating the marker file: code run by merely loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def _evil(tmp_path: Path, name: str = "evil.pth") -> tuple[Path, Path]:
    """A checkpoint that looks like VideoMAE's ({"model": weights}) with the payload beside the weights."""
    marker, path = tmp_path / "pwned", tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": tiny_model().state_dict(), "args": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def _checkpoints(model: torch.nn.Module, ckpt_dir: Path) -> Checkpoints:
    opt = torch.optim.AdamW(model.parameters())
    return Checkpoints(ckpt_dir, model=model, optimizer=opt, loader=FakeLoader(4, 2), keep_last=2,
                       meta={}, say=lambda _m: None)  # fmt: skip


def _plan() -> Plan:
    return plan_run(OptimConfig(), TrainConfig(epochs=1), batches_per_epoch=2, batch_size=2, world=1)


LOADERS = {
    "checkpoint.load": lambda p, tmp: ckpt.load(p),
    "convert.read_weights": lambda p, tmp: convert.read_weights(p),
    "model.init": lambda p, tmp: convert.classifier_from_file(p, ModelConfig(size="tiny", num_classes=3), CLIP),
    "train.resume": lambda p, tmp: _checkpoints(tiny_model(), p.parent).restore(str(p), _plan()),
}


@pytest.mark.parametrize("loader", LOADERS)
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path: Path, loader: str) -> None:
    path, marker = _evil(tmp_path, "checkpoints/step_00000002.pt" if loader == "train.resume" else "evil.pth")
    with pytest.raises(CheckpointError) as e:
        LOADERS[loader](path, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused") and "it asks for io.open" in msg
    assert not marker.exists()


def test_mgm_convert_refuses_it_with_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = _evil(tmp_path)
    assert convert.main([str(path), str(tmp_path / "out.pt"), "--to", "mgm"]) == 2
    assert f"mgm-convert: {path}: refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_the_payload_is_live_so_the_refusals_mean_something(tmp_path: Path) -> None:
    path, marker = _evil(tmp_path)
    torch.load(path, weights_only=False)  # what the project used to do with its own checkpoints
    assert marker.exists()


def test_own_checkpoint_is_plain_and_resumes_every_rng(tmp_path: Path) -> None:
    model = tiny_model()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves half a Box-Muller pair cached (has_gauss): saved too
    _checkpoints(model, tmp_path).save(Progress(step=2))
    expect = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state = torch.load(ckpt.checkpoint_path(tmp_path, 2), weights_only=True)  # no allow-list needed
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    progress, _ = _checkpoints(tiny_model(seed=5), tmp_path).restore("auto", _plan())
    assert progress.step == 2
    got = (random.random(), np.random.randn(3), torch.rand(3))
    assert got[0] == expect[0] and np.array_equal(got[1], expect[1]) and torch.equal(got[2], expect[2])


def test_older_checkpoint_with_numpy_rng_array_still_loads(tmp_path: Path) -> None:
    np.random.seed(4)
    torch.save({"rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}},
               tmp_path / "old.pt")  # fmt: skip
    expect = np.random.rand(4)
    ckpt.set_rng_state(ckpt.load(tmp_path / "old.pt")["rng"])
    assert np.array_equal(np.random.rand(4), expect)


def test_unsaveable_state_fails_before_writing_naming_its_place(tmp_path: Path) -> None:
    assert ckpt.plain({"a": np.int64(3), "b": [np.float32(0.5)], "c": np.arange(3)})["a"] == 3
    with pytest.raises(TypeError, match=r"checkpoint\['loader'\]\['sampler'\]: object cannot be saved"):
        ckpt.save_atomic({"loader": {"sampler": object()}}, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_safetensors_files_load_and_bad_ones_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(4.0)}, tmp_path / "ok.safetensors")
    assert torch.equal(ckpt.load(tmp_path / "ok.safetensors")["w"], torch.arange(4.0))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: not a readable safetensors file"):
        ckpt.load(tmp_path / "bad.safetensors")


def test_resume_into_another_model_size_names_tensor_and_key(tmp_path: Path) -> None:
    _checkpoints(tiny_model(), tmp_path).save(Progress(step=1))
    small = VideoMAEPretrain(ModelConfig(size="small"), CLIP)
    with pytest.raises(CheckpointMismatch) as e:
        _checkpoints(small, tmp_path).restore("auto", _plan())
    msg = str(e.value)
    assert "step_00000001.pt does not fit" in msg and "model.size=tiny" in msg
    assert "patch_embed.proj.weight: checkpoint (192, 3, 2, 16, 16), model (384, 3, 2, 16, 16)" in msg


def test_plain_keeps_state_dict_metadata_and_converts_numpy_in_place() -> None:
    sd = tiny_model().state_dict()
    assert ckpt.plain(sd) is sd  # nothing to convert: the same OrderedDict, _metadata included
    state = {"model": sd, "pos": [np.int64(2), 3], "keys": np.arange(3, dtype=np.uint32)}
    out = ckpt.plain(state)
    assert out["model"] is sd and out["pos"] == [2, 3] and type(out["pos"][0]) is int
    assert torch.equal(out["keys"], torch.tensor([0, 1, 2], dtype=torch.uint32))
