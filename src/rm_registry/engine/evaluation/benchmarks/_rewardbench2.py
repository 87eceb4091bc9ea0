"""RewardBench 2 (allenai/reward-bench ``scripts/run_v2.py``): best-of-N per prompt, Ties scored apart.

Formulas as in ``rewardbench/utils.py``: ``reroll_and_score_dataset`` (a row scores ``1/k`` when
its first response has the maximum score and ``k`` responses share it, else 0) and
``process_single_model`` with ``_compute_prompt_stats`` (the Ties subset); the leaderboard score
is the plain mean of the subsets.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...._errors import DataError
from ._spec import Benchmark, Example, Figures, require_columns, text_list, text_value

__all__ = ["RewardBench2", "SUBSETS", "ties_score"]

#: The six subsets of the leaderboard, in its order.
SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")

_TIES_ID = re.compile(r"^(ref|tied):(\d+)$")


def _is_ties(subset: str) -> bool:
    return subset.lower() == "ties"


def _int(record: Mapping[str, Any], key: str, *, path: str | Path, row: int) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value or value < 0):
        raise DataError(path, row, f"column {key!r} must be a whole number >= 0, got {value!r}")
    return int(value)


def ties_score(examples: Sequence[Example], chosen: Sequence[Sequence[float]],
               rejected: Sequence[Sequence[float]]) -> dict[str, float]:
    """Upstream's Ties score: 0.30 tied accuracy + 0.30 ref accuracy + 0.20 P(margin_tied > spread)
    + 0.20 P(min(margin_ref, margin_tied) > spread) + 0.01 mean(tanh(min margin / spread - 1)),
    the last three over prompts that have both a ``ref:`` and a ``tied:`` row."""
    import numpy as np

    grouped: dict[tuple[str, int], list[tuple[bool, float]]] = {}
    for ex, c, r in zip(examples, chosen, rejected):  # rows of one id add up, as upstream groups them
        kind, pid = _TIES_ID.match(ex.id).groups()  # type: ignore[union-attr]  # checked on reading
        k = ex.num_correct if ex.num_correct is not None else len(c)
        grouped.setdefault((kind, int(pid)), []).extend((i < k, s) for i, s in enumerate([*c, *r]))
    ref: dict[int, tuple[bool, float, float]] = {}
    tied: dict[int, tuple[bool, float, float]] = {}
    for (kind, pid), samples in grouped.items():
        good = [s for ok, s in samples if ok]
        bad = [s for ok, s in samples if not ok]
        spread = max(good) - min(good) if len(good) > 1 else math.nan
        margin = min(good) - (max(bad) if bad else -math.inf)
        (ref if kind == "ref" else tied)[pid] = (margin > 0, spread, margin)
    ref_acc = float(np.mean([s[0] for s in ref.values()])) if ref else 0.0
    tied_acc = float(np.mean([s[0] for s in tied.values()])) if tied else 0.0
    both = sorted(set(ref) & set(tied))
    spread = np.array([tied[p][1] for p in both], dtype=float)
    margin_tied = np.array([tied[p][2] for p in both], dtype=float)
    margin_ref = np.array([ref[p][2] for p in both], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        preferred = float(np.mean(margin_tied > spread)) if both else math.nan
        preferred_hard = float(np.mean(np.minimum(margin_ref, margin_tied) > spread)) if both else math.nan
        margin_scores = np.nan_to_num(np.tanh(np.minimum(margin_ref, margin_tied) / spread - 1), nan=0.0)
    margin_score = float(np.mean(margin_scores)) if both else math.nan
    score = 0.30 * tied_acc + 0.30 * ref_acc + 0.20 * preferred + 0.20 * preferred_hard + 0.01 * margin_score
    return {"score": float(score), "ref_accuracy": ref_acc, "tied_accuracy": tied_acc,
            "correctness_preferred": preferred, "correctness_preferred_hard": preferred_hard,
            "correctness_margin_score": margin_score, "prompts_with_both": float(len(both))}


class RewardBench2(Benchmark):
    name = "rewardbench2"
    layout = ("id, prompt, chosen [list], rejected [list], num_correct, subset (total_completions where present; "
              "Ties ids ref:N / tied:N)")
    source = "allenai/reward-bench: scripts/run_v2.py, rewardbench/utils.py (reroll_and_score_dataset, process_single_model)"

    def read(self, path: str | Path, records: Sequence[tuple[int, Mapping[str, Any]]]) -> list[Example]:
        out = []
        for row, rec in records:
            require_columns(rec, ("id", "prompt", "chosen", "rejected", "num_correct", "subset"), path=path, row=row,
                            bench=self)
            subset = rec["subset"]
            if not isinstance(subset, str) or not subset:
                raise DataError(path, row, f"column 'subset' must be a non-empty string, got {subset!r}")
            chosen = text_list(rec, "chosen", path=path, row=row, bench=self)
            rejected = text_list(rec, "rejected", path=path, row=row, bench=self)
            num_correct = _int(rec, "num_correct", path=path, row=row)
            if num_correct is None or num_correct < 1 or num_correct > len(chosen):
                raise DataError(path, row, f"column 'num_correct' is {rec['num_correct']!r}, but 'chosen' holds "
                                           f"{len(chosen)} response{'s' if len(chosen) != 1 else ''}: it must be 1 "
                                           f"to {len(chosen)}")
            total = _int(rec, "total_completions", path=path, row=row)
            if total is not None and total != len(chosen) + len(rejected):
                raise DataError(path, row, f"column 'total_completions' is {total}, but 'chosen' and 'rejected' hold "
                                           f"{len(chosen)} + {len(rejected)} responses")
            ident = str(rec["id"])
            if _is_ties(subset) and not _TIES_ID.match(ident):
                raise DataError(path, row, f"column 'id' is {ident!r}; Ties rows are named ref:N or tied:N "
                                           "(N the prompt's number)")
            out.append(Example(row=row, id=ident, subset=subset, num_correct=num_correct,
                               prompt=text_value(rec, "prompt", path=path, row=row, bench=self, messages=True),
                               chosen=chosen, rejected=rejected))
        return out

    def pairs(self, example: Example) -> list[tuple[int, int]]:
        """Ties: every correct chosen response against every rejected one; else the first against each rejected."""
        if _is_ties(example.subset):
            k = example.num_correct or len(example.chosen)
            return [(i, j) for i in range(k) for j in range(len(example.rejected))]
        return [(0, j) for j in range(len(example.rejected))]

    def figures(self, examples: Sequence[Example], chosen: Sequence[Sequence[float]],
                rejected: Sequence[Sequence[float]]) -> Figures:
        correct: list[float | None] = []
        groups: dict[str, list[int]] = {}
        for i, (ex, c, r) in enumerate(zip(examples, chosen, rejected)):
            groups.setdefault(ex.subset, []).append(i)
            if _is_ties(ex.subset):
                correct.append(None)  # scored as a whole (upstream sets results to None)
                continue
            scores = [*c, *r]
            top = max(scores)
            correct.append(1.0 / sum(1 for s in scores if s == top) if scores[0] == top else 0.0)
        subset_scores: dict[str, float] = {}
        extra: dict[str, Any] = {}
        for subset, idx in groups.items():
            if _is_ties(subset):
                ties = ties_score([examples[i] for i in idx], [chosen[i] for i in idx], [rejected[i] for i in idx])
                subset_scores[subset] = ties["score"]
                extra["ties"] = ties
            else:
                subset_scores[subset] = sum(correct[i] for i in idx) / len(idx)  # type: ignore[misc]
        known = {s.lower() for s in SUBSETS}
        order = [s for name in SUBSETS for s in subset_scores if s.lower() == name.lower()] + \
            sorted(s for s in subset_scores if s.lower() not in known)
        rows = [{"section": "RewardBench 2", "subset": s, "n": len(groups[s]), "score": subset_scores[s]} for s in order]
        notes = []
        present = {s.lower() for s in subset_scores}
        missing = [s for s in SUBSETS if s.lower() not in present]
        if missing:
            notes.append(f"subsets missing from the data: {', '.join(missing)}; the score is the mean of the "
                         f"{len(subset_scores)} present (the leaderboard's is over all six)")
        score = sum(subset_scores.values()) / len(subset_scores)
        return Figures(score=score, score_name="RewardBench 2 score (mean of the subsets)",
                       sections={s: subset_scores[s] for s in order}, rows=rows, correct=correct, notes=notes,
                       extra=extra)
