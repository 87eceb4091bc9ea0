"""Generate the regression plugin's sample data (HelpSteer-style, five attributes, 0-4).

Usage (from the repository root)::

    python plugins/regression/scripts/make_sample_data.py            # rewrites the shipped files
    python plugins/regression/scripts/make_sample_data.py --out DIR  # writes DIR/{train,validation}.jsonl

Deterministic (fixed seed, no dependency beyond the standard library): the test suite
checks that the committed files equal this script's output.

Every attribute is decided by a feature a tiny byte-level model can see:

* helpfulness: the opening phrase (five tiers, from "No." to "Great question!! Happy to help :)");
* correctness: whether the answer states the true fact (Paris) or a made-up one (Zorbia),
  and whether it hedges ("I think"); no answer at all is 2;
* coherence: 4 minus the number of garbled fragments ("#q%") inserted into the response;
* complexity: the register of the explanatory sentences (five vocabularies, plain to technical);
* verbosity: the number of explanatory sentences minus one (1 to 5 sentences).

Labels use all three formats the plugin reads (a NeMo-Aligner list with -100 for a missing
attribute, a SteerLM "name:value" string, an object), about 10% of entries are missing,
and about a third of the texts are chat message lists.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
MASK = -100
SEED = 20240611
SIZES = {"train": 1500, "validation": 200}
MAX_BYTES = 255  # + EOS = 256 = the engine's default model.encoder_seq_length
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "rm_regression" / "data"

# (question, true answer, made-up answer). The made-up answers name invented things whose names
# start with "Z", a cue a byte-level model picks up quickly.
FACTS = (
    ("What is the capital of France?", "the capital is Paris", "the capital is Zorbia"),
    ("What is the capital of Japan?", "the capital is Tokyo", "the capital is Zentar"),
    ("How many legs does a spider have?", "it has eight legs", "it has Zuul legs"),
    ("What is the largest planet?", "it is Jupiter", "it is Zebulon"),
    ("Who wrote Hamlet?", "Shakespeare wrote it", "Zorblat wrote it"),
    ("What is the symbol for gold?", "the symbol is Au", "the symbol is Zq"),
    ("Which animal is the fastest on land?", "the cheetah is", "the Zebu snail is"),
    ("What gas do plants take in?", "they take in carbon dioxide", "they take in Zephyrium"),
)

# helpfulness 0..4: two openers per tier.
OPENERS = (
    ("No.", "Whatever."),
    ("Hmm, fine.", "If you must."),
    ("Okay, here it is.", "Alright, here."),
    ("Sure, happy to help!", "Sure thing, glad to help!"),
    ("Great question!! Happy to help :)", "Thanks for asking!! Gladly :)"),
)

# complexity 0..4: explanatory sentences in five registers, from short plain words to long
# technical ones (every register has 5 sentences).
REGISTERS = (
    ("It is so.", "I saw it.", "It is true.", "We all do.", "It is fun."),
    ("Many people know this.", "You can look it up.", "It is easy to check.", "Most maps show it.",
     "Kids learn this."),
    ("Textbooks explain this.", "Teachers mention this.", "Encyclopedias agree.", "Reference works say so.",
     "Atlases document this."),
    ("Literature corroborates.", "Specialists acknowledge.", "Documentation agrees.", "References concur.",
     "Historians confirm."),
    ("Unimpeachably attested.", "Incontrovertibly so.", "Epistemically robust.", "Bibliographically noted.",
     "Methodologically sound."),
)

GARBLE = ("#q%", "%v#", "@k%", "~j@", "#x~")

CORRECT_HEDGE = "I think "
NO_ANSWER = ("I am not sure.", "I cannot say.")


def _response(rng: random.Random, values: dict[str, int], fact: tuple[str, str, str]) -> str:
    _, true_answer, made_up = fact
    parts = [rng.choice(OPENERS[values["helpfulness"]])]
    correctness = values["correctness"]
    if correctness == 2:
        parts.append(rng.choice(NO_ANSWER))
    else:
        answer = true_answer if correctness >= 3 else made_up
        hedged = correctness in (1, 3)
        sentence = (CORRECT_HEDGE + answer) if hedged else answer[0].upper() + answer[1:]
        parts.append(sentence + ".")
    register = REGISTERS[values["complexity"]]
    parts.extend(rng.sample(register, k=values["verbosity"] + 1))  # 1..5 sentences: complexity stays visible
    for _ in range(4 - values["coherence"]):
        at = rng.randrange(1, len(parts) + 1)
        parts.insert(at, rng.choice(GARBLE))
    return " ".join(parts)


def _label(rng: random.Random, values: dict[str, int]) -> Any:
    present = [name for name in ATTRIBUTES if rng.random() >= 0.1]
    if not present:
        present = [rng.choice(ATTRIBUTES)]
    fmt = rng.choice(("list", "string", "object"))
    if fmt == "list":
        return [values[n] if n in present else MASK for n in ATTRIBUTES]
    if fmt == "string":
        return ",".join(f"{n}:{values[n]}" for n in ATTRIBUTES if n in present)
    return {n: values[n] for n in ATTRIBUTES if n in present}


def make_record(rng: random.Random) -> dict[str, Any]:
    """One ``{"text", "label"}`` line with random attribute values."""
    fact = rng.choice(FACTS)
    values = {name: rng.randrange(5) for name in ATTRIBUTES}
    response = _response(rng, values, fact)
    question = fact[0]
    if rng.random() < 1 / 3:
        text: Any = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
        rendered = f"user: {question}\nassistant: {response}"
    else:
        text = rendered = f"user: {question}\nassistant: {response}"
    size = len(rendered.encode("utf-8"))
    if size > MAX_BYTES:  # pragma: no cover - a guard on the templates above
        raise AssertionError(f"sample text has {size} bytes > {MAX_BYTES}: shorten the templates")
    return {"text": text, "label": _label(rng, values)}


def generate(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "validation": [...]}``, the same for the same seed."""
    rng = random.Random(seed)
    return {split: [make_record(rng) for _ in range(n)] for split, n in SIZES.items()}


def render(records: list[dict[str, Any]]) -> str:
    """JSON Lines text of ``records`` (one compact object per line)."""
    return "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in records)


def write(out_dir: Path, seed: int = SEED) -> dict[str, Path]:
    """Write ``out_dir/{train,validation}.jsonl``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in generate(seed).items():
        path = out_dir / f"{split}.jsonl"
        path.write_text(render(records), encoding="utf-8")
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for split, path in write(args.out, args.seed).items():
        print(f"{split}: {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
