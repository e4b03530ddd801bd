"""Mask generators for VideoMAE pretraining: tube, random and motion-guided (MGM), plus two quality metrics.

Every generator is a callable `gen(motion_map, rng) -> mask`: motion_map is float (T2, Hp, Wp) or None, rng a
`np.random.Generator` (the only source of randomness, so a seed fixes the mask); the mask is bool (T2*Hp*Wp,)
in token order (slot, row, col) with True = masked, and always has exactly `gen.num_masked` True entries
(round(ratio * Hp * Wp) per slot), so batches stack without padding.
"""

from __future__ import annotations

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


def _smoothing_matrix(n: int, radius: int) -> np.ndarray:
    """(n, n) binomial smoothing of the given radius along one axis (rows sum to <= 1 at the borders)."""
    kernel = np.array([1.0])
    for _ in range(2 * radius):
        kernel = np.convolve(kernel, [0.5, 0.5])
    m = np.zeros((n, n), np.float32)
    for off, k in zip(range(-radius, radius + 1), kernel, strict=True):
        m += np.eye(n, k=off, dtype=np.float32) * k
    return m


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
