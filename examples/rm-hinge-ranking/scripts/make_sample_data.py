"""Write the sample preference set shipped in ``src/rm_hinge_ranking/data``.

Deterministic (fixed seed): running it again gives byte-identical files, which the
plugin's tests check. The preference is easy to learn on purpose: the chosen answer is
polite and on topic, the rejected one is curt or dismissive. It is a smoke-test data set
for ``rm-registry train hinge_ranking`` on a laptop, not a benchmark.

    python scripts/make_sample_data.py            # rewrite the files
    python scripts/make_sample_data.py --check    # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "rm_hinge_ranking" / "data"
SIZES = {"train": 240, "validation": 48}
SEED = 20260

TOPICS = [
    ("boil an egg", "put it in boiling water for about eight minutes"),
    ("water a cactus", "water it deeply once every two or three weeks"),
    ("learn to juggle", "start with two balls and practise short throws"),
    ("fix a flat tyre", "find the puncture, patch it, and pump the tyre up again"),
    ("start running", "begin with short, easy runs three times a week"),
    ("store fresh herbs", "keep them in a glass of water in the fridge"),
    ("write a cover letter", "open with the role and say why you fit it"),
    ("sleep better", "keep a regular bedtime and avoid screens late at night"),
    ("clean a cast iron pan", "rinse it with hot water and dry it over low heat"),
    ("save for a holiday", "put a fixed amount aside each month"),
    ("tune a guitar", "use a tuner and adjust one string at a time"),
    ("plant tomatoes", "plant them in a sunny spot after the last frost"),
]
OPENERS = ["Sure!", "Happy to help.", "Good question.", "Of course."]
CLOSERS = ["I hope this helps.", "Good luck!", "Let me know if you have more questions.", "Enjoy!"]
RUDE = [
    "Figure it out yourself.",
    "Whatever, just search for it.",
    "Not my problem.",
    "Why would you even ask that?",
    "No idea. Stop asking.",
]


def make_pairs(n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` records ``{"chosen", "rejected"}``, each a templated question and answer."""
    pairs = []
    for _ in range(n):
        topic, advice = rng.choice(TOPICS)
        question = f"User: How do I {topic}?\nAssistant: "
        chosen = f"{question}{rng.choice(OPENERS)} To {topic}, {advice}. {rng.choice(CLOSERS)}"
        rejected = f"{question}{rng.choice(RUDE)}"
        pairs.append({"chosen": chosen, "rejected": rejected})
    return pairs


def render() -> dict[str, str]:
    """File name -> JSON Lines text."""
    rng = random.Random(SEED)
    return {
        f"{split}.jsonl": "".join(json.dumps(p) + "\n" for p in make_pairs(n, rng)) for split, n in SIZES.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped files are out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} pairs)")
    if stale:
        print("out of date, run scripts/make_sample_data.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
