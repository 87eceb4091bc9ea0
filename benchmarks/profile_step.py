"""Where one training step's time goes (torch.profiler), for one attention backend.

    python benchmarks/profile_step.py --attention local     # megatron's DotProductAttention + mask
    python benchmarks/profile_step.py --attention sdpa      # the causal SDPA core attention

The model is the GPT-2 shape of ``bench_vs_trl.py`` (4 layers, hidden 256, 4 heads, sequence
1024); the batch is 8 pairs (16 sequences) padded to ``--width`` with log-normal real lengths.
Prints the profiler's table of the most expensive operators (self CPU time) and the step time.
"""

from __future__ import annotations

import argparse
import math
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", choices=["sdpa", "local"], default="sdpa")
    parser.add_argument("--width", type=int, default=640, help="padded length of the batch")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from rm_registry import get_reward_model
    from rm_registry.engine import parallel
    from rm_registry.engine.config import build_config
    from rm_registry.engine.trainer import build_optimizer

    plugin = get_reward_model("binary_ranking")
    cfg = build_config(plugin, overrides=["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=4",
                                          "model.encoder_seq_length=1024", f"model.attention_backend={args.attention}"])
    parallel.initialize(tensor_model_parallel_size=1, seed=1)
    model = plugin.model_class.from_config(cfg, vocab_size=258)
    opt = build_optimizer(model, cfg)
    rng = random.Random(0)
    lengths = torch.tensor([max(8, min(args.width, int(rng.lognormvariate(math.log(args.width / 2.5), 0.6))))
                            for _ in range(16)])
    lengths[0] = args.width
    tokens = torch.randint(0, 256, (16, args.width))
    batch = {"tokens": tokens, "lengths": lengths}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = plugin.loss(model(tokens, lengths), batch, cfg)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - t0) / args.steps
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    real = int(lengths.sum())
    print(f"attention={args.attention}: {seconds:.3f} s/step, {real} real of {tokens.numel()} tokens "
          f"({1 - real / tokens.numel():.0%} padding)")


if __name__ == "__main__":
    main()
