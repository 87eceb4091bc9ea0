"""Probes that catch a broken reward model before a long RLHF run.

- **swap**: a sample of rows scored again with chosen and rejected exchanged; accuracy must turn
  into ``1 - accuracy - ties`` and every text must get its reward again. A model that scores both
  the same (a head reading padding, a constant output) or a pipeline that reads one column
  twice is flagged.
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
                rescored: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """The swap probe's figures.

    Args:
        original: ``(chosen, rejected)`` rewards of the sampled pairs.
        swapped: the same pairs from the swapped rows: ``(reward of the column now 'chosen' = the
            old rejected, reward of the old chosen)``.
        rescored: ``(old chosen, its reward again)`` for every text of the sample, to see that a
            text gets the same reward wherever it sits.
    """
    n = len(original)
    if n == 0:
        return {"pairs": 0, "flagged": False}
    acc = sum(c > r for c, r in original) / n
    ties = sum(c == r for c, r in original) / n
    swap_acc = sum(c > r for c, r in swapped) / n
    expected = 1.0 - acc - ties
    change = max((abs(a - b) for a, b in rescored), default=0.0)
    scale = max((abs(a) for a, _ in rescored), default=1.0) or 1.0
    reasons = []
    if ties > TIE_LIMIT:
        reasons.append(f"{ties:.0%} of the pairs get the same reward for both responses: the model (or the data "
                       "pipeline) scores the same either way")
    if not math.isclose(swap_acc, expected, abs_tol=SWAP_TOLERANCE):
        reasons.append(f"with chosen and rejected exchanged the accuracy is {swap_acc:.4f}, expected "
                       f"{expected:.4f} (1 - {acc:.4f} - ties {ties:.4f}): rewards depend on the column a response "
                       "came from")
    return {"pairs": n, "accuracy": acc, "ties": ties, "swapped_accuracy": swap_acc, "expected": expected,
            "max_reward_change": change, "relative_reward_change": change / scale,
            "flagged": bool(reasons), "reasons": reasons}
