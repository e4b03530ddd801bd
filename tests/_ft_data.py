"""Labelled synthetic clips and a tiny fine-tuning config for the fine-tuning, evaluation and probe tests."""

from __future__ import annotations

from pathlib import Path

from mgm.config import Config, load_config

# Label = the object's direction (0 right, 1 left, 2 down, 3 up): 4 classes; 64x64 frames, 16 per clip, so a clip
# of 4 frames at stride 4 sees the object cross the frame. 4 frames of 32x32 in 16x16 patches: 8 tokens per clip.
CLASSES = 4
TINY = [
    "data.num_frames=4", "data.stride=4", "data.input_size=32", "data.batch_size=4", "data.num_workers=0",
    "data.loader=cpu", "model.size=tiny", "model.patch=16", f"model.num_classes={CLASSES}", "mask.ratio=0.5",
    "train.device=cpu", "train.progress=false", "train.tensorboard=false", "profiling.enabled=false",
    "finetune.test_clips=2", "finetune.test_crops=1", "train.log_every=1",
]  # fmt: skip


def labelled_clips(root: Path, num: int, seed: int = 0) -> Path:
    """`num` single-object clips (64x64, 16 frames, H.264) under `root`; returns their list (path,label,num_frames)."""
    from mgm.prep.synth import make_dataset

    return make_dataset(root, num=num, seed=seed, size=(64, 64), num_frames=16, vp9_twin=False, kinds=("single",))


def tiny_config(train_list: Path, val_list: Path, out_dir: Path, *more: str) -> Config:
    """demo_ft.yaml shrunk to TINY, on these lists, writing to out_dir; `more` overrides last."""
    return load_config(Path(__file__).parents[1] / "configs" / "demo_ft.yaml",
                       [*TINY, f"data.train_list={train_list}", f"finetune.val_list={val_list}",
                        f"train.out_dir={out_dir}", *more])  # fmt: skip
