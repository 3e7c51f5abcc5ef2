"""Concordance correlation coefficient (CCC), the ABAW valence-arousal metric.

    CCC(x, y) = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)

with population (1/n) moments, computed over all frames of a split concatenated; frames whose
label is -5 (not annotated) are excluded. P_VA = (CCC_valence + CCC_arousal) / 2.

Constant inputs: when the denominator is 0 (both series constant and equal) the CCC is
undefined; we return 0.0 for it, as a prediction carrying no information, rather than NaN.
A constant prediction against varying labels gives 0 by the formula itself. Non-finite
predictions (NaN, inf) are refused with :class:`mambava.checks.NonFiniteError`: a diverged
model must not score 0 and carry on.

``ccc`` (numpy, float64) is for evaluation; ``ccc_torch``/``ccc_loss`` (torch, differentiable)
are for training. Both share the masking convention.
"""

from __future__ import annotations

import numpy as np
import torch

from mambava.checks import require_finite
from mambava.data.affwild2 import UNLABELLED  # noqa: F401  (-5: not annotated; re-exported)


def label_mask(true: np.ndarray) -> np.ndarray:
    """True where a label is present (not -5 and finite)."""
    true = np.asarray(true)
    return np.isfinite(true) & (true != UNLABELLED)


def ccc(pred, true) -> float:
    """CCC of two 1-D series, skipping frames where ``true`` is -5. Float64 throughout."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"ccc: shapes differ: pred {pred.shape} vs true {true.shape}")
    require_finite(pred, "ccc: predictions")
    keep = label_mask(true)
    x, y = pred[keep], true[keep]
    if x.size == 0:
        raise ValueError("ccc: no annotated frames (all labels are -5)")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    return float(2.0 * cov / denom) if denom > 0 else 0.0


def ccc_va(pred, true) -> dict[str, float]:
    """CCC of valence (column 0) and arousal (column 1) and their mean P_VA.

    ``pred`` and ``true`` are (frames, 2). Frames are masked per column.
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    cv = ccc(pred[:, 0], true[:, 0])
    ca = ccc(pred[:, 1], true[:, 1])
    return {"ccc_valence": cv, "ccc_arousal": ca, "p_va": p_va(cv, ca)}


def p_va(ccc_valence: float, ccc_arousal: float) -> float:
    """The ABAW challenge score: mean of the valence and arousal CCC."""
    return 0.5 * (ccc_valence + ccc_arousal)


def ccc_torch(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable CCC over all elements of ``pred``/``true`` where ``true`` != -5.

    pred, true: any matching shape; reduced over everything. Returns a 0-d tensor.
    """
    mask = (true != UNLABELLED) & torch.isfinite(true)
    n = mask.sum()
    if n == 0:
        return pred.sum() * 0.0  # keeps the graph; no signal from a batch without labels
    w = mask.to(pred.dtype)
    t = torch.where(mask, true, torch.zeros_like(true))
    mx = (pred * w).sum() / n
    my = (t * w).sum() / n
    dx = (pred - mx) * w
    dy = (t - my) * w
    vx = (dx * dx).sum() / n
    vy = (dy * dy).sum() / n
    cov = (dx * dy).sum() / n
    return 2.0 * cov / (vx + vy + (mx - my) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(1 - CCC_valence) + (1 - CCC_arousal) for (..., 2) tensors, -5 labels masked."""
    return (1.0 - ccc_torch(pred[..., 0], true[..., 0])) + (1.0 - ccc_torch(pred[..., 1], true[..., 1]))


def bootstrap_ccc(
    pred: np.ndarray,
    true: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Video-level bootstrap percentile intervals of CCC_v, CCC_a and P_VA.

    Videos (``groups``: one id per frame) are resampled with replacement and their frames
    concatenated, as the split-level CCC concatenates videos. pred/true: (frames, 2).
    Returns {"ccc_valence": (lo, hi), "ccc_arousal": ..., "p_va": ...}.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    require_finite(pred, "bootstrap_ccc: predictions")  # not to be taken for an empty resample below
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))])
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, 3))
    for b in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in pick])
        try:
            r = ccc_va(pred[idx], true[idx])
            stats[b] = (r["ccc_valence"], r["ccc_arousal"], r["p_va"])
        except ValueError:  # a resample with no labelled frame
            stats[b] = np.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(stats, [alpha, 1.0 - alpha], axis=0)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(("ccc_valence", "ccc_arousal", "p_va"))}
