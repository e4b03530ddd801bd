"""Mask generators for VideoMAE pretraining: tube, random and motion-guided (MGM), plus two quality metrics.

Every generator is a callable `gen(motion_map, rng) -> mask`: motion_map is float (T2, Hp, Wp) or None, rng a
`np.random.Generator` (the only source of randomness, so a seed fixes the mask); the mask is bool (T2*Hp*Wp,)
in token order (slot, row, col) with True = masked, and always has exactly `gen.num_masked` True entries
(round(ratio * Hp * Wp) per slot), so batches stack without padding.

Decoder masking (VideoMAE V2's dual masking): a `DecoderMasking` generator picks which of the encoder-masked tokens
the decoder reconstructs, `dec(encoder_mask, motion_map, rng) -> decoder_mask`, bool (N,) with True =
reconstructed (a loss target); exactly `dec.num_targets` = round(target_ratio * N) True, every one of them masked
for the encoder. `target_ratio` is a share of ALL N tokens, as in VideoMAE V2, whose `decoder_mask_ratio` is the
share it does NOT reconstruct: V2's decoder_mask_ratio 0.5 is target_ratio 0.5, its 0.75 is 0.25.
"""

from __future__ import annotations

import math

import numpy as np


class MaskGenerator:
    """Base class: fixed-count masks on a (T2, Hp, Wp) token grid. `fallbacks` counts clips that fell back."""

    name = "base"

    def __init__(self, ratio: float, grid: tuple[int, int, int]) -> None:
        t2, hp, wp = (int(g) for g in grid)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio, self.grid = float(ratio), (t2, hp, wp)
        self.tokens_per_slot = hp * wp
        self.per_slot = round(ratio * self.tokens_per_slot)
        self.num_masked = self.per_slot * t2
        self.fallbacks = 0  # clips without usable motion that got a tube mask instead (mgm only)
        self.last_fallback = False  # whether the latest call fell back

    def __call__(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio}, grid={self.grid})"

    def _tube(self, rng: np.random.Generator) -> np.ndarray:
        key = rng.random(self.tokens_per_slot)
        spatial = np.zeros(self.tokens_per_slot, bool)
        spatial[np.argpartition(key, self.per_slot - 1)[: self.per_slot] if self.per_slot else []] = True
        return np.tile(spatial, self.grid[0])


class TubeMasking(MaskGenerator):
    """VideoMAE tube masking: one random spatial mask repeated in every slot; ignores motion."""

    name = "tube"

    def __call__(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        self.last_fallback = False
        return self._tube(rng)


class RandomMasking(MaskGenerator):
    """Independent random tokens over the whole clip (same total count as the others); ignores motion."""

    name = "random"

    def __call__(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        self.last_fallback = False
        n = self.grid[0] * self.tokens_per_slot
        mask = np.zeros(n, bool)
        if self.num_masked:
            mask[np.argpartition(rng.random(n), self.num_masked - 1)[: self.num_masked]] = True
        return mask


def _top_k_rows(key: np.ndarray, k: int) -> np.ndarray:
    """bool mask (R, C) with exactly k True per row: the k largest keys (ties broken by position).

    A partition plus a threshold is several times faster than argpartition along an axis for small rows.
    """
    r, c = key.shape
    if k <= 0:
        return np.zeros((r, c), bool)
    thr = np.partition(key, c - k, axis=1)[:, c - k : c - k + 1]  # (R, 1): k-th largest
    mask = key >= thr
    if np.count_nonzero(mask) == r * k:  # no ties at the threshold: the usual case
        return mask
    mask = key > thr
    short = k - mask.sum(axis=1, keepdims=True)  # >= 1: how many of the keys equal to thr to take
    eq = key == thr
    return mask | (eq & (np.cumsum(eq, axis=1) <= short))


# Radii above this act as this one: the kernel then varies by < 0.02% across 14 tokens (it is flat), and huge
# integers would overflow the float arithmetic below.
MAX_SMOOTH = 1 << 20


def _binomial_kernel(radius: int, reach: int) -> np.ndarray:
    """Weights C(2r, r+k) / 4^r of the binomial kernel of radius r for offsets k = 0..min(r, reach), float64.

    The closed form costs O(reach) whatever the radius (repeated [0.5, 0.5] convolutions cost O(r^2): a radius of
    10^6 stalled the generator's construction); the ratio of neighbouring weights, (r - k + 1) / (r + k), keeps it
    exact for large r, where the factorials overflow.
    """
    r = min(int(radius), MAX_SMOOTH)
    k = np.arange(1, min(r, reach) + 1, dtype=np.float64)
    centre = math.exp(math.lgamma(2 * r + 1) - 2 * math.lgamma(r + 1) - 2 * r * math.log(2.0))
    return centre * np.concatenate([[1.0], np.cumprod((r - k + 1) / (r + k))])


def _smoothing_matrix(n: int, radius: int) -> np.ndarray:
    """(n, n) binomial smoothing of the given radius along one axis (rows sum to <= 1 at the borders)."""
    kernel = _binomial_kernel(radius, n - 1)  # (min(r, n-1) + 1,): offsets 0, 1, ...
    off = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))  # (n, n)
    return np.where(off < len(kernel), kernel[np.minimum(off, len(kernel) - 1)], 0.0).astype(np.float32)


class MotionGuidedMasking(MaskGenerator):
    """Motion-guided masking: mask the K highest-motion tokens of every slot (K = round(ratio * Hp * Wp)).

    Per slot the motion map is smoothed spatially (binomial kernel of `smooth` tokens radius) and mixed with its
    neighbouring slots (weight `temporal`), so that the high-motion region is continuous in time; slots without
    motion take the score of the nearest slot with motion; scores below `floor` x the slot's peak count as none
    (codec noise). `random_mix` is the share of the K tokens drawn at random from the rest (context and
    randomness). Ties (the still background) are broken by one random spatial draw shared by all slots, so away
    from the motion the mask is a tube. A clip whose map is missing, not finite, or whose peak token motion is
    below `min_motion` (pixels of displacement summed over a slot's frames: the default 1.0 ignores the encoder
    jitter of a still clip) gets a tube mask and counts in `fallbacks`.
    """

    name = "mgm"

    def __init__(
        self,
        ratio: float,
        grid: tuple[int, int, int],
        smooth: int = 1,
        temporal: float = 0.5,
        random_mix: float = 0.0,
        min_motion: float = 1.0,
        floor: float = 0.1,
    ) -> None:
        super().__init__(ratio, grid)
        if not 0.0 <= random_mix <= 1.0:
            raise ValueError(f"mgm knob random_mix must be in [0, 1], got {random_mix}")
        if smooth < 0 or temporal < 0:
            raise ValueError(f"mgm knobs smooth and temporal must be >= 0, got {smooth}, {temporal}")
        t2, hp, wp = self.grid
        self.smooth, self.temporal, self.random_mix, self.min_motion = smooth, temporal, random_mix, min_motion
        self.floor = floor
        self.n_random = round(random_mix * self.per_slot)
        self._smooth_h = _smoothing_matrix(hp, smooth)  # (Hp, Hp)
        self._smooth_w_t = _smoothing_matrix(wp, smooth).T.copy()  # (Wp, Wp)
        self._temporal = (np.eye(t2, dtype=np.float32) + temporal * 0.5 * (np.eye(t2, k=1) + np.eye(t2, k=-1))).astype(
            np.float32
        )

    def score(self, motion_map: np.ndarray) -> np.ndarray | None:
        """Smoothed, temporally continuous motion score (T2, Hp*Wp), or None when the clip has no usable motion."""
        t2, hp, wp = self.grid
        m = np.asarray(motion_map, dtype=np.float32).reshape(t2, hp, wp)
        peak = m.max(axis=(1, 2))  # (T2,); NaN / inf show up here too
        if not np.isfinite(peak).all() or peak.max() < self.min_motion:
            return None
        s = (self._smooth_h @ m @ self._smooth_w_t).reshape(t2, hp * wp)  # separable spatial smoothing
        moving = peak >= self.min_motion
        if not moving.all():  # a pause: carry the nearest moving slot's region through it
            pos = np.arange(t2)
            src = np.flatnonzero(moving)
            s = s[src[np.abs(pos[:, None] - src[None, :]).argmin(axis=1)]]
        s = self._temporal @ s
        # codec noise below `floor` x the slot's peak is no motion: those tokens are drawn at random, not in the
        # (arbitrary) order of the noise
        return np.where(s >= self.floor * s.max(axis=1, keepdims=True), s, 0.0)

    def __call__(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        s = None if motion_map is None else self.score(motion_map)
        self.last_fallback = s is None
        if s is None:
            self.fallbacks += 1
            return self._tube(rng)
        t2, k = self.grid[0], self.per_slot
        # Ties (the still background) are broken by one spatial draw shared by all slots, far below any real
        # motion difference: outside the moving region the mask is a tube, so still tokens do not leak through
        # time (the reason VideoMAE uses tubes).
        noise = rng.random(self.tokens_per_slot, dtype=np.float32)  # (HW,)
        key = s + noise * (float(s.max()) * 1e-4)
        mask = _top_k_rows(key, k - self.n_random)
        if self.n_random:
            pick = np.broadcast_to(rng.random(self.tokens_per_slot, dtype=np.float32), s.shape).copy()
            pick[mask] = 2.0  # the top tokens stay, the rest is a random (tube-like) draw
            mask = _top_k_rows(pick, k)
        return mask.reshape(t2 * self.tokens_per_slot)


GENERATORS: dict[str, type[MaskGenerator]] = {g.name: g for g in (TubeMasking, RandomMasking, MotionGuidedMasking)}


def build_masking(name: str, ratio: float, grid: tuple[int, int, int], **knobs: float) -> MaskGenerator:
    """Mask generator `name` ("tube" | "random" | "mgm") for ratio and grid (T2, Hp, Wp); knobs go to mgm."""
    if name not in GENERATORS:
        raise ValueError(f"unknown mask generator {name!r}; choose from {sorted(GENERATORS)}")
    try:
        return GENERATORS[name](ratio, grid, **knobs)
    except TypeError as e:
        raise ValueError(f"mask generator {name!r} got unknown knobs {sorted(knobs)}: {e}") from e


class DecoderMasking:
    """Base class: the `num_targets` encoder-masked tokens of highest `priority` are the decoder's targets.

    Unlike VideoMAE V2, whose decoder mask ignores the encoder's (so ~10% of its decoder queries sit on visible
    tokens and drop out of the loss), every target here is a masked token: the count in the loss is fixed.
    """

    name = "base"

    def __init__(self, target_ratio: float, encoder: MaskGenerator) -> None:
        t2, hp, wp = encoder.grid
        self.grid, self.target_ratio = encoder.grid, float(target_ratio)
        # at most every masked token (the encoder rounds per slot: ratio 0.9 masks 1408 of 1568 tokens, not 1411)
        self.num_targets = min(round(target_ratio * t2 * hp * wp), encoder.num_masked)
        if self.num_targets <= 0 or target_ratio > encoder.ratio:
            raise ValueError(
                f"decoder target ratio {target_ratio} gives {self.num_targets} targets of {t2 * hp * wp} tokens; "
                f"it must be > 0 and at most the encoder's mask ratio {encoder.ratio} ({encoder.num_masked} masked)"
            )
        self.fallbacks = 0  # clips without usable motion that got random targets instead (mgm only)

    def priority(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """(N,) float64 in token order: higher = reconstructed first; no ties (a random tie-break is folded in)."""
        raise NotImplementedError

    def __call__(self, encoder_mask: np.ndarray, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        encoder_mask = np.asarray(encoder_mask, bool).reshape(-1)
        if np.count_nonzero(encoder_mask) < self.num_targets:
            raise ValueError(f"{self}: the encoder masks {encoder_mask.sum()} tokens, fewer than {self.num_targets}")
        key = np.where(encoder_mask, self.priority(motion_map, rng), -np.inf)  # a visible token is never a target
        out = np.zeros(encoder_mask.size, bool)
        out[np.argpartition(-key, self.num_targets - 1)[: self.num_targets]] = True
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_ratio={self.target_ratio}, grid={self.grid})"


class RunningCellTargets(DecoderMasking):
    """VideoMAE V2's running cell: each 2x2 cell of a slot has target_ratio of its 4 tokens as targets (2 at V2's
    setting 0.5), and the chosen positions step one place round the cell from slot to slot, so over 4 slots every
    token is reconstructed equally often and the targets of neighbouring slots do not sit in the same place.

    Written as a priority: token (t, h, w) at cell position j = 2*(h%2) + w%2 has phase (j + t + offset) % 4
    (random offset per clip); phases 0, 1, ... come first. Where the encoder left a phase's token visible, the
    next phase fills in (ties at random), so the count stays fixed and the pattern stays a running one.
    """

    name = "running_cell"

    def __init__(self, target_ratio: float, encoder: MaskGenerator) -> None:
        super().__init__(target_ratio, encoder)
        t, h, w = np.meshgrid(*(np.arange(g) for g in self.grid), indexing="ij")
        self._phase0 = (2 * (h % 2) + w % 2 + t).reshape(-1)  # (N,) phase before the clip's offset

    def priority(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        phase = (self._phase0 + rng.integers(4)) % 4
        return -phase + 0.5 * rng.random(phase.size)  # ties within a phase at random, phases never mix


class RandomTargets(DecoderMasking):
    """Targets drawn uniformly from the encoder-masked tokens."""

    name = "random"

    def priority(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return rng.random(math.prod(self.grid))


class MotionTargets(DecoderMasking):
    """Motion-aware targets (ours): the highest-motion masked tokens first, then a random fill from the rest.

    The motion score is MotionGuidedMasking's (smoothed, temporally continuous, codec noise below `floor` x a
    slot's peak set to 0), with the encoder's knobs when the encoder is mgm. A clip without usable motion gets
    random targets and counts in `fallbacks`.
    """

    name = "mgm"

    def __init__(self, target_ratio: float, encoder: MaskGenerator) -> None:
        super().__init__(target_ratio, encoder)
        mgm = isinstance(encoder, MotionGuidedMasking)
        self._scorer = encoder if mgm else MotionGuidedMasking(encoder.ratio, encoder.grid)

    def priority(self, motion_map: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        s = None if motion_map is None else self._scorer.score(motion_map)
        noise = rng.random(math.prod(self.grid))
        if s is None:
            self.fallbacks += 1
            return noise
        s = s.reshape(-1).astype(np.float64)
        return s / s.max() + 1e-9 * noise  # motion decides; the noise only orders the still (0) tokens


DECODER_GENERATORS: dict[str, type[DecoderMasking]] = {
    g.name: g for g in (RunningCellTargets, RandomTargets, MotionTargets)
}


def build_decoder_masking(name: str, target_ratio: float, encoder: MaskGenerator) -> DecoderMasking:
    """Decoder target generator `name` ("running_cell" | "random" | "mgm") for `encoder`'s grid and masks."""
    if name not in DECODER_GENERATORS:
        raise ValueError(f"unknown decoder mask generator {name!r}; choose from {sorted(DECODER_GENERATORS)}")
    return DECODER_GENERATORS[name](target_ratio, encoder)


def motion_coverage(mask: np.ndarray, motion_map: np.ndarray) -> float:
    """Share of the clip's motion energy on masked tokens (mask: bool (N,), True = masked); nan without motion."""
    m = np.asarray(motion_map, dtype=np.float64).reshape(-1)
    total = m.sum()
    return float(m[np.asarray(mask, bool).reshape(-1)].sum() / total) if total > 0 else float("nan")


def temporal_iou(mask: np.ndarray, grid: tuple[int, int, int]) -> float:
    """Mean IoU of the masked sets of consecutive slots (mask: bool (T2*Hp*Wp,), True = masked); 1 for tube."""
    t2 = grid[0]
    m = np.asarray(mask, bool).reshape(t2, -1)
    if t2 < 2:
        return 1.0
    inter = (m[1:] & m[:-1]).sum(axis=1)
    union = (m[1:] | m[:-1]).sum(axis=1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
