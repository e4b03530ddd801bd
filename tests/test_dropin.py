"""The drop-in loader as another codebase uses it: Hugging Face's VideoMAE trained from `as_tuples`, and the
README snippet pasted into a script, with and without the `if __name__ == "__main__":` guard."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dali_pipes import build_loader
from mgm.config import load_config

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
ROOT = Path(__file__).resolve().parents[1]


def small(csv: Path, *extra: str) -> list[str]:
    """Overrides for 4-frame 64x64 clips (grid 2x4x4 = 32 tokens, 12 masked per slot), in-process workers."""
    return [f"data.train_list={csv}", "data.loader=cpu", "data.batch_size=2", "data.num_workers=0",
            "data.num_frames=4", "data.input_size=64", "mask.name=mgm", "mask.ratio=0.75", *extra]  # fmt: skip


def test_layouts_are_views_of_the_same_batch(synth_list: Path) -> None:
    cfg = load_config(None, small(synth_list))
    ((bcthw, m1), _) = list(build_loader(cfg).as_tuples())
    loader = build_loader(cfg)  # a second loader: the same plan, the same first epoch
    ((btchw, m2), _) = list(loader.as_tuples(layout="BTCHW"))
    assert bcthw.shape == (2, 3, 4, 64, 64) and btchw.shape == (2, 4, 3, 64, 64)
    assert torch.equal(btchw[:, 1], bcthw[:, :, 1]) and torch.equal(btchw.transpose(1, 2), bcthw)
    assert torch.equal(m1, m2) and m1.dtype == torch.bool
    with pytest.raises(ValueError, match="BTCHW"):
        loader.as_tuples(layout="BHWTC")


def test_hugging_face_videomae_pretrains_from_the_loader(synth_list: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = load_config(None, small(synth_list))
    torch.manual_seed(0)
    hf = transformers.VideoMAEConfig(
        image_size=64, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True,
    )  # fmt: skip
    model = transformers.VideoMAEForPreTraining(hf)
    assert model.videomae.embeddings.num_patches == cfg.derived.num_tokens  # the loader's masks fit its grid
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = build_loader(cfg)
    losses = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for videos, bool_masked_pos in loader.as_tuples(layout="BTCHW"):  # HF takes (B, T, C, H, W)
            loss = model(pixel_values=videos, bool_masked_pos=bool_masked_pos).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged  # every parameter, encoder and decoder, got a gradient and moved


# README's "Drop-in loader" snippet as a user pastes it, on the synthetic clips, with 2 worker processes.
SNIPPET = """
loader = build_loader(cfg, device="cpu")
for videos, bool_masked_pos in loader.as_tuples(layout="BTCHW"):
    print(tuple(videos.shape), int(bool_masked_pos.sum()), "nvidia.dali.backend" in sys.modules, flush=True)
"""


def run_script(tmp_path: Path, csv: Path, *, guarded: bool, start: str | None, loader: str = "cpu"):
    head = "import multiprocessing\nimport sys\n\nfrom dali_pipes import build_loader\n"
    head += "from mgm.config import load_config\n"
    body = f"multiprocessing.set_start_method({start!r})\n" if start else ""
    body += "cfg = load_config(None, sys.argv[1:])" + SNIPPET
    if guarded:
        body = 'if __name__ == "__main__":\n' + textwrap.indent(body, "    ")
    script = tmp_path / "train_hf.py"
    script.write_text(head + "\n" + body)
    args = [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu", "data.batch_size=2",
            "data.num_workers=2", "data.num_frames=4", "data.input_size=32", "mask.name=tube",
            "mask.ratio=0.5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env=env)  # fmt: skip


@pytest.mark.skipif(multiprocessing.get_all_start_methods()[0] != "fork", reason="the platform's default is not fork")
def test_unguarded_script_runs_where_workers_fork(tmp_path: Path, synth_list: Path) -> None:
    out = run_script(tmp_path, synth_list, guarded=False, start=None)
    assert out.returncode == 0, out.stderr[-3000:]
    # two batches of (B, T, C, H, W); the PyAV path never loads DALI, so its workers fork and need no guard
    assert out.stdout.split("\n")[:2] == ["(2, 4, 3, 32, 32) 8 False"] * 2, out.stdout


@pytest.mark.parametrize(
    "loader", ["cpu", pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali"))]
)
def test_unguarded_script_with_spawned_workers_gets_the_fix_named(tmp_path: Path, synth_list: Path, loader: str):
    out = run_script(tmp_path, synth_list, guarded=False, start="spawn", loader=loader)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()[-1]
    line = (tmp_path / "train_hf.py").read_text().splitlines().index('loader = build_loader(cfg, device="cpu")') + 1
    assert err.startswith("RuntimeError: ") and f"train_hf.py, line {line}:" in err, out.stderr[-3000:]
    assert 'put the code that builds and iterates the loader under `if __name__ == "__main__":`' in err
    assert ("data.num_workers=0" in err) == (loader == "cpu")
    assert "exited unexpectedly" not in out.stderr.replace(err, "")  # stopped before any worker started
    assert not out.stdout


def test_guarded_script_runs_with_spawned_workers(tmp_path: Path, synth_list: Path) -> None:
    out = run_script(tmp_path, synth_list, guarded=True, start="spawn")  # the fix the message names works
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["(2, 4, 3, 32, 32) 8 False"] * 2, out.stdout


def test_the_main_guard_is_read_from_the_script(tmp_path: Path) -> None:
    from dali_pipes.workers import _guarded

    script = tmp_path / "s.py"
    script.write_text('a = 1\nif __name__ == "__main__":\n    b = 2\n    c = (3,\n         4)\n'
                      'if "__main__" != __name__:\n    pass\nelse:\n    d = 5\n')  # fmt: skip
    assert [_guarded(script, n) for n in range(1, 10)] == [False, False, True, True, True, False, False, False, True]
    assert _guarded(tmp_path / "gone.py", 1)  # nothing to read: never stand in the way
