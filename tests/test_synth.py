import json
from pathlib import Path

import av
import numpy as np
import pytest

from mgm.prep.filelist import read_list
from mgm.prep.synth import KINDS, STATIC_LABEL, render_clip


def decode_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def decode_dali_cpu(path: Path) -> np.ndarray:
    dali = pytest.importorskip("nvidia.dali")
    fn, types = dali.fn, dali.types

    @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        enc = fn.external_source(source=lambda: [np.fromfile(path, np.uint8)], batch=True, dtype=types.UINT8)
        return fn.decoders.video(enc, device="cpu")

    p = pipe()
    p.build()
    (out,) = p.run()
    return np.asarray(out.as_array()[0])


def crop(frame: np.ndarray, box: list[int], dx: int = 0) -> np.ndarray:
    x, y, w, h = box
    return frame[y : y + h, x + dx : x + dx + w].astype(np.float32)


def test_list_and_ground_truth(synth_dir: Path, synth_list: Path) -> None:
    entries = read_list(synth_list)
    assert len(entries) == 4
    for entry, kind in zip(entries, KINDS, strict=True):
        truth = json.loads(Path(entry.path).with_suffix(".json").read_text())
        assert truth["kind"] == kind and entry.label == truth["label"] and entry.num_frames == 60
        assert len(truth["boxes"]) == 60
        assert (truth["label"] == STATIC_LABEL) == (kind == "static")


@pytest.mark.parametrize("kind", KINDS)
def test_h264_decodes_with_object_at_ground_truth(synth_clips: dict, kind: str) -> None:
    path = synth_clips[kind]
    truth = json.loads(path.with_suffix(".json").read_text())
    frames = decode_pyav(path)
    assert frames.shape == (60, 240, 320, 3)
    with av.open(str(path)) as c:
        keys = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert keys == [0, 16, 32, 48]
    rendered, _ = render_clip(kind, truth["seed"])
    textures = [crop(rendered[0], box) for box in truth["boxes"][0]]  # each object's look in frame 0
    for f in (0, 31, 59):
        for texture, box in zip(textures, truth["boxes"][f], strict=True):
            # The object's texture sits at its ground-truth box in the decoded frame, and clearly not 12 px beside it.
            here = np.abs(crop(frames[f], box) - texture).mean()
            assert here < 16.0  # 4:2:0 chroma on a noisy checker costs ~10 grey levels
            beside = np.abs(crop(frames[f], box, dx=-12 if box[0] >= 12 else 12) - texture).mean()
            assert beside > 3 * here
    moved = np.abs(np.subtract(truth["boxes"][-1][0][:2], truth["boxes"][0][0][:2])).sum()
    assert (moved == 0) == (kind == "static")


def test_vp9_twin_decodes_in_dali_cpu_to_same_frames(synth_clips: dict) -> None:
    path = synth_clips["single"]
    dali_frames = decode_dali_cpu(path.with_suffix(".webm"))
    h264 = decode_pyav(path)
    assert dali_frames.shape == h264.shape
    mse = np.mean((dali_frames.astype(np.float32) - h264.astype(np.float32)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_deterministic_from_seed() -> None:
    a, ta = render_clip("two", 7, (120, 160), 20)
    b, tb = render_clip("two", 7, (120, 160), 20)
    c, _ = render_clip("two", 8, (120, 160), 20)
    assert np.array_equal(a, b) and ta == tb
    assert not np.array_equal(a, c)


def test_relative_out_dir_list_resolves(tmp_path: Path, monkeypatch) -> None:
    from mgm.prep.synth import make_dataset

    monkeypatch.chdir(tmp_path)
    csv_path = make_dataset("rel", num=1, seed=1, size=(64, 96), num_frames=8, vp9_twin=False)
    (entry,) = read_list(csv_path)
    assert Path(entry.path).is_file()
    assert Path(entry.path) == (tmp_path / "rel" / "videos" / "clip_00000.mp4")
