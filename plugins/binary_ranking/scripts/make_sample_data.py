#!/usr/bin/env python
"""Generate the sample preference data shipped with ``rm-binary-ranking``.

The output is deterministic (fixed seed, fixed phrase lists): running this script again must
reproduce the committed files byte for byte (``tests/test_sample_data.py`` checks it).

Each line is ``{"prompt", "chosen", "rejected"}``. The prompt is a factual question; the chosen
response answers it correctly, mostly politely; the rejected one is rude and wrong, off-topic or
grudgingly right, or polite but gives no answer. The signal is learnable by a tiny byte-level model in a couple of
minutes, but not by length: for every pair a coin decides whether the chosen or the rejected
response is the longer one (the test checks that "longer wins" scores close to 50 %).
Validation questions use topics never seen in training, so validation accuracy measures the
learned style preference rather than memorised facts.

Usage::

    python plugins/binary_ranking/scripts/make_sample_data.py            # writes the package data
    python plugins/binary_ranking/scripts/make_sample_data.py --out DIR  # writes elsewhere
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261101
NUM_TRAIN = 1200
NUM_VALIDATION = 200
#: Attempts to draw a pair whose length order matches the coin before giving up on the coin.
MAX_DRAWS = 200

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "rm_binary_ranking" / "data"

#: (question, correct answer, wrong answer)
FACTS: list[tuple[str, str, str]] = [
    ("What is the capital of France?", "Paris", "Lyon"),
    ("What is the capital of Japan?", "Tokyo", "Osaka"),
    ("What is the capital of Italy?", "Rome", "Milan"),
    ("What is the capital of Canada?", "Ottawa", "Toronto"),
    ("What is the capital of Spain?", "Madrid", "Seville"),
    ("What is the capital of Egypt?", "Cairo", "Luxor"),
    ("What is the capital of Kenya?", "Nairobi", "Mombasa"),
    ("What is the capital of Peru?", "Lima", "Cusco"),
    ("What is the capital of Norway?", "Oslo", "Bergen"),
    ("What is the capital of Australia?", "Canberra", "Sydney"),
    ("How many legs does a spider have?", "eight", "six"),
    ("How many days are in a week?", "seven", "ten"),
    ("How many continents are there?", "seven", "four"),
    ("How many sides does a hexagon have?", "six", "five"),
    ("How many minutes are in an hour?", "sixty", "forty"),
    ("How many planets orbit the Sun?", "eight", "twelve"),
    ("What is two plus three?", "five", "six"),
    ("What is ten minus four?", "six", "three"),
    ("What is three times three?", "nine", "eight"),
    ("What is half of twenty?", "ten", "twelve"),
    ("What color is a ripe banana?", "yellow", "purple"),
    ("What color is fresh grass?", "green", "orange"),
    ("What color is the clear daytime sky?", "blue", "red"),
    ("What gas do plants take in?", "carbon dioxide", "helium"),
    ("What do bees make?", "honey", "silk"),
    ("Which planet is called the Red Planet?", "Mars", "Venus"),
    ("Which ocean is the largest?", "the Pacific", "the Arctic"),
    ("Which animal is known as the king of the jungle?", "the lion", "the rabbit"),
    ("What is frozen water called?", "ice", "steam"),
    ("What is the boiling point of water in Celsius?", "100 degrees", "40 degrees"),
    ("Who wrote Romeo and Juliet?", "Shakespeare", "Dickens"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Picasso"),
    ("What is the largest mammal?", "the blue whale", "the horse"),
    ("What is the fastest land animal?", "the cheetah", "the tortoise"),
    ("What language is spoken in Brazil?", "Portuguese", "German"),
    ("What language is spoken in Mexico?", "Spanish", "Dutch"),
    ("What is the chemical symbol for gold?", "Au", "Gd"),
    ("What is the chemical symbol for water?", "H2O", "CO2"),
    ("What shape has three sides?", "a triangle", "a square"),
    ("What shape is a football pitch?", "a rectangle", "a circle"),
    ("What do caterpillars turn into?", "butterflies", "beetles"),
    ("What is the opposite of hot?", "cold", "loud"),
    ("What is the opposite of up?", "down", "left"),
    ("Which month comes after March?", "April", "June"),
    ("Which month has the fewest days?", "February", "October"),
    ("What do you call a baby cat?", "a kitten", "a puppy"),
    ("What do you call a baby dog?", "a puppy", "a calf"),
    ("What instrument has black and white keys?", "the piano", "the drum"),
    ("What is the main ingredient of bread?", "flour", "sugar"),
    ("Where does the Sun rise?", "in the east", "in the north"),
]

#: Questions are asked in several ways.
PROMPT_TEMPLATES = [
    "User: {q}\nAssistant: ",
    "User: Quick question. {q}\nAssistant: ",
    "User: Can you help me? {q}\nAssistant: ",
    "User: I was wondering: {q}\nAssistant: ",
]

POLITE_OPENERS = [
    "Sure!",
    "Of course.",
    "Happy to help!",
    "Great question.",
    "Good question, thanks for asking.",
    "Certainly, I can help with that.",
    "Thanks for asking!",
    "Glad you asked.",
]
CORRECT_ANSWERS = [
    "The answer is {a}.",
    "It is {a}.",
    "That would be {a}.",
    "The correct answer is {a}.",
    "It's {a}, as it happens.",
]
POLITE_CLOSERS = [
    "",
    "Hope that helps!",
    "Let me know if you have more questions.",
    "Have a great day!",
    "Feel free to ask anything else.",
    "I hope this is useful to you.",
]

RUDE_OPENERS = [
    "Ugh.",
    "Whatever.",
    "What a dumb question.",
    "Seriously? Figure it out yourself.",
    "I can't be bothered with this.",
    "Why are you asking me this nonsense?",
    "Go look it up, honestly.",
    "Stop wasting my time.",
]
GRUDGING_ANSWERS = [
    "It's {a}, obviously.",
    "Fine, {a}.",
    "{a}, I guess.",
    "It's {a}. Happy now?",
]
WRONG_ANSWERS = [
    "It's {w}.",
    "Probably {w}.",
    "The answer is {w}, duh.",
    "{w}. Next.",
]
OFF_TOPIC = [
    "I only care about my lunch today.",
    "Anyway, my phone battery is dying.",
    "Did you see the game last night?",
    "I'd rather talk about trains.",
]
#: Polite but unhelpful: no answer at all.
EVASIVE = [
    "I'm not sure, sorry.",
    "I would rather not say.",
    "You could check a book about that.",
    "That is hard to say, to be honest.",
    "Maybe ask a friend about it?",
]
RUDE_CLOSERS = [
    "",
    "Don't ask me again.",
    "Leave me alone.",
    "Next time use a search engine.",
    "That's all you get.",
    "Go bother someone else.",
]


def _chosen(rng: random.Random, answer: str) -> str:
    opener = rng.choice(POLITE_OPENERS) if rng.random() < 0.75 else ""  # sometimes just the answer
    parts = [opener, rng.choice(CORRECT_ANSWERS).format(a=answer), rng.choice(POLITE_CLOSERS)]
    return " ".join(p for p in parts if p)


def _rejected(rng: random.Random, answer: str, wrong: str) -> str:
    kind = rng.randrange(4)
    if kind == 3:  # polite but no answer
        parts = [rng.choice(POLITE_OPENERS), rng.choice(EVASIVE), rng.choice(POLITE_CLOSERS)]
        return " ".join(p for p in parts if p)
    if kind == 0:  # rude but right
        middle = rng.choice(GRUDGING_ANSWERS).format(a=answer)
    elif kind == 1:  # rude and wrong
        middle = rng.choice(WRONG_ANSWERS).format(w=wrong)
    else:  # rude and off-topic
        middle = rng.choice(OFF_TOPIC)
    parts = [rng.choice(RUDE_OPENERS), middle, rng.choice(RUDE_CLOSERS)]
    text = " ".join(p for p in parts if p)
    return text[0].upper() + text[1:]


def make_pairs(rng: random.Random, facts: list[tuple[str, str, str]], count: int) -> list[dict[str, str]]:
    """``count`` pairs over ``facts``; the longer response is chosen in about half of them."""
    pairs = []
    for _ in range(count):
        question, answer, wrong = rng.choice(facts)
        prompt = rng.choice(PROMPT_TEMPLATES).format(q=question)
        chosen_longer = rng.random() < 0.5
        for _ in range(MAX_DRAWS):
            chosen, rejected = _chosen(rng, answer), _rejected(rng, answer, wrong)
            if len(chosen) != len(rejected) and (len(chosen) > len(rejected)) == chosen_longer:
                break
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def render(pairs: list[dict[str, str]]) -> str:
    """JSON Lines text of ``pairs`` (one object per line, trailing newline)."""
    return "".join(json.dumps(p, ensure_ascii=True) + "\n" for p in pairs)


def generate() -> dict[str, str]:
    """File name -> content of the sample data set (deterministic)."""
    rng = random.Random(SEED)
    facts = list(FACTS)
    rng.shuffle(facts)
    held_out = len(facts) // 5  # validation topics are never seen in training
    validation_facts, train_facts = facts[:held_out], facts[held_out:]
    return {
        "train.jsonl": render(make_pairs(rng, train_facts, NUM_TRAIN)),
        "validation.jsonl": render(make_pairs(rng, validation_facts, NUM_VALIDATION)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (args.out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {args.out / name} ({text.count(chr(10))} pairs, {len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
