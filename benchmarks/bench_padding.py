"""Training throughput: padding to the longest sequence of a batch vs. to ``seq_length``.

NeMo-Aligner pads every sample to the full ``encoder_seq_length``; the engine pads each batch to
its longest sequence. This measures both on the same default tiny binary_ranking model, on the
same realistic length mix, alternating the two in one run, and reports non-padding tokens per
second of training (forward + backward + AdamW step) for each and their ratio.

    python benchmarks/bench_padding.py [--steps 30] [--rounds 3] [--seq-length 256]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time


def _lengths(rng: random.Random, n: int, seq_length: int) -> list[int]:
    """A realistic mix: log-normal lengths (median about a quarter of seq_length), clipped to it."""
    mu = math.log(seq_length / 4)
    return [max(8, min(seq_length, int(rng.lognormvariate(mu, 0.6)))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (longest, full)")
    parser.add_argument("--seq-length", type=int, default=256, help="model.encoder_seq_length")
    args = parser.parse_args()

    import torch

    from rm_registry import get_reward_model
    from rm_registry.engine import parallel
    from rm_registry.engine.config import build_config
    from rm_registry.engine.tokenizer import load_tokenizer
    from rm_registry.engine.trainer import build_optimizer

    plugin = get_reward_model("binary_ranking")
    cfg = build_config(plugin, overrides=[f"model.encoder_seq_length={args.seq_length}"])
    parallel.initialize(seed=int(cfg.seed))
    tokenizer = load_tokenizer(cfg)
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    optimizer = build_optimizer(model, cfg)
    pairs = int(cfg.model.micro_batch_size)
    rng = random.Random(0)
    n_rows = 2 * pairs * args.steps
    lengths = _lengths(rng, n_rows, args.seq_length)
    data = [torch.randint(0, 256, (length,)) for length in lengths]

    def run(pad_to_full: bool) -> tuple[float, int, int]:
        real = padded = 0
        start = time.perf_counter()
        for step in range(args.steps):
            rows = data[step * 2 * pairs : (step + 1) * 2 * pairs]
            lens = torch.tensor([len(r) for r in rows])
            width = args.seq_length if pad_to_full else int(lens.max())
            tokens = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
            for i, r in enumerate(rows):
                tokens[i, : len(r)] = r
            batch = {"tokens": tokens, "lengths": lens, "margin": torch.zeros(pairs)}
            optimizer.zero_grad()
            loss, _ = plugin.loss(model(tokens, lens), batch, cfg)
            loss.backward()
            optimizer.step()
            real += int(lens.sum())
            padded += tokens.numel()
        return time.perf_counter() - start, real, padded

    run(False)  # warm-up
    results: dict[str, list[float]] = {"longest": [], "full": []}
    computed: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode in ("longest", "full"):
            seconds, real, padded = run(mode == "full")
            results[mode].append(real / seconds)
            computed[mode] = padded
    real_tokens = sum(lengths)
    print(f"model: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_size}, "
          f"{pairs} pairs ({2 * pairs} sequences) per step, seq_length {args.seq_length}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"length mix: median {statistics.median(lengths)} tokens, mean {statistics.mean(lengths):.0f}, "
          f"max {max(lengths)}; {args.steps} steps x {args.rounds} rounds per mode")
    for mode, label in (("longest", "pad to longest in batch (rm-registry)"),
                        ("full", f"pad to seq_length={args.seq_length} (NeMo-Aligner)")):
        med = statistics.median(results[mode])
        print(f"{label:<42} {med:>9.0f} non-padding tokens/s  "
              f"(computed {computed[mode]} token slots for {real_tokens} real tokens)")
    ratio = statistics.median(results["longest"]) / statistics.median(results["full"])
    print(f"ratio (longest / full): {ratio:.2f}x")


if __name__ == "__main__":
    main()
