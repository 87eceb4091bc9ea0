"""Generate the process_reward plugin's sample data: step-by-step sums with wrong steps.

Usage (from the repository root)::

    python plugins/process_reward/scripts/make_sample_data.py            # rewrites the shipped files
    python plugins/process_reward/scripts/make_sample_data.py --out DIR  # writes DIR/{train,validation}.jsonl

Deterministic (fixed seed, standard library only): the test suite checks that the committed
files equal this script's output.

Each record is TRL's format: a prompt ``"Add 3, 5 and 4."`` and steps that add one number at a
time (``"3+5=8"``, ``"8+4=12"``), some of them wrong. Labels follow Math-Shepherd / PRM800K's
first-error rule: a step is good when it and every step before it are right, so every step from
the first mistake on is labelled false. About half of the steps are good; a model must check the
sum of each step (and remember an earlier mistake) to beat the majority class.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261207
SIZES = {"train": 4000, "validation": 500}


PLACES = ("hall", "door", "desk", "lamp", "roof", "yard", "gate", "shed", "pond", "wall", "attic", "porch")
MOVES = ("walk", "run", "climb", "crawl", "step", "hop")  # what a walker can do
IMPOSSIBLE = ("fly", "swim", "teleport", "dig")  # a step that cannot happen: wrong


def _solution(rng: random.Random) -> dict[str, object]:
    path = rng.sample(PLACES, rng.randint(3, 6))
    steps, labels = [], []
    ok = True
    error_rate = rng.choice((0.0, 0.2, 0.4))
    for there in path[1:]:
        wrong = rng.random() < error_rate
        move = rng.choice(IMPOSSIBLE if wrong else MOVES)
        ok = ok and not wrong
        steps.append(f"{move} to the {there}")
        labels.append(ok)
    prompt = f"Get from the {path[0]} to the {path[-1]}.\n"
    return {"prompt": prompt, "completions": steps, "labels": labels}


def make(out: Path) -> None:
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        rows = [_solution(rng) for _ in range(n)]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "rm_process_reward" / "data",
                        help="folder to write train.jsonl and validation.jsonl into (default: the shipped data)")
    make(parser.parse_args().out)


if __name__ == "__main__":
    main()
