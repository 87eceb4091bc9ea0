"""rm-registry ``process_reward`` vs. TRL's ``PRMTrainer``: same model shape, data, tokenizer, steps.

TRL ships ``PRMTrainer`` outside ``trl.experimental`` up to the 0.2x releases, which need
transformers 4.x; the core environment has transformers 5. The comparison therefore runs TRL in an
environment of its own::

    python3 -m venv /tmp/trlenv
    /tmp/trlenv/bin/pip install torch==2.13.0 "trl==0.19.1" "transformers==4.53.3" datasets accelerate

then, from the repository root, with the project's environment::

    .venv/bin/python benchmarks/bench_prm_vs_trl.py --trl-python /tmp/trlenv/bin/python
    .venv/bin/python benchmarks/bench_prm_vs_trl.py --trl-python /tmp/trlenv/bin/python --seeds 1 2 3

What it does, per seed:

* builds 4,000 training and ``--val`` (2,000) held-out solutions in TRL's format (the plugin's
  sample-data task with more places and moves: a prompt, then 2 to 6 steps; a step is wrong when it
  makes a move a walker cannot make, and labels follow the first-error rule: every step from the
  first wrong one on is false),
  a byte-level ``tokenizer.json`` (256 bytes + ``<|endoftext|>`` + ``<pad>``, no BOS), and a GPT-2
  shape (learned positions, 4 layers, hidden 256, sequence length 512);
* trains both for ``--steps`` optimizer steps of 8 solutions in float32 with the same learning-rate
  schedule (``--lr``, 10 warm-up steps, then cosine decay to 0 for both), TRL with
  ``gradient_checkpointing=False``, its fastest setting; each with its own defaults otherwise
  (optimizer settings, initialization; gradient clipping at 1.0 in both). The two run one after
  the other, in turns (ours first for the first seed, TRL first for the next, and so on, also
  across ``--repeats``), and the medians are reported;
* times the optimizer steps after the first 10 (warm-up excluded; data preparation, model building
  and evaluation are not timed) and counts the non-padding tokens of those steps;
* scores every labelled step of the held-out solutions with both trained models (ours through
  ``rm-registry``'s scoring path, TRL's model through transformers, positions from TRL's own
  ``tokenize_row``), and prints each one's step accuracy, the paired difference (ours - TRL) with its
  standard error over the held-out steps, and the ratio of non-padding tokens/s.

``WORK/results.json`` keeps every run's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_vs_trl import write_tokenizer  # the same byte-level tokenizer.json (this folder is on sys.path)

LAYERS, HIDDEN, HEADS, SEQ = 4, 256, 4, 512
BATCH = 8
WARMUP_STEPS = 10
PLACES = ("hall", "door", "desk", "lamp", "roof", "yard", "gate", "shed", "pond", "wall", "attic", "porch", "barn",
          "well", "hill", "road", "mill", "cave", "dock", "farm")
MOVES = ("walk", "run", "climb", "crawl", "step", "hop", "stroll", "march", "wander", "jog")
IMPOSSIBLE = ("fly", "swim", "teleport", "dig", "float", "tunnel")


def make_solutions(n: int, seed: int) -> list[dict[str, Any]]:
    """The plugin's sample-data task (``plugins/process_reward/scripts/make_sample_data.py``) with more
    places and moves: a walk, one move a step; a move a walker cannot make is wrong, and every step
    from the first wrong one on is labelled false."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        path = rng.sample(PLACES, rng.randint(3, 7))
        steps, labels, ok = [], [], True
        error_rate = rng.choice((0.0, 0.2, 0.4))
        for there in path[1:]:
            wrong = rng.random() < error_rate
            ok = ok and not wrong
            steps.append(f"{rng.choice(IMPOSSIBLE if wrong else MOVES)} to the {there}")
            labels.append(ok)
        rows.append({"prompt": f"Get from the {path[0]} to the {path[-1]}.\n", "completions": steps, "labels": labels})
    return rows


def build_data(folder: Path, seed: int, val: int) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl",
             "tokenizer": folder / "tokenizer.json"}
    for split, n, s in (("train", 4000, seed), ("validation", val, seed + 1)):
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in make_solutions(n, s)), encoding="utf-8")
    write_tokenizer(paths["tokenizer"])
    return {k: str(v) for k, v in paths.items()}


def _held_out(paths: dict[str, str]) -> list[dict[str, Any]]:
    """The held-out solutions whose bytes fit the model (one token per byte, no BOS)."""
    rows = [json.loads(line) for line in Path(paths["validation"]).read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if len((r["prompt"] + "".join(s + "\n" for s in r["completions"])).encode()) <= SEQ]


# ------------------------------------------------------------------------------- rm-registry
def run_ours(paths: dict[str, str], steps: int, lr: float, seed: int, out: str, extra: list[str]) -> dict[str, Any]:
    from rm_registry import get_reward_model
    from rm_registry.engine import load_reward_model
    from rm_registry.engine import trainer as trainer_mod
    from rm_registry.engine.config import build_config

    plugin = get_reward_model("process_reward")
    cfg = build_config(plugin, overrides=[
        f"model.num_layers={LAYERS}", f"model.hidden_size={HIDDEN}", f"model.num_attention_heads={HEADS}",
        f"model.encoder_seq_length={SEQ}", f"model.micro_batch_size={BATCH}", f"model.global_batch_size={BATCH}",
        "model.tokenizer.library=huggingface", f"model.tokenizer.path={paths['tokenizer']}",
        f"model.optim.lr={lr}", f"model.optim.sched.warmup_steps={WARMUP_STEPS}", "model.optim.sched.min_lr=0",
        f"trainer.rm.max_steps={steps}", f"trainer.rm.val_check_interval={steps}", f"trainer.rm.save_interval={steps}",
        f"seed={seed}", *extra,
    ], data_paths={"train": paths["train"]})
    marks: list[float] = []
    build = trainer_mod.build_scheduler

    def build_scheduler(*a: Any, **k: Any) -> Any:  # the scheduler steps once after every optimizer step
        sched = build(*a, **k)
        base = type(sched)

        def step(self: Any, *a: Any, **k: Any) -> None:
            base.step(self, *a, **k)
            marks.append(time.perf_counter())

        sched.__class__ = type("TimedScheduler", (base,), {"step": step})
        return sched

    trainer_mod.build_scheduler = build_scheduler
    result = trainer_mod.train(plugin, cfg, out, progress=False)
    train = [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    timed = train[WARMUP_STEPS:]
    assert result.last_checkpoint is not None
    loaded = load_reward_model(result.last_checkpoint)
    val = _held_out(paths)
    scored = loaded.score_records(val)
    predicted = [p >= 0.5 for s in scored for p in s["step_rewards"]]
    return {"seconds": marks[-1] - marks[WARMUP_STEPS - 1], "tokens": sum(r["tokens"] for r in timed),
            "padded": sum(r["padded_tokens"] for r in timed), "steps": len(timed),
            "correct": [int(p == y) for p, y in zip(predicted, (y for r in val for y in r["labels"]))]}


# ------------------------------------------------------------------------------------- TRL
def run_trl(paths: dict[str, str], steps: int, lr: float, seed: int, out: str) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import GPT2Config, GPT2ForTokenClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl import PRMConfig, PRMTrainer

    torch.set_flush_denormal(True)
    tok = PreTrainedTokenizerFast(tokenizer_file=paths["tokenizer"], eos_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(seed)
    model = GPT2ForTokenClassification(GPT2Config(
        vocab_size=len(tok), n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, num_labels=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, classifier_dropout=0.0))
    data = load_dataset("json", data_files={"train": paths["train"]})
    args = PRMConfig(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=lr,
                     lr_scheduler_type="cosine", warmup_steps=WARMUP_STEPS, logging_steps=1,
                     report_to=[], save_strategy="no", eval_strategy="no", bf16=False, gradient_checkpointing=False,
                     max_length=SEQ, use_cpu=True, seed=seed, dataloader_num_workers=0, disable_tqdm=True)
    marks: list[float] = []
    counts: list[tuple[int, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

    trainer = PRMTrainer(model=model, args=args, train_dataset=data["train"], processing_class=tok, callbacks=[Clock()])
    collate = trainer.data_collator

    def counting(examples: Any) -> Any:
        batch = collate(examples)
        counts.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        return batch

    trainer.data_collator = counting
    trainer.train()
    model.eval()
    correct: list[int] = []
    with torch.no_grad():
        for row in _held_out(paths):
            enc = PRMTrainer.tokenize_row({**row}, tok, "\n", SEQ, None, None, False, True)
            logits = model(torch.tensor([enc["input_ids"]])).logits[0]
            for i, label in enumerate(enc["labels"]):
                if label != -100:
                    correct.append(int(int(logits[i].argmax()) == label))
    timed = counts[WARMUP_STEPS:steps]
    return {"seconds": marks[steps - 1] - marks[WARMUP_STEPS - 1], "tokens": sum(t for t, _ in timed),
            "padded": sum(p for _, p in timed), "steps": len(timed), "correct": correct}


# ------------------------------------------------------------------------------------- driver
def _child(which: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One training run in a fresh process (ours in this interpreter, TRL in ``--trl-python``)."""
    python = sys.executable if which == "ours" else args.trl_python
    result = work / f"{which}-{time.time_ns()}.json"
    cmd = [python, __file__, "--run", which, "--work", str(work), "--steps", str(args.steps), "--lr", str(args.lr),
           "--seed", str(args.seed), "--result", str(result)]
    if which == "ours":
        cmd += [f"--ours-set={kv}" for kv in args.ours_set]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {"tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "steps_per_s": statistics.median(r["steps"] / r["seconds"] for r in runs),
            "padding": statistics.median(1 - r["tokens"] / r["padded"] for r in runs),
            "step_accuracy": statistics.mean(statistics.mean(r["correct"]) for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/trlenv/bin/python", help="the interpreter of TRL's environment")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_prm"), help="scratch folder")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of 8 solutions (default 300)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both (default 1e-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="data and model seeds")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each per seed, alternating (default 1)")
    parser.add_argument("--val", type=int, default=2000, help="held-out solutions (default 2000)")
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for our run only (repeatable), for ablations")
    parser.add_argument("--only", choices=("ours", "trl"), help="run one side only (no paired comparison)")
    parser.add_argument("--run", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        paths = json.loads((args.work / "paths.json").read_text())
        dest = str(args.work / f"out-{args.run}-{time.time_ns()}")
        if args.run == "ours":
            out = run_ours(paths, args.steps, args.lr, args.seed, dest, args.ours_set)
        else:
            out = run_trl(paths, args.steps, args.lr, args.seed, dest)
        args.result.write_text(json.dumps(out))
        return
    everything: dict[str, Any] = {}
    for n, seed in enumerate(args.seeds):
        work = args.work / f"seed{seed}"
        paths = build_data(work, seed, args.val)
        (work / "paths.json").write_text(json.dumps(paths))
        args.seed = seed
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
        for i in range(args.repeats):
            for which in (("ours", "trl") if (n + i) % 2 == 0 else ("trl", "ours")):
                if args.only and which != args.only:
                    continue
                runs[which].append(_child(which, work, args))
                r = runs[which][-1]
                print(f"seed {seed} {which:4s}: {r['tokens'] / r['seconds']:8.0f} tokens/s, "
                      f"{r['steps'] / r['seconds']:.2f} steps/s, step accuracy {statistics.mean(r['correct']):.4f}",
                      flush=True)
        everything[str(seed)] = runs
    (args.work / "results.json").write_text(json.dumps(everything))
    if args.only:
        return
    ours = _summary([r for s in everything.values() for r in s["ours"]])
    trl = _summary([r for s in everything.values() for r in s["trl"]])
    diffs = [a - b for s in everything.values() for x, y in zip(s["ours"], s["trl"])
             for a, b in zip(x["correct"], y["correct"])]
    se = statistics.pstdev(diffs) / math.sqrt(len(diffs))
    print(f"\n{'':12s}{'tokens/s':>10s}{'steps/s':>9s}{'padding':>9s}{'step acc':>10s}")
    for name, s in (("rm-registry", ours), ("TRL PRM", trl)):
        print(f"{name:12s}{s['tokens_per_s']:10.0f}{s['steps_per_s']:9.2f}{s['padding']:9.1%}{s['step_accuracy']:10.4f}")
    print(f"\nnon-padding tokens/s, ours / TRL: {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x")
    print(f"step accuracy, ours - TRL (paired over {len(diffs)} held-out steps x runs): "
          f"{statistics.mean(diffs):+.4f} +- {se:.4f} (standard error)")


if __name__ == "__main__":
    main()
