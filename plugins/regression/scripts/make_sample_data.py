"""Generate the regression plugin's sample data (HelpSteer-style, five attributes, 0-4).

Usage (from the repository root)::

    python plugins/regression/scripts/make_sample_data.py            # rewrites the shipped files
    python plugins/regression/scripts/make_sample_data.py --out DIR  # writes DIR/{train,validation}.jsonl

Deterministic (fixed seed, no dependency beyond the standard library): the test suite
checks that the committed files equal this script's output.

Every attribute is decided by a feature a tiny byte-level model can see:

* helpfulness: the opening phrase (five tiers, from "No." to "Great question!! Happy to help :)");
* correctness: how many of the four things the answer names are real. Every question asks
  for four items of a kind ("Name four planets."), the answer lists four ("Mars; Zyra; Venus;
  Earth.") and each made-up item is an invented name starting with "Z", so the label is 4
  minus the number of Z-names: a count the model can see, like coherence, instead of world
  knowledge a tiny byte-level model cannot have. (The list is separated by semicolons: with
  commas, which the helpfulness openers also contain, helpfulness was learned far later.)
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

#: (question, real items, invented items)
Topic = tuple[str, tuple[str, ...], tuple[str, ...]]

# Every invented name starts with "Z" and no real
# one does: the cue a byte-level model can count (names are short so texts stay <= MAX_BYTES).
TOPICS: tuple[Topic, ...] = (
    ("Name four planets.", ("Mars", "Venus", "Earth", "Saturn", "Uranus", "Jupiter"),
     ("Zyra", "Zorth", "Zebulon", "Zantor")),
    ("Name four capitals.", ("Paris", "Tokyo", "Rome", "Madrid", "Oslo", "Lima"),
     ("Zorbia", "Zentar", "Zelk", "Zavira")),
    ("Name four rivers.", ("Nile", "Amazon", "Danube", "Rhine", "Thames", "Volga"),
     ("Zimbo", "Zarna", "Zuul", "Zerith")),
    ("Name four elements.", ("Iron", "Gold", "Neon", "Carbon", "Helium", "Copper"),
     ("Zephyrium", "Zorblat", "Zinthe", "Zarkon")),
    ("Name four plays by Shakespeare.", ("Hamlet", "Macbeth", "Othello", "Lear", "Tempest"),
     ("Zandria", "Zelos", "Zorvin", "Zacharo")),
    ("Name four mammals.", ("Horse", "Whale", "Lion", "Goat", "Camel", "Otter"),
     ("Zebulot", "Zorilax", "Zunk", "Zivver")),
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


def _answer(rng: random.Random, correctness: int, topic: Topic) -> str:
    """Four items, ``correctness`` of them real and the rest invented, in random order."""
    _, real, invented = topic
    items = rng.sample(real, k=correctness) + rng.sample(invented, k=4 - correctness)
    rng.shuffle(items)
    return "; ".join(items) + "."


def _response(rng: random.Random, values: dict[str, int], topic: Topic) -> str:
    parts = [rng.choice(OPENERS[values["helpfulness"]]), _answer(rng, values["correctness"], topic)]
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
    topic = rng.choice(TOPICS)
    values = {name: rng.randrange(5) for name in ATTRIBUTES}
    response = _response(rng, values, topic)
    question = topic[0]
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
