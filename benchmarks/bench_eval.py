"""Scoring for ``evaluate --benchmark`` against ``rm-registry score``, per text, on the same model and texts.

    python benchmarks/bench_eval.py --work /tmp/bench_eval [--rows 600] [--repeats 4]

Writes a RewardBench-layout file (``--rows`` pairs (default 600) over the 23 subsets, prompts of 1-3 sentences,
responses of 2-16 sentences, seeded) and trains a model of ``bench_vs_trl.py``'s shape for one step
(4 layers, hidden 256, sequence length 1024, byte tokenizer; only its speed matters). Then, in one
process with the model loaded once, ``--repeats`` times each, alternating which goes first:

* **score**: :func:`rm_registry.engine.score_file` on every response rendered as ``score`` reads it
  (``{"prompt": [user message], "response": [assistant message]}``, chosen then rejected; reading,
  tokenizing, batched length-sorted scoring, writing);
* **benchmark**: :meth:`LoadedRewardModel.benchmark` (``--swap-sample 0``: the same texts once;
  reading, checking the rows, rendering, tokenizing, scoring, the figures; files not written),

and prints the median seconds and texts per second of each, and their ratio (issue 22 asks that
evaluation is at least as fast per text as ``score``). The swap probe's extra cost is timed apart.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUBSETS = ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med",
           "mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
           "llmbar-adver-GPTOut", "llmbar-adver-manual", "refusals-dangerous", "refusals-offensive",
           "xstest-should-refuse", "xstest-should-respond", "donotanswer", "math-prm", "hep-cpp", "hep-go",
           "hep-java", "hep-js", "hep-python", "hep-rust"]
WORDS = "the a model answer question because therefore value step result code function returns list".split()
SHAPE = ["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=4",
         "model.encoder_seq_length=1024", "model.micro_batch_size=8", "model.global_batch_size=8",
         "trainer.rm.max_steps=1", "trainer.rm.save_interval=1", "model.params_dtype=float32"]


def _sentences(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                    for _ in range(rng.randint(lo, hi)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the data, the model and the outputs")
    ap.add_argument("--rows", type=int, default=600, help="RewardBench pairs (default 600: 1200 texts)")
    ap.add_argument("--repeats", type=int, default=4, help="timed runs of each (default 4, alternating which goes first; medians reported)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = [{"id": i, "prompt": _sentences(rng, 1, 3), "chosen": _sentences(rng, 2, 16),
             "rejected": _sentences(rng, 2, 16), "subset": SUBSETS[i % len(SUBSETS)]} for i in range(args.rows)]
    data = work / "rewardbench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = work / "texts.jsonl"
    texts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                         "response": [{"role": "assistant", "content": r[side]}]}) + "\n"
                             for r in rows for side in ("chosen", "rejected")))
    run = work / "rm"
    if not (run / "checkpoints").is_dir():
        subprocess.run([sys.executable, "-m", "rm_registry", "train", "binary_ranking", "--output", str(run),
                        "--no-progress", *SHAPE], check=True, capture_output=True)

    from rm_registry.engine import load_reward_model, score_file

    model = load_reward_model(run)
    n = 2 * args.rows
    times: dict[str, list[float]] = {"score": [], "benchmark": [], "benchmark + swap probe (300 rows)": []}
    for i in range(args.repeats):  # alternating which goes first, so that neither gains from going second
        order = ("score", "benchmark") if i % 2 == 0 else ("benchmark", "score")
        for what in order:
            t = time.perf_counter()
            if what == "score":
                score_file(model, texts, work / f"scores{i}.jsonl", progress=False)
            else:
                model.benchmark("rewardbench", data, swap_sample=0)
            times[what].append(time.perf_counter() - t)
    t = time.perf_counter()
    model.benchmark("rewardbench", data, swap_sample=300)
    times["benchmark + swap probe (300 rows)"].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{n} texts, model {' '.join(SHAPE[:4])}, {args.repeats} runs each (median)\n")
    print("| path | seconds | texts/s |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {n / v:.1f} |")
    ratio = med["score"] / med["benchmark"]
    print(f"\nbenchmark texts/s / score texts/s = {ratio:.3f} (>= 1: evaluation at least as fast per text)")
    if args.json:
        args.json.write_text(json.dumps({"texts": n, "seconds": times, "median": med, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
