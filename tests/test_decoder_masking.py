"""Decoder masking (VideoMAE V2's dual masking): the target generators, the config keys, the worker-side masks,
both loaders, the drop-in tuples and the engine. The model side is in test_model.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from _fakes import FakeLoader, tiny_model

from dali_pipes import build_loader
from dali_pipes.sampler import ClipSpec
from dali_pipes.sources import MaskMaker
from mgm.config import ConfigError, OptimConfig, TrainConfig, load_config
from mgm.engine import fit
from mgm.masking import DECODER_GENERATORS, MotionGuidedMasking, build_decoder_masking, build_masking

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
GRID = (8, 14, 14)
N = 8 * 14 * 14


def motion_maps(n: int, seed: int = 0) -> np.ndarray:
    """(n, *GRID) float32: sparse, peaky motion, so MGM has regions to find."""
    return (np.random.default_rng(seed).random((n, *GRID)).astype(np.float32) ** 6 * 20).astype(np.float32)


@pytest.mark.parametrize("name", sorted(DECODER_GENERATORS))
@pytest.mark.parametrize("encoder", ["tube", "random", "mgm"])
@pytest.mark.parametrize("target_ratio", [0.25, 0.5, 0.9])
def test_fixed_count_only_masked_tokens_and_determinism(name: str, encoder: str, target_ratio: float) -> None:
    enc = build_masking(encoder, 0.9, GRID)
    dec = build_decoder_masking(name, target_ratio, enc)
    assert dec.num_targets == min(round(target_ratio * N), enc.num_masked)
    for i, m in enumerate(motion_maps(4)):
        mask = enc(m, np.random.default_rng(i))
        targets = dec(mask, m, np.random.default_rng([i, 1]))
        again = dec(mask, m, np.random.default_rng([i, 1]))
        assert targets.dtype == bool and targets.shape == (N,) and targets.sum() == dec.num_targets
        assert not (targets & ~mask).any()  # a visible token is never a target
        assert np.array_equal(targets, again)  # the rng passed in is the only randomness
    if target_ratio == 0.9:  # as many targets as masked tokens: all of them, as without decoder masking
        assert np.array_equal(targets, mask)


def v2_running_cell(ptr: int, grid: tuple[int, int, int]) -> np.ndarray:
    """VideoMAE V2's running-cell pattern at decoder_mask_ratio 0.5, written from its description: a cyclic queue
    [1, 1, 0, 0] (1 = not reconstructed) read from position ptr + t + 1 fills each 2x2 cell of slot t in row-major
    order. Returns (N,) bool, True = reconstructed."""
    t2, hp, wp = grid
    queue = np.array([1, 1, 0, 0])
    slots = []
    for t in range(t2):
        cell = queue[(np.arange(4) + ptr + t + 1) % 4].reshape(2, 2)
        slots.append(np.tile(cell, (hp // 2, wp // 2)) == 0)
    return np.stack(slots).reshape(-1)


def test_running_cell_is_videomae_v2s_pattern_where_nothing_is_visible() -> None:
    dec = build_decoder_masking("running_cell", 0.5, build_masking("tube", 0.9, GRID))
    everything = np.ones(N, bool)  # no visible token in the way: the pure pattern
    seen = set()
    for seed in range(12):
        targets = dec(everything, None, np.random.default_rng(seed))
        match = [p for p in range(4) if np.array_equal(targets, v2_running_cell(p, GRID))]
        assert len(match) == 1, f"seed {seed}: not one of V2's four running-cell patterns"
        seen.add(match[0])
    assert seen == {0, 1, 2, 3}  # the clip's phase is random


def test_running_cell_fills_in_for_visible_tokens_from_the_next_phase() -> None:
    enc = build_masking("tube", 0.9, GRID)
    dec = build_decoder_masking("running_cell", 0.5, enc)
    rng = np.random.default_rng(0)
    mask = enc(None, rng)
    targets = dec(mask, None, rng)
    patterns = [v2_running_cell(p, GRID) for p in range(4)]
    # the V2 pattern whose masked tokens are all targets; the fill (the count stays 784) is a quarter-turn on
    p = max(range(4), key=lambda p: (targets & patterns[p]).sum())
    best = patterns[p]
    assert not (best & mask & ~targets).any()
    nxt = patterns[(p + 3) % 4] & ~best  # the phase that comes next in the cycle
    assert (targets & ~best).sum() == dec.num_targets - (best & mask).sum() and not (targets & ~best & ~nxt).any()


def test_mgm_targets_take_the_moving_tokens_first_then_random_ones() -> None:
    enc = build_masking("tube", 0.75, GRID)  # motion-blind encoder: moving tokens are masked by chance only
    dec = build_decoder_masking("mgm", 0.25, enc)
    motion = np.zeros(GRID, np.float32)
    motion[:, 4:8, 4:8] = 5.0  # a moving square in every slot
    rng = np.random.default_rng(0)
    mask = enc(motion, rng)
    moving = MotionGuidedMasking(0.75, GRID).score(motion).reshape(-1) > 0  # the square, smoothed (radius 1)
    assert 16 * 8 < moving.sum() < 64 * 8
    a = dec(mask, motion, np.random.default_rng(1))
    b = dec(mask, motion, np.random.default_rng(2))
    assert (moving & mask).sum() < dec.num_targets  # so every moving masked token fits, plus a random fill
    assert (a & moving & mask).sum() == (moving & mask).sum() == (b & moving & mask).sum()
    assert not np.array_equal(a, b)  # the fill is random
    assert dec.fallbacks == 0
    still = dec(mask, np.zeros(GRID, np.float32), rng)  # no motion: random targets, counted
    assert still.sum() == dec.num_targets and dec.fallbacks == 1


def test_bad_target_ratios_and_names() -> None:
    enc = build_masking("tube", 0.5, GRID)
    with pytest.raises(ValueError, match="at most the encoder's mask ratio"):
        build_decoder_masking("random", 0.6, enc)
    with pytest.raises(ValueError, match="must be > 0"):
        build_decoder_masking("random", 1e-5, enc)
    with pytest.raises(ValueError, match="running_cell"):
        build_decoder_masking("v2", 0.25, enc)


def test_config_keys() -> None:
    cfg = load_config(None, ["mask.ratio=0.9", "mask.decoder_target_ratio=0.5"])
    assert cfg.derived.num_targets == 784 and cfg.mask.decoder_name == "running_cell"
    assert load_config(None, []).derived.num_targets == 1408  # off: every masked token
    with pytest.raises(ConfigError, match=r"mask.decoder_target_ratio=0.95 .*at most the encoder's mask ratio 0.9"):
        load_config(None, ["mask.decoder_target_ratio=0.95"])
    with pytest.raises(ConfigError, match="mask.decoder_name"):
        load_config(None, ["mask.decoder_name=run_cell"])
    with pytest.raises(ConfigError, match="Did you mean: decoder_target_ratio"):
        load_config(None, ["mask.decoder_mask_ratio=0.5"])  # V2's name (the inverse share) is not taken silently
    for value, parsed in (("true", True), ("false", False), ("auto", "auto")):
        assert load_config(None, [f"model.compile={value}"]).model.compile == parsed
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(None, ["model.compile=yes please"])
    assert load_config(None, ["model.size=giant", "model.patch=14"]).derived.grid == (8, 16, 16)


def _spec(vi: int = 3) -> ClipSpec:
    idx = np.arange(0, 32, 2)
    return ClipSpec(video_index=vi, path="x.mp4", label=0, frame_indices=idx, crop=(0, 0, 240, 240), flip=False)


def test_mask_maker_adds_targets_without_changing_the_encoder_mask() -> None:
    off = MaskMaker(name="tube", ratio=0.9, grid=GRID, seed=5)
    on = MaskMaker(name="tube", ratio=0.9, grid=GRID, seed=5, decoder_name="random", decoder_target_ratio=0.25)
    mask, none = off.make_pair(_spec(), 2, None)
    mask_on, targets = on.make_pair(_spec(), 2, None)
    assert none is None and np.array_equal(mask, mask_on) and np.array_equal(mask, off.make(_spec(), 2, None))
    assert targets.sum() == 392 and not (targets & ~mask).any()
    assert not off.needs_motion and not on.needs_motion
    assert MaskMaker(name="tube", ratio=0.9, grid=GRID, decoder_name="mgm", decoder_target_ratio=0.5).needs_motion
    with pytest.raises(ConfigError, match="mask.decoder_target_ratio"):
        MaskMaker(name="tube", ratio=0.5, grid=GRID, decoder_target_ratio=0.75)


def small(csv: Path, loader: str, *extra: str) -> list[str]:
    """4-frame 64x64 clips: grid 2x4x4 = 32 tokens, 24 masked (ratio 0.75)."""
    return [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu", "data.batch_size=2",
            f"data.num_workers={2 if loader == 'dali' else 0}", "data.num_frames=4", "data.input_size=64",
            "mask.ratio=0.75", *extra]  # fmt: skip


def first_epoch(cfg) -> list[dict]:
    loader = build_loader(cfg)
    assert loader.kind == {"cpu": "cpu", "dali": "dali-cpu"}[cfg.data.loader]
    try:
        return list(loader)
    finally:
        loader.close()


LOADERS = ["cpu", pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali"))]


@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_carry_the_decoder_mask_only_when_on(synth_list: Path, loader: str) -> None:
    decoder = ("mask.name=mgm", "mask.decoder_name=mgm", "mask.decoder_target_ratio=0.25")
    on = load_config(None, small(synth_list, loader, *decoder))
    off = load_config(None, small(synth_list, loader, "mask.name=mgm"))
    batches_on, batches_off = first_epoch(on), first_epoch(off)
    assert len(batches_on) == len(batches_off) == 2
    for b, plain in zip(batches_on, batches_off, strict=True):
        dec = b["decoder_mask"]
        assert dec.shape == (2, 32) and dec.dtype == torch.bool and (dec.sum(1) == 8).all()
        assert not (dec & ~b["mask"]).any()
        assert "decoder_mask" not in plain and torch.equal(plain["mask"], b["mask"])  # same encoder masks
    if loader == "dali":  # and the same masks as the PyAV fallback, decided in the same workers' code
        cpu = first_epoch(load_config(None, small(synth_list, "cpu", *decoder)))
        for b, c in zip(batches_on, cpu, strict=True):
            assert torch.equal(b["decoder_mask"], c["decoder_mask"]) and torch.equal(b["mask"], c["mask"])


def test_as_tuples_two_by_default_and_videomae_v2s_triple(synth_list: Path) -> None:
    on = load_config(None, small(synth_list, "cpu", "mask.name=tube", "mask.decoder_target_ratio=0.5"))
    (first, _) = list(build_loader(on).as_tuples())
    assert len(first) == 2
    (v2, _) = list(build_loader(on).as_tuples(videomae_v2=True))
    batch = next(iter(build_loader(on)))
    video, bool_masked_pos, decode_masked_pos = v2
    assert torch.equal(bool_masked_pos, batch["mask"]) and torch.equal(decode_masked_pos, ~batch["decoder_mask"])
    # V2's loss mask, bool_masked_pos[~decode_masked_pos], is all True here: every target is a masked token
    assert bool_masked_pos[~decode_masked_pos].all() and (~decode_masked_pos).sum(1).tolist() == [16, 16]
    off = load_config(None, small(synth_list, "cpu", "mask.name=tube"))
    (_, m, d), _ = list(build_loader(off).as_tuples(videomae_v2=True))
    assert torch.equal(d, ~m)  # what V2's own dataset hands its loop without decoder masking


class _WithTargets(FakeLoader):
    """FakeLoader's batches plus a decoder mask: the first 5 masked tokens of each row are the targets."""

    def __iter__(self):
        for b in super().__iter__():
            yield {**b, "decoder_mask": b["mask"] & (b["mask"].cumsum(1) <= 5)}


def test_the_engine_hands_the_decoder_mask_to_the_model(tmp_path: Path) -> None:
    model = tiny_model()
    first = next(iter(_WithTargets(4, 2)))
    with torch.no_grad():
        expect = model(first["video"], first["mask"], first["decoder_mask"])[0].item()
        plain = model(first["video"], first["mask"])[0].item()
    seen = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw.get("decoder_mask")), with_kwargs=True)
    train = TrainConfig(out_dir=str(tmp_path), epochs=1, device="cpu", progress=False, tensorboard=False)
    out = fit(model, _WithTargets(4, 2), OptimConfig(), train, batch_size=2, log=lambda _m: None)
    assert len(seen) == 2 and torch.equal(seen[0], first["decoder_mask"])
    assert out["first_loss"] == pytest.approx(expect, rel=1e-6) and expect != pytest.approx(plain, rel=1e-3)
