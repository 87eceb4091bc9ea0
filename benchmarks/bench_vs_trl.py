"""rm-registry ``binary_ranking`` vs. TRL's ``RewardTrainer``: same model shape, data, tokenizer.

Install the comparison's own dependencies into the same environment (not part of the core
install)::

    pip install "trl==1.16.0" transformers datasets

then::

    python benchmarks/bench_vs_trl.py                      # 4 layers, hidden 256, 100 steps
    python benchmarks/bench_vs_trl.py --shape large        # 8 layers, hidden 512
    python benchmarks/bench_vs_trl.py --steps 40 --chunk 5 # quicker

What it does:

* builds 2,000 training and ``--val-pairs`` (2,000) held-out preference pairs of synthetic text with log-normal
  lengths (about 500 tokens per pair; the chosen response has more "good" words than the rejected
  one, so the preference is learnable), a byte-level ``tokenizer.json`` (256 bytes +
  ``<|endoftext|>`` + ``<pad>``) and a GPT-2 shape (learned positions, sequence length 1024);
* trains both, 8 pairs per step in float32, each with its own defaults otherwise (what a new user
  gets; TRL with ``gradient_checkpointing=False``, its fastest setting, and ``bf16=False``), both
  seeded with ``--seed`` (which also draws the data: run several seeds to compare accuracies). The two
  trainers run in two processes that take turns: each runs ``--chunk`` optimizer steps while the
  other waits, so a shared machine's load hits both alike. Startup, data preparation, the first
  chunk (warm-up) and the final evaluation are not timed;
* prints steps/s, non-padding tokens/s, padding fraction, final training loss (mean of the last 10
  steps), accuracy on the held-out pairs (both models score the same texts, EOS appended, after
  the last step), peak resident memory of each process, and the ratio of non-padding tokens/s;
  then the paired accuracy difference (ours - TRL) with its standard error over the held-out
  pairs. ``WORK/results-SHAPE.json`` keeps the figures and each model's per-pair outcome, so that
  several seeds can be pooled (``--pool WORK1 WORK2 ...`` prints the pooled comparison).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES = {"small": (4, 256, 4), "large": (8, 512, 8)}  # layers, hidden, heads
SEQ_LENGTH = 1024
PAIRS_PER_STEP = 8

_GOOD = "bright kind clear calm fair warm true rich wise brave clean fresh gentle honest neat quick".split()
_BAD = "dull rude vague harsh cold false poor vain weak dirty stale rough sloppy slow grim sour".split()
_FILLER = ("the a of and to in is it that was for on are with as his they at be this from have or by one had "
           "not but what all were when we there can an your which their said if do will each about how up out "
           "them then she many some so these would other into has more her two like him see time could no make "
           "than first been its who now people my made over did down only way find use may water long little "
           "very after words called just where most know").split()


# --------------------------------------------------------------------------------------- data
def _response(rng: random.Random, n_bytes: int, good_share: float) -> str:
    words: list[str] = []
    size = 0
    while size < n_bytes:
        r = rng.random()
        w = rng.choice(_FILLER) if r < 0.7 else rng.choice(_GOOD if rng.random() < good_share else _BAD)
        words.append(w)
        size += len(w) + 1
    return " " + " ".join(words)


def _length(rng: random.Random, median: float) -> int:
    return int(min(SEQ_LENGTH // 2 - 8, max(8, rng.lognormvariate(math.log(median), 0.6))))


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Implicit-prompt pairs ``{"chosen", "rejected"}`` (full texts), about 500 bytes per pair."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = "Question:" + _response(rng, _length(rng, 90), 0.5) + "\nAnswer:"
        chosen = prompt + _response(rng, _length(rng, 110), 0.7)
        rejected = prompt + _response(rng, _length(rng, 110), 0.3)
        pairs.append({"chosen": chosen, "rejected": rejected})
    return pairs


def write_tokenizer(path: Path) -> None:
    """A byte-level ``tokenizer.json``: the 256 byte symbols, then ``<|endoftext|>`` and ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<pad>"])
    tok.save(str(path))


def build_data(folder: Path, seed: int, val_pairs: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl",
             "tokenizer": folder / "tokenizer.json"}
    for split, n, s in (("train", 2000, seed), ("validation", val_pairs, seed + 1)):
        paths[split].write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n, s)))
    write_tokenizer(paths["tokenizer"])
    return paths


# ------------------------------------------------------------------------------- turn taking
class _Turns:
    """In a child process: after every ``chunk`` optimizer steps, report the chunk's time and wait."""

    def __init__(self, conn: Any, chunk: int) -> None:
        self.conn, self.chunk, self.steps = conn, chunk, 0
        self.conn.send(("ready", 0.0))
        self.conn.recv()
        self.t0 = time.perf_counter()

    def step_done(self) -> None:
        self.steps += 1
        if self.steps % self.chunk == 0:
            self.conn.send(("chunk", time.perf_counter() - self.t0))
            self.conn.recv()
            self.t0 = time.perf_counter()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _held_out(paths: dict[str, str]) -> list[dict[str, str]]:
    """The held-out pairs whose texts fit the model with EOS (one token per byte), as both trainers
    keep only such pairs for training."""
    pairs = [json.loads(line) for line in Path(paths["validation"]).read_text().splitlines()]
    return [p for p in pairs if max(len(p["chosen"].encode()), len(p["rejected"].encode())) < SEQ_LENGTH]


# ------------------------------------------------------------------------------- rm-registry
def run_ours(conn: Any, paths: dict[str, str], shape: tuple[int, int, int], steps: int, chunk: int,
             out: str, seed: int, extra: list[str]) -> None:
    from rm_registry import get_reward_model
    from rm_registry.engine import trainer as trainer_mod
    from rm_registry.engine.config import build_config

    layers, hidden, heads = shape
    plugin = get_reward_model("binary_ranking")
    cfg = build_config(plugin, overrides=[
        f"model.num_layers={layers}", f"model.hidden_size={hidden}", f"model.num_attention_heads={heads}",
        f"model.encoder_seq_length={SEQ_LENGTH}", f"model.micro_batch_size={PAIRS_PER_STEP}",
        f"model.global_batch_size={PAIRS_PER_STEP}", "model.tokenizer.library=huggingface",
        f"model.tokenizer.path={paths['tokenizer']}", f"trainer.rm.max_steps={steps}",
        f"trainer.rm.val_check_interval={steps}", f"trainer.rm.save_interval={steps}", f"seed={seed}", *extra,
    ], data_paths={"train": paths["train"]})  # held-out pairs: scored below, as TRL's
    build = trainer_mod.build_scheduler

    def build_scheduler(*a: Any, **k: Any) -> Any:  # the scheduler steps once after every optimizer step
        sched = build(*a, **k)
        turns = _Turns(conn, chunk)  # model built, data read: timing starts here
        base = type(sched)

        def step(self: Any, *a: Any, **k: Any) -> None:
            base.step(self, *a, **k)
            turns.step_done()

        # A subclass, not an instance attribute: the checkpointed scheduler state stays picklable.
        sched.__class__ = type("GatedScheduler", (base,), {"step": step})
        return sched

    trainer_mod.build_scheduler = build_scheduler
    result = trainer_mod.train(plugin, cfg, out, progress=False)
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    peak = _peak_mb()  # training's peak: scoring below holds the model twice
    from rm_registry.engine import load_reward_model

    assert result.last_checkpoint is not None
    loaded = load_reward_model(result.last_checkpoint)
    val = _held_out(paths)
    rewards = [r["reward"] for r in loaded.score([r["chosen"] for r in val] + [r["rejected"] for r in val])]
    conn.send(("done", {
        "tokens": [r["tokens"] for r in train], "padded": [r["padded_tokens"] for r in train],
        "loss": statistics.mean(r["loss"] for r in train[-10:]),
        "correct": [int(c > r) for c, r in zip(rewards[: len(val)], rewards[len(val):])], "peak_mb": peak,
    }))


# ------------------------------------------------------------------------------------- TRL
def run_trl(conn: Any, paths: dict[str, str], shape: tuple[int, int, int], steps: int, chunk: int,
            out: str, seed: int) -> None:
    import torch
    from datasets import load_dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    torch.set_flush_denormal(True)
    layers, hidden, heads = shape
    tok = PreTrainedTokenizerFast(tokenizer_file=paths["tokenizer"], eos_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(seed)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok), n_positions=SEQ_LENGTH, n_embd=hidden, n_layer=layers, n_head=heads, num_labels=1,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    data = load_dataset("json", data_files={"train": paths["train"]})
    args = RewardConfig(output_dir=out, per_device_train_batch_size=PAIRS_PER_STEP, max_steps=steps,
                        logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no", bf16=False,
                        gradient_checkpointing=False, max_length=SEQ_LENGTH, use_cpu=True, seed=seed,
                        dataloader_num_workers=0, disable_tqdm=True)
    counts: dict[str, list[int]] = {"tokens": [], "padded": []}
    losses: list[float] = []

    class Gate(TrainerCallback):
        turns: _Turns | None = None

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Gate.turns = _Turns(conn, chunk)

        def on_step_end(self, *a: Any, **k: Any) -> None:
            assert Gate.turns is not None
            Gate.turns.step_done()

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = RewardTrainer(model=model, args=args, train_dataset=data["train"], processing_class=tok,
                            callbacks=[Gate()])
    collate = trainer.data_collator

    def counting(examples: Any) -> Any:
        batch = collate(examples)
        counts["tokens"].append(int(batch["attention_mask"].sum()))
        counts["padded"].append(int(batch["attention_mask"].numel()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    peak = _peak_mb()
    model.eval()
    val = _held_out(paths)
    texts = [r["chosen"] + tok.eos_token for r in val] + [r["rejected"] + tok.eos_token for r in val]
    ids = [tok(t)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
    rewards = [0.0] * len(ids)
    with torch.no_grad():  # right-padded; GPT-2 pools its last non-pad token
        for start in range(0, len(order), 2 * PAIRS_PER_STEP):
            rows = order[start : start + 2 * PAIRS_PER_STEP]
            enc = tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
            for i, value in zip(rows, model(**enc).logits[:, 0].tolist()):
                rewards[i] = value
    conn.send(("done", {"tokens": counts["tokens"][:steps], "padded": counts["padded"][:steps],
                        "loss": statistics.mean(losses[-10:]),
                        "correct": [int(c > r) for c, r in zip(rewards[: len(val)], rewards[len(val):])],
                        "peak_mb": peak}))


# ------------------------------------------------------------------------------------ driver
def compare(paths: dict[str, str], shape: tuple[int, int, int], steps: int, chunk: int, work: Path,
            seed: int, extra: list[str]) -> dict[str, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for name, target, args in (
        ("rm-registry", run_ours, (paths, shape, steps, chunk, str(work / "ours"), seed, extra)),
        ("TRL", run_trl, (paths, shape, steps, chunk, str(work / "trl"), seed)),
    ):
        parent, child = ctx.Pipe()
        procs[name] = ctx.Process(target=target, args=(child, *args))
        conns[name] = parent
        procs[name].start()
    for name, conn in conns.items():  # both started up and waiting
        assert conn.recv()[0] == "ready", name
    times: dict[str, list[float]] = {n: [] for n in conns}
    results: dict[str, dict[str, Any]] = {}
    for _ in range(steps // chunk):
        for name, conn in conns.items():
            conn.send("go")
            kind, value = conn.recv()
            assert kind == "chunk", (name, kind)
            times[name].append(value)
            print(f"  {name}: {chunk} steps in {value:.1f} s", file=sys.stderr, flush=True)
    for name, conn in conns.items():
        conn.send("go")
        kind, value = conn.recv()
        assert kind == "done", (name, kind)
        procs[name].join()
        timed = times[name][1:]  # the first chunk is warm-up
        n_steps = chunk * len(timed)
        tokens = sum(value["tokens"][chunk : chunk * len(times[name])])
        padded = sum(value["padded"][chunk : chunk * len(times[name])])
        results[name] = {"steps_per_s": n_steps / sum(timed), "tokens_per_s": tokens / sum(timed),
                         "padding": 1 - tokens / padded, "loss": value["loss"],
                         "accuracy": statistics.mean(value["correct"]), "correct": value["correct"],
                         "peak_mb": value["peak_mb"]}
    return results


def paired(ours: list[int], trl: list[int]) -> tuple[float, float]:
    """Mean and standard error of the per-pair accuracy difference (ours - TRL), pairs in step."""
    diffs = [a - b for a, b in zip(ours, trl, strict=True)]
    if len(diffs) < 2:
        sys.exit(f"{len(diffs)} held-out pair(s) fit the model: raise --val-pairs")
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def pool(folders: list[Path]) -> None:
    """The accuracy comparison over several runs' ``results-*.json`` (one seed each)."""
    runs = [json.loads(f.read_text()) for folder in folders for f in sorted(folder.glob("results-*.json"))]
    if not runs:
        sys.exit(f"no results-*.json in {', '.join(map(str, folders))}")
    print("| seed | shape | held-out pairs | ours | TRL | ours - TRL (s.e.) |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        ours, trl = run["rm-registry"], run["TRL"]
        diff, se = paired(ours["correct"], trl["correct"])
        print(f"| {run['seed']} | {run['shape']} | {len(ours['correct'])} | {ours['accuracy']:.4f} | "
              f"{trl['accuracy']:.4f} | {diff:+.4f} ({se:.4f}) |")
    for shape in sorted({run["shape"] for run in runs}):
        same = [run for run in runs if run["shape"] == shape]
        per_seed = [paired(run["rm-registry"]["correct"], run["TRL"]["correct"])[0] for run in same]
        ours_all = [c for run in same for c in run["rm-registry"]["correct"]]
        trl_all = [c for run in same for c in run["TRL"]["correct"]]
        diff, se = paired(ours_all, trl_all)
        spread = statistics.stdev(per_seed) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else float("nan")
        print(f"| all {len(same)} | {shape} | {len(ours_all)} | {statistics.mean(ours_all):.4f} | "
              f"{statistics.mean(trl_all):.4f} | {diff:+.4f} ({se:.4f} over pairs; {spread:.4f} over seeds) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="small")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per trainer")
    parser.add_argument("--chunk", type=int, default=10, help="steps per turn")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--val-pairs", type=int, default=2000, help="held-out pairs both models are scored on")
    parser.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra rm-registry overrides, e.g. model.attention_backend=local")
    parser.add_argument("--pool", nargs="+", type=Path, metavar="WORK",
                        help="print the accuracy comparison pooled over earlier runs' --work folders, and exit")
    args = parser.parse_args()
    if args.pool:
        pool(args.pool)
        return
    if args.val_pairs < 2:
        parser.error(f"--val-pairs={args.val_pairs}: expected at least 2")
    if args.steps % args.chunk or args.steps // args.chunk < 2:
        parser.error("--steps must be a multiple of --chunk, at least two chunks")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    paths = {k: str(v) for k, v in build_data(work / "data", args.seed, args.val_pairs).items()}
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    print(f"data and runs in {work}; {os.cpu_count()} CPUs", file=sys.stderr)
    rows = []
    for shape in shapes:
        res = compare(paths, SHAPES[shape], args.steps, args.chunk, work / shape, args.seed, args.ours)
        layers, hidden, heads = SHAPES[shape]
        for name, r in res.items():
            rows.append((f"{layers}L/{hidden}H", name, r))
        ratio = res["rm-registry"]["tokens_per_s"] / res["TRL"]["tokens_per_s"]
        diff = paired(res["rm-registry"]["correct"], res["TRL"]["correct"])
        rows.append((f"{layers}L/{hidden}H", "ratio", {"tokens_per_s": ratio, "accuracy": diff}))
        (work / f"results-{shape}.json").write_text(json.dumps({"seed": args.seed, "shape": shape, "steps": args.steps, **res}))
    print(f"\n| shape | trainer | steps/s | tokens/s | padding | final loss | val. accuracy | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, name, r in rows:
        if name == "ratio":
            diff, se = r["accuracy"]
            print(f"| {shape} | **ours / TRL** | | **{r['tokens_per_s']:.2f}x** | | | "
                  f"ours - TRL: {diff:+.3f} (s.e. {se:.3f}) | |")
            continue
        print(f"| {shape} | {name} | {r['steps_per_s']:.3f} | {r['tokens_per_s']:.0f} | {r['padding']:.1%} | "
              f"{r['loss']:.3f} | {r['accuracy']:.3f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
