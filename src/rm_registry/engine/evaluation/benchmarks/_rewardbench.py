"""RewardBench v1 (allenai/reward-bench): pairs, accuracy per subset, four weighted sections.

Formulas as in ``rewardbench/constants.py`` (``EXAMPLE_COUNTS``, ``SUBSET_MAPPING``),
``rewardbench/utils.py`` (``calculate_scores_per_section``) and ``scripts/run_rm.py`` (a pair is
correct when the chosen reward is strictly greater; a tie is wrong).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ...._errors import DataError
from ._spec import Benchmark, Example, Figures, require_columns, text_value

__all__ = ["EXAMPLE_COUNTS", "SUBSET_MAPPING", "RewardBench"]

#: Upstream's weights per subset; ``math-prm`` (447 rows) is weighted 984 to match the six code subsets.
EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}

#: Upstream's sections and their subsets, in upstream's order.
SUBSET_MAPPING: dict[str, list[str]] = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def section_of(subset: str) -> str | None:
    for section, subsets in SUBSET_MAPPING.items():
        if subset in subsets:
            return section
    return None


class RewardBench(Benchmark):
    name = "rewardbench"
    layout = "prompt, chosen, rejected, subset (one response each; id optional)"
    source = "allenai/reward-bench: rewardbench/constants.py, rewardbench/utils.py, scripts/run_rm.py"

    def read(self, path: str | Path, records: Sequence[tuple[int, Mapping[str, Any]]]) -> list[Example]:
        out = []
        for row, rec in records:
            require_columns(rec, ("prompt", "chosen", "rejected", "subset"), path=path, row=row, bench=self)
            subset = rec["subset"]
            if not isinstance(subset, str) or not subset:
                raise DataError(path, row, f"column 'subset' must be a non-empty string, got {subset!r}")
            out.append(Example(
                row=row, id=str(rec.get("id", row - 1)), subset=subset,
                prompt=text_value(rec, "prompt", path=path, row=row, bench=self, messages=True),
                chosen=[text_value(rec, "chosen", path=path, row=row, bench=self)],
                rejected=[text_value(rec, "rejected", path=path, row=row, bench=self)],
            ))
        return out

    def figures(self, examples: Sequence[Example], chosen: Sequence[Sequence[float]],
                rejected: Sequence[Sequence[float]]) -> Figures:
        correct = [1.0 if c[0] > r[0] else 0.0 for c, r in zip(chosen, rejected)]
        per_subset: dict[str, list[float]] = {}
        for ex, ok in zip(examples, correct):
            per_subset.setdefault(ex.subset, []).append(ok)
        accuracy = {s: sum(v) / len(v) for s, v in per_subset.items()}
        sections: dict[str, float | None] = {}
        rows: list[dict[str, Any]] = []
        for section, subsets in SUBSET_MAPPING.items():
            weighted = total = 0.0
            n = 0
            for s in subsets:
                if s in accuracy:  # calculate_scores_per_section
                    weighted += accuracy[s] * EXAMPLE_COUNTS[s]
                    total += EXAMPLE_COUNTS[s]
                    n += len(per_subset[s])
                    rows.append({"section": section, "subset": s, "n": len(per_subset[s]), "score": accuracy[s]})
            sections[section] = weighted / total if total else None
            rows.append({"section": section, "subset": "(section, weighted)", "n": n, "score": sections[section]})
        others = sorted(s for s in accuracy if section_of(s) is None)
        for s in others:
            rows.append({"section": "(outside the sections)", "subset": s, "n": len(per_subset[s]), "score": accuracy[s]})
        notes = []
        missing = [s for s, v in sections.items() if v is None]
        present = [v for v in sections.values() if v is not None]
        if missing:
            notes.append(f"no subset of {', '.join(missing)} in the data: the RewardBench score needs all four "
                         "sections (reward-bench counts a missing section as 0)")
            score = None
        else:
            score = sum(present) / len(present)
        if others:
            notes.append(f"subsets outside RewardBench's sections, reported apart: {', '.join(others)}")
        return Figures(
            score=score, score_name="RewardBench score (mean of Chat, Chat Hard, Safety, Reasoning)",
            sections=sections, rows=rows, correct=correct, notes=notes,
            extra={"subset_accuracy": accuracy,
                   "mean_of_present_sections": (sum(present) / len(present)) if present else None},
        )
