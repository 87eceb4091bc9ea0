"""Small data sets in each benchmark's own layout (RewardBench v1 / v2, RM-Bench), generated."""

from __future__ import annotations

import random
from typing import Any

from reference_formulas import EXAMPLE_COUNTS

RB2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus")


def _text(rng: random.Random, word: str) -> str:
    return " ".join(f"{word}{rng.randint(0, 9)}" for _ in range(rng.randint(1, 8))) + "."


def rewardbench_rows(per_subset: int = 3, seed: int = 0, extra_subset: bool = True) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for subset in EXAMPLE_COUNTS:
        for i in range(per_subset):
            rows.append({"prompt": f"Question {i} of {subset}: {_text(rng, 'q')}", "chosen": _text(rng, "good"),
                         "chosen_model": "m1", "rejected": _text(rng, "bad"), "rejected_model": "m2",
                         "subset": subset, "id": len(rows)})
    if extra_subset:
        rows.append({"prompt": "an extra subset", "chosen": "yes.", "rejected": "no.", "subset": "my-subset",
                     "id": len(rows)})
    return rows


def rewardbench2_rows(per_subset: int = 3, ties_prompts: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for subset in RB2_SUBSETS:
        for i in range(per_subset):
            rejected = [_text(rng, "bad") for _ in range(3)]
            rows.append({"id": f"{len(rows)}", "prompt": f"{subset} {i}: {_text(rng, 'q')}",
                         "chosen": [_text(rng, "good")], "rejected": rejected, "num_correct": 1,
                         "num_incorrect": 3, "total_completions": 4, "models": ["a"] * 4, "subset": subset,
                         "additional_metadata": {}})
    for p in range(ties_prompts):
        for kind, correct in (("ref", 1), ("tied", rng.randint(2, 4))):
            # every other tied row lists one more response in 'chosen' than num_correct counts as correct
            chosen = [_text(rng, "right") for _ in range(correct + (kind == "tied" and p % 2))]
            rejected = [_text(rng, "wrong") for _ in range(rng.randint(1, 3))]
            rows.append({"id": f"{kind}:{p}", "prompt": f"ties {p}: {_text(rng, 'q')}", "chosen": chosen,
                         "rejected": rejected, "num_correct": correct, "num_incorrect": len(rejected),
                         "total_completions": len(chosen) + len(rejected), "subset": "Ties"})
    return rows


def rm_bench_rows(per_domain: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for domain in ("chat", "math", "code", "safety-refuse", "safety-response"):
        for i in range(per_domain):
            rows.append({"id": f"{domain}-{i}", "prompt": f"{domain} {i}: {_text(rng, 'q')}",
                         "chosen": [_text(rng, "c"), _text(rng, "cc") * 2, "# " + _text(rng, "ccc") * 3],
                         "rejected": [_text(rng, "r"), _text(rng, "rr") * 2, "# " + _text(rng, "rrr") * 3],
                         "domain": domain})
    return rows
