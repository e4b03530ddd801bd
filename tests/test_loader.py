"""build_loader on the CPU: batch format, epochs, resume, DDP sharding and bad input, for both loaders."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipes import TooManyBadVideos, build_loader, choose_path
from mgm.config import load_config
from mgm.prep.filelist import VideoEntry, read_list, write_list

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
LOADERS = ["cpu", pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali"))]


def cfg_for(csv: Path, loader: str, *extra: str):
    workers = 2 if loader == "dali" else 0  # the fallback in-process: fast, and the same code path per sample
    base = [f"data.train_list={csv}", f"data.loader={loader}", "data.dali_device=cpu", "data.batch_size=2",
            f"data.num_workers={workers}", "mask.name=tube", "mask.ratio=0.9"]  # fmt: skip
    return load_config(None, base + list(extra))


def indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


@pytest.fixture(scope="module")
def dali_loader(synth_list: Path):
    if not HAS_DALI:
        pytest.skip("needs nvidia-dali")
    loader = build_loader(cfg_for(synth_list, "dali"))
    yield loader
    loader.close()


def test_choose_path() -> None:
    assert choose_path("cpu", "auto", "cuda") == "cpu"
    if HAS_DALI:
        assert choose_path("auto", "auto", "cpu") == "cpu"  # the fallback is the faster CPU path
        assert choose_path("auto", "cpu", "cpu") == "dali-cpu"
        assert choose_path("dali", "cpu", "cpu") == "dali-cpu"
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError, match="CUDA"):
                choose_path("dali", "gpu", "cpu")


def check_batch(b: dict, cfg) -> None:
    d, n = cfg.data, cfg.derived
    assert b["video"].shape == (d.batch_size, 3, d.num_frames, d.input_size, d.input_size)
    assert b["video"].dtype == torch.float32 and torch.isfinite(b["video"]).all()
    assert -3 < float(b["video"].mean()) < 3  # normalized, not raw 0..255 pixels
    assert b["mask"].shape == (d.batch_size, n.num_tokens) and b["mask"].dtype == torch.bool
    assert (b["mask"].sum(1) == n.num_masked).all()  # True = masked, a fixed count per clip
    assert b["label"].dtype == torch.int64 and b["index"].dtype == torch.int64
    assert b["frame_indices"].shape == (d.batch_size, d.num_frames) and b["frame_indices"].dtype == torch.int32
    assert (b["frame_indices"][:, 1:] - b["frame_indices"][:, :-1] == d.stride).all()
    assert b["mask_time"].shape == (d.batch_size,) and (b["mask_time"] >= 0).all()


def test_dali_batches_epochs_and_tuples(dali_loader, synth_list: Path) -> None:
    cfg = cfg_for(synth_list, "dali")
    assert len(dali_loader) == 2 and dali_loader.kind == "dali-cpu"
    epochs = []
    for e in range(2):
        dali_loader.set_epoch(e)
        batches = list(dali_loader)
        assert len(batches) == len(dali_loader)
        for b in batches:
            check_batch(b, cfg)
        epochs.append(indices(batches))
        assert sorted(sum(epochs[-1], [])) == [0, 1, 2, 3]  # one epoch covers every clip once
    assert epochs[0] != epochs[1]  # reshuffled
    tuples = list(dali_loader.as_tuples())  # iterating again without set_epoch runs the next epoch
    assert len(tuples) == 2 and tuples[0][0].shape[0] == 2 and tuples[0][1].dtype == torch.bool
    assert dali_loader.sampler.epoch == 2
    cpu = build_loader(cfg_for(synth_list, "cpu"))
    cpu.set_epoch(1)
    assert indices(cpu) == epochs[1]  # the two loaders walk the same plan


def resume_check(a, b) -> None:
    """`a` runs epoch 3 to its end; `b`, given a's state after one batch, must yield exactly the rest."""
    a.set_epoch(3)
    it = iter(a)
    first = next(it)
    state = a.state_dict()
    rest = list(it)
    b.load_state_dict(state)
    b.set_epoch(3)  # the usual loop calls set_epoch again: it must not rewind a restored epoch
    resumed = list(b)
    assert indices(resumed) == indices(rest) and len(rest) == 1
    assert torch.equal(resumed[0]["mask"], rest[0]["mask"])
    assert torch.allclose(resumed[0]["video"], rest[0]["video"])
    assert first["index"].tolist() not in indices(resumed)


def test_resume_mid_epoch_cpu(synth_list: Path) -> None:
    resume_check(build_loader(cfg_for(synth_list, "cpu")), build_loader(cfg_for(synth_list, "cpu")))


def test_resume_mid_epoch_dali(dali_loader, synth_list: Path) -> None:
    fresh = build_loader(cfg_for(synth_list, "dali"))
    resume_check(dali_loader, fresh)  # the shared loader is at epoch 3 already (previous test): no rebuild
    fresh.close()


def test_ddp_ranks_disjoint_cover_epoch(synth_list: Path) -> None:
    cfg = cfg_for(synth_list, "cpu", "data.batch_size=1")
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, rank=rank, world_size=2)
        loader.set_epoch(7)
        assert len(loader) == 2
        seen.append(sum(indices(loader), []))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3]


def test_output_dtype(synth_list: Path) -> None:
    b = next(iter(build_loader(cfg_for(synth_list, "cpu", "data.output_dtype=bfloat16"))))
    assert b["video"].dtype == torch.bfloat16


@pytest.fixture(scope="module")
def broken_list(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 entries: the 4 good clips twice, except that one of them (both .mp4 and .webm) is garbage."""
    out = tmp_path_factory.mktemp("broken")
    shutil.copytree(synth_dir / "videos", out / "videos")
    for ext in (".mp4", ".webm"):
        (out / "videos" / f"bad{ext}").write_bytes(b"this is not a video" * 100)
    good = read_list(synth_dir / "train.csv")
    entries = good + good[:3] + [VideoEntry(str(out / "videos" / "bad.mp4"), 0, 60)]
    return write_list(out / "train.csv", entries)


def test_bad_file_is_skipped_replaced_and_counted(broken_list: Path) -> None:
    runs = []
    for loader in ["cpu", "cpu"] + (["dali"] if HAS_DALI else []):  # the same replacement every run and loader
        lo = build_loader(cfg_for(broken_list, loader, "data.max_bad_fraction=0.2"))
        with pytest.warns(UserWarning, match=r"bad\.(mp4|webm)"):
            runs.append(indices(lo))
        assert lo.stats["bad_files"] == 1 and "bad." in lo.stats["bad_videos"][0]
        assert len(runs[-1]) == 4 and 7 not in sum(runs[-1], [])  # the run went on without it
        getattr(lo, "close", lambda: None)()
    assert all(r == runs[0] for r in runs)


def test_too_many_bad_files_stop_with_a_clear_error(broken_list: Path) -> None:
    lo = build_loader(cfg_for(broken_list, "cpu", "data.max_bad_fraction=0.01"))
    with pytest.raises(TooManyBadVideos, match="max_bad_fraction"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(lo)


def test_missing_files_reported_once_all_together(synth_dir: Path, tmp_path: Path) -> None:
    good = read_list(synth_dir / "train.csv")
    ghosts = [VideoEntry(str(tmp_path / f"gone{i}.mp4"), 0, 60) for i in range(2)]
    csv = write_list(tmp_path / "list.csv", good * 25 + ghosts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lo = build_loader(cfg_for(csv, "cpu", "data.max_bad_fraction=0.05"))
    msgs = [str(w.message) for w in caught if "missing" in str(w.message)]
    assert len(msgs) == 1 and "gone0.mp4" in msgs[0] and "gone1.mp4" in msgs[0]
    assert len(lo.sampler.paths) == 100
    with pytest.raises(FileNotFoundError, match="gone0.mp4"):
        build_loader(cfg_for(csv, "cpu", "data.max_bad_fraction=0.01"))


@pytest.mark.skipif(not HAS_DALI, reason="needs nvidia-dali")
def test_dali_decoder_error_loses_one_batch_and_recovers(synth_list: Path) -> None:
    lo = build_loader(cfg_for(synth_list, "dali", "data.max_bad_fraction=0.5"))
    lo.set_epoch(0)
    plan = lo.sampler.epoch_indices(0).reshape(-1, 2).tolist()
    lo._build()
    real_run = lo._pipe.run

    def failing_run():  # what DALI raises when a frame cannot be decoded mid-batch
        lo._pipe.run = real_run
        raise RuntimeError("Critical error in pipeline: Error in CPU operator decoders.video: frame 21 out of range")

    lo._pipe.run = failing_run
    with pytest.warns(UserWarning, match="DALI decode failed"):
        got = indices(lo)
    assert got == plan[1:]  # the lost batch is skipped, the rest of the epoch follows
    assert lo.stats["failed_batches"] == 1 and lo.stats["bad_files"] == 2
    assert np.all(np.isin(plan[0], [0, 1, 2, 3]))
    lo.close()


@pytest.mark.parametrize("loader", LOADERS)
def test_motion_cache_gives_the_online_masks(loader: str, synth_list: Path, tmp_path_factory) -> None:
    from mgm.motion_cache import build_cache

    cache = tmp_path_factory.mktemp("mcache")
    build_cache(synth_list, cache, workers=0, progress=False)  # in-process: no fork next to live DALI threads
    masks = {}
    for source in ("online", "cache"):
        lo = build_loader(cfg_for(synth_list, loader, "mask.name=mgm", f"motion.source={source}",
                                  f"motion.cache_dir={cache}"))  # fmt: skip
        lo.set_epoch(1)
        masks[source] = torch.cat([b["mask"] for b in lo])
        assert lo.stats["bad_files"] == 0
        getattr(lo, "close", lambda: None)()
    # the cache stores float16 energy: top-K choices may differ on near ties, nowhere else
    assert (masks["online"] == masks["cache"]).float().mean() > 0.98


def test_fallback_pixels_match_plain_pyav(synth_clips: dict[str, Path]) -> None:
    import av

    from mgm.video import decode_frames

    path = str(synth_clips["single"])
    with av.open(path) as c:
        plain = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    got = decode_frames(path, [3, 17, 17, 40])  # the reused swscale context converts exactly like to_ndarray
    assert sorted(got) == [3, 17, 40]
    for i, rgb in got.items():
        assert np.array_equal(rgb, plain[i]), f"frame {i}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_normalize_matches_the_formula(dtype: torch.dtype) -> None:
    from dali_pipes.cpu_loader import normalize

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    got = normalize(clips, mean, std, dtype=dtype, device=torch.device("cpu"))
    want = (clips.float() / 255 - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    assert got.dtype == dtype and got.shape == clips.shape
    assert torch.allclose(got.float(), want, atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_the_path_chosen_once_is_handed_on(synth_list: Path) -> None:
    from dali_pipes.adapter import DaliLoader
    from dali_pipes.factory import _graph_kwargs

    cpu = build_loader(cfg_for(synth_list, "cpu"))
    assert cpu.kind == cpu.stats["loader"] == "cpu"
    if HAS_DALI:
        dali = build_loader(cfg_for(synth_list, "dali"))  # built lazily: no pipeline, no workers yet
        assert dali.kind == dali.stats["loader"] == choose_path("dali", "cpu", "cpu") == "dali-cpu"
        assert dali.graph_kwargs["decode_device"] == "cpu" and dali.twin_suffix == ".webm"
    gpu = _graph_kwargs(cfg_for(synth_list, "dali").data, "dali-gpu", torch.device("cuda:1"))  # no GPU needed
    assert gpu["decode_device"] == "mixed" and gpu["device_id"] == 1
    with pytest.raises(ValueError, match="dali-gpu"):
        DaliLoader(cpu.sampler, None, kind="cpu", graph_kwargs={}, twin_suffix=None, device=torch.device("cpu"),
                   output_dtype="float32", max_bad_fraction=0.1)  # fmt: skip


def test_a_mask_knob_typo_stops_build_loader_naming_the_key(synth_list: Path) -> None:
    from mgm.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'mask\.knobs\.smoth'.*Did you mean: smooth"):
        cfg_for(synth_list, "cpu", "mask.name=mgm", "mask.knobs={smoth: 1}")  # load_config checks it first
    with pytest.raises(ConfigError, match=r"mask\.knobs\.smooth: expected int"):
        cfg_for(synth_list, "cpu", "mask.name=mgm", "mask.knobs={smooth: 1.5}")
    with pytest.raises(ConfigError, match=r"mask\.knobs\.smooth.*mask\.name=tube takes no knobs"):
        cfg_for(synth_list, "cpu", "mask.knobs={smooth: 1}")  # cfg_for picks tube
    cfg = cfg_for(synth_list, "cpu", "mask.name=mgm")
    cfg.mask.knobs = {"smoth": 1}  # set in code, past load_config's own check
    with pytest.raises(ConfigError, match=r"mask\.knobs\.smoth.*smooth, temporal, random_mix, min_motion, floor"):
        build_loader(cfg)
    cfg.mask.knobs = {"random_mix": 1.5}
    with pytest.raises(ConfigError, match=r"mask\.knobs.*random_mix"):
        build_loader(cfg)
    cfg.mask.knobs = {"smooth": 2, "random_mix": 0.25}
    gen = build_loader(cfg).dataset.masks.generator()
    assert (gen.smooth, gen.random_mix) == (2, 0.25)  # the knobs reach the generator the workers use
