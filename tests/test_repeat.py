"""Repeated sampling (data.repeat, issue 13 item 2): R clips per read of a video. The sampler's plan (epoch length,
sharding, determinism, resume), R = 1 exactly as before, and the PyAV fallback decoding each video once for its R
clips. The DALI path is in tests/test_repeat_dali.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipes import build_loader
from dali_pipes.cpu_loader import crop_resize
from dali_pipes.sampler import ClipSampler, clip_indices, multiscale_crop
from dali_pipes.sources import MaskMaker
from mgm.config import ConfigError, load_config
from mgm.prep.filelist import VideoEntry
from mgm.video import decode_frames

SIZE = (240, 320)


def entries(n: int = 10) -> list[VideoEntry]:
    return [VideoEntry(f"v{i}.mp4", i % 3, 40 + 7 * i) for i in range(n)]


def sampler(repeat: int = 1, n: int = 10, **kw) -> ClipSampler:
    args = {"batch_size": 4, "flip": True, "seed": 3, "frame_size": lambda _: SIZE, **kw}
    return ClipSampler(entries(n), repeat=repeat, **args)


def key(spec) -> tuple:
    return spec.video_index, spec.frame_indices.tolist(), spec.crop, spec.flip, spec.aug_seed


# ---- the sampler's plan ---------------------------------------------------------------------------------------------
def test_an_epoch_visits_every_video_once_and_gives_r_clips_of_each() -> None:
    for repeat in (1, 2, 4):
        s = sampler(repeat, n=10)
        videos = s.epoch_videos(0)
        # batch 4 holds 4 / R videos: 10 videos cut to a multiple of that; clips = R x videos
        assert len(videos) == 10 - 10 % (4 // repeat) and len(set(videos.tolist())) == len(videos)
        assert len(s) == repeat * len(videos) and len(s) % 4 == 0
        assert s.epoch_indices(0).tolist() == np.repeat(videos, repeat).tolist()
        specs = list(s)
        assert [c.repeat for c in specs] == list(range(repeat)) * len(videos)
        assert [c.video_index for c in specs] == s.epoch_indices(0).tolist()


def test_r1_draws_exactly_what_the_sampler_drew_before() -> None:
    """The draws of a run without repetition, written out: clip 0 of R > 1 and every clip of R = 1 are these."""
    s1, s2 = sampler(1), sampler(2)
    for vi in range(10):
        rng = np.random.default_rng([3, 5, vi, 0])
        idx = clip_indices(40 + 7 * vi, 16, 2, rng, "loop")
        pair_u, pos_u, flip_u = rng.random(3)
        crop = multiscale_crop(SIZE, 224, (1.0, 0.875, 0.75, 0.66), pair_u, pos_u)
        for spec in (s1.spec(5, vi, SIZE), s2.spec(5, vi, SIZE, repeat=0)):
            assert spec.frame_indices.tolist() == idx.tolist() and spec.crop == crop
            assert spec.flip == (flip_u < 0.5) and spec.repeat == 0
    assert s1.epoch_indices(5).tolist() == sampler(1).epoch_indices(5).tolist()  # the permutation too


def test_the_r_clips_of_a_video_are_drawn_apart_and_reproducibly() -> None:
    s = sampler(4, n=12)
    specs = [s.spec(0, vi, SIZE, repeat=r) for vi in range(12) for r in range(4)]
    again = [sampler(4, n=12).spec(0, vi, SIZE, repeat=r) for vi in range(12) for r in range(4)]
    assert [key(a) for a in specs] == [key(b) for b in again]  # same seed, same clips
    other = [sampler(4, n=12, seed=4).spec(0, vi, SIZE, repeat=r) for vi in range(12) for r in range(4)]
    assert [key(a) for a in specs] != [key(b) for b in other]
    starts = np.array([c.frame_indices[0] for c in specs]).reshape(12, 4)
    crops = [[c.crop for c in specs[4 * v : 4 * v + 4]] for v in range(12)]
    assert sum(len(set(row)) > 1 for row in starts.tolist()) >= 10  # own temporal start (a few may coincide)
    assert sum(len(set(row)) > 1 for row in crops) >= 10  # own crop box
    assert len({c.aug_seed for c in specs}) == len(specs)  # own augmentation seed


def test_shared_frames_give_every_clip_clip_0s_frames_under_its_own_crop_flip_and_seed() -> None:
    own, shared = sampler(4, n=12), sampler(4, n=12, repeat_frames="shared")
    for vi in range(12):
        clips = [shared.spec(0, vi, SIZE, repeat=r) for r in range(4)]
        assert key(clips[0]) == key(own.spec(0, vi, SIZE, repeat=0))  # clip 0 is the R = 1 clip in both modes
        assert all(c.frame_indices.tolist() == clips[0].frame_indices.tolist() for c in clips)
        assert len({c.crop for c in clips}) > 1 and len({c.aug_seed for c in clips}) == 4
    with pytest.raises(ValueError, match="repeat_frames='both'"):
        sampler(2, repeat_frames="both")
    with pytest.raises(ConfigError, match="data.repeat_frames"):
        load_config(None, ["data.repeat_frames=both"])
    state = shared.state_dict()
    with pytest.raises(ValueError, match="repeat_frames=shared"):
        own.load_state_dict(state)  # a resumed run may not silently change which frames its clips take


def test_ranks_share_out_videos_disjointly_with_equal_lengths() -> None:
    shards = [sampler(2, n=11, rank=r, world_size=3) for r in range(3)]
    videos = [set(s.epoch_videos(2).tolist()) for s in shards]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 2 * 2  # 11 // 3 = 3 videos, cut to 2 (batch 4)
    assert not (videos[0] & videos[1] or videos[0] & videos[2] or videos[1] & videos[2])
    pad = [sampler(2, n=11, rank=r, world_size=3, shard_policy="pad", batch_size=2) for r in range(3)]
    covered = {v for s in pad for v in s.epoch_videos(0).tolist()}
    assert covered == set(range(11)) and all(len(s) == 2 * 4 for s in pad)  # pad: 4 videos each, every one seen


def test_resume_mid_epoch_continues_with_the_clips_left() -> None:
    a = sampler(2, n=10)
    a.set_epoch(4)
    it = iter(a)
    done = [next(it) for _ in range(5)]  # stopped between the two clips of a video: clip r = position % R
    state = a.state_dict()
    rest = list(it)
    b = sampler(2, n=10)
    b.load_state_dict(state)
    b.set_epoch(4)
    assert [key(c) for c in b] == [key(c) for c in rest] and len(done) + len(rest) == len(a)
    assert rest[0].repeat == 1 and rest[0].video_index == done[-1].video_index
    with pytest.raises(ValueError, match="repeat=2, this run has 4"):
        sampler(4).load_state_dict(state)
    sampler(2).load_state_dict({k: v for k, v in state.items() if k != "repeat"})  # states from before the key load


def test_repeat_must_divide_the_batch_and_is_not_for_evaluation() -> None:
    from dali_pipes.sampler import EvalViews

    with pytest.raises(ValueError, match=r"data\.repeat=3 .*data\.batch_size=4"):
        sampler(3)
    with pytest.raises(ValueError, match="evaluation"):
        sampler(2, views=EvalViews(2, 3), shuffle=False)
    with pytest.raises(ConfigError, match=r"data\.repeat=3 must divide data\.batch_size=4"):
        load_config(None, ["data.batch_size=4", "data.repeat=3"])
    with pytest.raises(ConfigError, match=r"data\.repeat: 0 is outside"):
        load_config(None, ["data.repeat=0"])
    assert load_config(None, ["data.batch_size=4", "data.repeat=4"]).data.repeat == 4


def test_each_clip_gets_its_own_masks_and_clip_0_keeps_todays() -> None:
    mm = MaskMaker("tube", 0.75, (4, 4, 4), decoder_target_ratio=0.3, decoder_name="random")
    s = sampler(2)
    m0, d0 = mm.make_pair(s.spec(1, 6, SIZE, repeat=0), 1, None)
    m1, d1 = mm.make_pair(s.spec(1, 6, SIZE, repeat=1), 1, None)
    today = mm.make_pair(sampler(1).spec(1, 6, SIZE), 1, None)
    assert np.array_equal(m0, today[0]) and np.array_equal(d0, today[1])
    assert not np.array_equal(m0, m1) and not np.array_equal(d0, d1)
    assert m1.sum() == m0.sum() and not (d1 & ~m1).any()  # fixed counts, targets among the masked tokens


# ---- the PyAV fallback: one decode per video, each clip sliced from it --------------------------------------------
def cfg(csv: Path, repeat: int, *extra: str):
    base = [f"data.train_list={csv}", "data.loader=cpu", "data.batch_size=4", f"data.repeat={repeat}",
            "data.num_workers=0", "data.num_frames=8", "data.input_size=64", "data.flip=true", "mask.name=tube",
            "mask.ratio=0.75"]  # fmt: skip
    return load_config(None, base + list(extra))


def run_epoch(loader, epoch: int) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


def test_fallback_decodes_each_video_once_and_slices_every_clip(synth_list: Path, monkeypatch) -> None:
    import dali_pipes.cpu_loader as cl

    reads: list[str] = []
    real = cl.iter_frames
    monkeypatch.setattr(cl, "iter_frames", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    lo = build_loader(cfg(synth_list, 2))
    batches = run_epoch(lo, 1)
    assert len(lo) == len(batches) == 2 and lo.stats["samples"] == 8  # 4 videos x 2 clips: 2 steps, not 1
    index = torch.cat([b["index"] for b in batches]).tolist()
    assert index[0::2] == index[1::2] and sorted(index[0::2]) == [0, 1, 2, 3]  # each video once, twice in a row
    assert sorted(reads) == sorted(lo.sampler.paths)  # one decode per video for its 2 clips
    s = lo.sampler
    for b in batches:
        for j in range(4):
            vi = int(b["index"][j])
            spec = s.spec(1, vi, SIZE, repeat=j % 2)
            assert b["frame_indices"][j].tolist() == spec.frame_indices.tolist()
            frames = decode_frames(s.paths[vi], spec.frame_indices.tolist())
            clip = torch.from_numpy(np.stack([frames[i] for i in spec.frame_indices.tolist()]))
            want = crop_resize(clip, spec, 64, lo.mean, lo.std)  # the clip decoded alone, as R = 1 would
            assert torch.equal(b["video"][j], want)
        assert not torch.equal(b["video"][0], b["video"][1]) and not torch.equal(b["mask"][0], b["mask"][1])


def test_fallback_with_shared_frames_decodes_one_clips_frames_per_video(synth_list: Path, monkeypatch) -> None:
    import dali_pipes.cpu_loader as cl

    asked: list[list[int]] = []
    real = cl.iter_frames
    monkeypatch.setattr(
        cl, "iter_frames", lambda path, idx, *a, **k: asked.append(sorted(idx)) or real(path, idx, *a, **k)
    )
    lo = build_loader(cfg(synth_list, 2, "data.repeat_frames=shared"))
    batches = run_epoch(lo, 1)
    assert len(asked) == 4 and all(len(a) == len(set(a)) <= 8 for a in asked)  # one clip's frames per video
    for b in batches:
        for j in (0, 2):  # the two clips of a video: same frames, other crop / flip / mask
            assert b["frame_indices"][j].tolist() == b["frame_indices"][j + 1].tolist()
            assert not torch.equal(b["video"][j], b["video"][j + 1])


def test_fallback_clip_0s_are_the_r1_batches_and_resume_is_exact(synth_list: Path) -> None:
    extra = ("mask.name=mgm", "mask.decoder_target_ratio=0.3")  # online motion: read once for both clips
    one, two = run_epoch(build_loader(cfg(synth_list, 1, *extra)), 2), build_loader(cfg(synth_list, 2, *extra))
    two.set_epoch(2)
    it = iter(two)
    first = next(it)
    state = two.state_dict()
    rest = list(it)
    clips = [first, *rest]
    for name in ("video", "mask", "decoder_mask", "frame_indices", "index"):
        r1 = torch.cat([b[name] for b in one])
        r2 = torch.cat([b[name] for b in clips])
        assert torch.equal(r2[0::2], r1), name  # clip 0 of each video = the R = 1 clip, bit for bit
    resumed = build_loader(cfg(synth_list, 2, *extra))
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    again = list(resumed)
    assert len(again) == len(rest) == 1
    for name in ("video", "mask", "decoder_mask", "index"):
        assert torch.equal(again[0][name], rest[0][name]), name


def test_fallback_ranks_split_the_videos(synth_list: Path) -> None:
    seen = []
    for rank in range(2):
        lo = build_loader(cfg(synth_list, 2, "data.batch_size=2"), rank=rank, world_size=2)
        batches = run_epoch(lo, 7)
        assert len(lo) == len(batches) == 2  # 2 videos per rank, 2 clips each, batches of 2 clips
        seen.append(torch.cat([b["index"] for b in batches]).tolist())
    assert all(s[0::2] == s[1::2] for s in seen)
    assert not set(seen[0]) & set(seen[1]) and sorted(set(seen[0]) | set(seen[1])) == [0, 1, 2, 3]


def test_far_apart_clips_skip_the_gap_at_a_key_frame(synth_clips: dict[str, Path], monkeypatch) -> None:
    """The union of two clips 40 frames apart (GOP 16): the decode restarts at the key frame before the second clip
    instead of decoding the frames between them, and gives the same pixels."""
    import mgm.video as video

    path = str(synth_clips["pan"])
    wanted = [2, 4, 6, 48, 50, 52]
    counted: list[int] = []
    real = video.decode_packets

    def counting(cc, packets, skip_keys=False):  # noqa: ANN001, ANN202 - a spy around mgm.video.decode_packets
        for out in real(cc, packets, skip_keys):
            counted.append(1)
            yield out

    monkeypatch.setattr(video, "decode_packets", counting)
    skipped = video.decode_frames(path, wanted)
    n_skip = len(counted)
    counted.clear()
    monkeypatch.setattr(video, "SEEK_LEAP", 10**6)  # decode straight through
    through = video.decode_frames(path, wanted)
    assert sorted(skipped) == wanted and all(np.array_equal(skipped[i], through[i]) for i in wanted)
    assert len(counted) == 53 and n_skip == (6 + 1) + (52 - 48 + 1)  # frames 0..52 vs 0..6 and 48..52
