"""Probes that catch a broken reward model before a long RLHF run.

- **swap**: a sample of rows read and scored again with chosen and rejected exchanged; accuracy
  must turn into ``1 - accuracy - ties`` and every text must get its reward back (the rendering
  does not depend on the column, so only rewards that change with the batch a text lands in can
  move it). Flagged: a model that scores both responses the same on most pairs (a head reading
  padding, a constant output; counted over every pair of the file), a swapped accuracy off by
  more than :data:`SWAP_TOLERANCE`, or rewards that change by more than :data:`REWARD_TOLERANCE`
  (relative) between the two passes.
- **length bias**: correlation of the reward with the response's length (characters), and the
  accuracy on pairs whose chosen response is the shorter one against those where it is longer.
- **distribution**: mean, standard deviation and quantiles of the rewards (what RLHF users
  normalise with), of all responses and of chosen and rejected apart.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["distribution", "length_bias", "swap_result", "SWAP_TOLERANCE"]

#: How far the swapped accuracy may stray from ``1 - accuracy - ties`` (float noise between batches).
SWAP_TOLERANCE = 0.02
#: Share of tied pairs above which the model is said to score both responses the same.
TIE_LIMIT = 0.5
#: Largest relative change of a text's reward between the two passes (float noise is ~1e-6).
REWARD_TOLERANCE = 1e-3

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """``n, mean, std, min, max`` and the quantiles ``q01 ... q99`` (numpy's linear interpolation)."""
    import numpy as np

    if not len(values):
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()),
                           "min": float(a.min()), "max": float(a.max())}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = float(np.quantile(a, q))
    return out


def _ranks(a: Any) -> Any:
    """Ranks of ``a`` with ties given their average rank (as Spearman's coefficient needs)."""
    import numpy as np

    values, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # first rank of each distinct value
    return (starts + (counts - 1) / 2.0)[inverse]


def _pearson(x: Any, y: Any) -> float | None:
    import numpy as np

    if len(x) < 2 or float(np.std(x)) == 0 or float(np.std(y)) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def length_bias(rewards: Sequence[float], lengths: Sequence[int], pairs: Sequence[tuple[float, float, int, int]]
                ) -> dict[str, Any]:
    """Correlations of reward with length over every response, and accuracy by which side is shorter.

    Args:
        rewards / lengths: one per scored response.
        pairs: ``(chosen reward, rejected reward, chosen length, rejected length)``.
    """
    import numpy as np

    r = np.asarray(rewards, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64)
    shorter = [c > rj for c, rj, lc, lr in pairs if lc < lr]
    longer = [c > rj for c, rj, lc, lr in pairs if lc > lr]
    return {
        "length_unit": "characters of the response",
        "pearson": _pearson(n, r),
        "spearman": _pearson(_ranks(n), _ranks(r)) if len(r) > 1 else None,
        "chosen_shorter": {"n": len(shorter), "accuracy": (sum(shorter) / len(shorter)) if shorter else None},
        "chosen_longer": {"n": len(longer), "accuracy": (sum(longer) / len(longer)) if longer else None},
        "chosen_longer_share": (len(longer) / len(pairs)) if pairs else None,
    }


def swap_result(original: Sequence[tuple[float, float]], swapped: Sequence[tuple[float, float]],
                rescored: Sequence[tuple[float, float]], *, ties_all: float | None = None,
                pairs_all: int | None = None) -> dict[str, Any]:
    """The swap probe's figures.

    Args:
        original: ``(chosen, rejected)`` rewards of the sampled pairs.
        swapped: the same pairs from the swapped rows: ``(reward of the column now 'chosen' = the
            old rejected, reward of the old chosen)``.
        rescored: ``(a text's reward, its reward again)`` for every text of the sample.
        ties_all / pairs_all: the share of tied pairs over the whole file, and how many pairs it has.
    """
    n = len(original)
    ties_file = ties_all if ties_all is not None else (sum(c == r for c, r in original) / n if n else 0.0)
    out: dict[str, Any] = {"pairs": n, "ties_all_pairs": ties_file, "pairs_in_file": pairs_all}
    reasons = []
    if ties_file > TIE_LIMIT:
        reasons.append(f"{ties_file:.0%} of the pairs get the same reward for both responses: the model (or the data "
                       "pipeline) scores the same either way")
    if n:
        acc = sum(c > r for c, r in original) / n
        ties = sum(c == r for c, r in original) / n
        swap_acc = sum(c > r for c, r in swapped) / n
        expected = 1.0 - acc - ties
        change = max((abs(a - b) for a, b in rescored), default=0.0)
        scale = max((abs(a) for a, _ in rescored), default=1.0) or 1.0
        out.update(accuracy=acc, ties=ties, swapped_accuracy=swap_acc, expected=expected, max_reward_change=change,
                   relative_reward_change=change / scale)
        if not math.isclose(swap_acc, expected, abs_tol=SWAP_TOLERANCE):
            reasons.append(f"with chosen and rejected exchanged the accuracy is {swap_acc:.4f}, expected "
                           f"{expected:.4f} (1 - {acc:.4f} - ties {ties:.4f}): rewards depend on the column a "
                           "response came from")
        if change / scale > REWARD_TOLERANCE:
            reasons.append(f"a text's reward changed by {change:.3g} ({change / scale:.1e} relative) when scored "
                           "again in other batches: rewards depend on the batch (padding, pooling)")
    out.update(flagged=bool(reasons), reasons=reasons)
    return out
