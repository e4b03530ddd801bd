"""VideoMAE-style per-item loader: the thing the benchmarks compare against (what users would run instead).

Per item, as VideoMAE's pretraining dataset does: open the file, seek and decode the clip's frames (PyAV standing
in for decord: seek to the key frame before the first index, decode to the last), turn every frame into a PIL
image, multi-scale crop + resize each frame with PIL (GroupMultiScaleCrop), Stack to (H, W, 3T), ToTorchFormatTensor
(to float, / 255), GroupNormalize (channel plane by plane), view + transpose to (3, T, H, W), and build a tube mask
in numpy (TubeMaskingGenerator). The steps follow VideoMAE's pretraining transform; the code is written here.
Batched by a plain torch DataLoader. Same clip sampling (16 frames at stride 2 from a random start) and crop
choices as dali_pipes.sampler, so the work is comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dali_pipes.sampler import clip_indices, multiscale_crop


def decode_clip(path: str, indices: np.ndarray, reuse_swscale: bool = False) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8 at `indices` (presentation order from 0), decoding from the preceding key frame.

    `frame.to_ndarray(format="rgb24")` (the default; what torchvision's PyAV reader does too) sets up a new swscale
    context, with a thread pool, per frame; decord, which VideoMAE uses, does not. `reuse_swscale=True` converts
    through one reused single-threaded context instead: the stricter stand-in for decord.
    """
    convert = None
    if reuse_swscale:
        from av.video.reformatter import VideoReformatter

        sws = VideoReformatter()
        convert = lambda f: sws.reformat(f, format="rgb24", threads=1).to_ndarray()  # noqa: E731
    wanted = set(indices.tolist())
    last = int(indices.max())
    out: dict[int, np.ndarray] = {}
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type, s.thread_count = "SLICE", 1  # decord in VideoMAE runs with num_threads=1
        fps, tb = float(s.average_rate), float(s.time_base)
        t0 = s.start_time or 0
        first = int(indices.min())
        if first > 0:
            c.seek(t0 + int(first / fps / tb), stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            i = round((frame.pts - t0) * tb * fps)
            if i in wanted:
                out[i] = convert(frame) if convert else frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    # real clips' timestamps are not always multiples of 1/fps (VFR, edit lists): an index no frame rounded to
    # takes the nearest decoded one (same decoding work; the benchmark times loading, not exact frames)
    have = np.array(sorted(out))
    return [out[i] if i in out else out[int(have[np.abs(have - i).argmin()])] for i in indices.tolist()]


class TubeMaskingGenerator:
    """VideoMAE's numpy tube mask: one shuffled spatial mask repeated over the T2 slots; 1 = masked."""

    def __init__(self, grid: tuple[int, int, int], ratio: float) -> None:
        self.frames, h, w = grid
        self.per_frame = h * w
        self.masked = int(ratio * self.per_frame)

    def __call__(self) -> np.ndarray:
        m = np.hstack([np.zeros(self.per_frame - self.masked), np.ones(self.masked)])
        np.random.shuffle(m)
        return np.tile(m, (self.frames, 1)).flatten()


class VideoMAEStyleDataset(Dataset):
    """(video (3, T, S, S) float32 normalized, mask (N,) bool True = masked) per item, VideoMAE's way."""

    def __init__(
        self,
        paths: Sequence[str],
        num_video_frames: Sequence[int],
        *,
        num_frames: int = 16,
        stride: int = 2,
        input_size: int = 224,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        mask_ratio: float = 0.9,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        seed: int = 0,
        reuse_swscale: bool = False,
    ) -> None:
        self.paths, self.lengths = list(paths), list(num_video_frames)
        self.num_frames, self.stride, self.size, self.scales = num_frames, stride, input_size, tuple(scales)
        self.mean_list, self.std_list = list(mean), list(std)
        self.masks = TubeMaskingGenerator((num_frames // 2, input_size // 16, input_size // 16), mask_ratio)
        self.seed, self.reuse_swscale = seed, reuse_swscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        idx = clip_indices(self.lengths[i], self.num_frames, self.stride, rng, "clamp")
        images = [Image.fromarray(a) for a in decode_clip(self.paths[i], idx, self.reuse_swscale)]
        # GroupMultiScaleCrop: crop every PIL frame, then resize every PIL frame
        x, y, w, h = multiscale_crop((images[0].height, images[0].width), self.size, self.scales, *rng.random(2))
        images = [im.crop((x, y, x + w, y + h)) for im in images]
        images = [im.resize((self.size, self.size), Image.BILINEAR) for im in images]
        stacked = np.concatenate([np.asarray(im) for im in images], axis=2)  # Stack: (S, S, 3T) uint8
        video = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
        for c, plane in enumerate(video):  # GroupNormalize: one channel plane at a time
            plane.sub_(self.mean_list[c % 3]).div_(self.std_list[c % 3])
        video = video.view((self.num_frames, 3) + video.shape[-2:]).transpose(0, 1)  # (3, T, S, S)
        return video, torch.from_numpy(self.masks()).bool()


def baseline_loader(
    paths: Sequence[str], num_video_frames: Sequence[int], *, batch_size: int, num_workers: int, **kw
) -> DataLoader:
    """The VideoMAE-style DataLoader over (paths, frame counts); yields (video (B,3,T,S,S), mask (B,N) bool)."""
    ds = VideoMAEStyleDataset(paths, num_video_frames, **kw)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
                      persistent_workers=num_workers > 0)  # fmt: skip
