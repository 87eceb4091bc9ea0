"""Peak memory of one forward+backward with and without activation recomputation (CPU).

NeMo-Aligner's ``model.activations_checkpoint_granularity`` / ``_method`` / ``_num_layers`` map to
megatron-core's recompute options. This measures what they save: each setting runs in its own
process (peak RSS from ``getrusage`` is per process), on a model where activations dominate
(8 layers, hidden 128, sequence 512, 16 sequences) and checks the gradients are identical.

    python benchmarks/recompute_memory.py            # none, full (uniform, 1 layer), selective
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

MODEL = ["model.num_layers=8", "model.hidden_size=128", "model.num_attention_heads=4", "model.encoder_seq_length=512"]
SETTINGS = {
    "none": [],
    "full": ["model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
             "model.activations_checkpoint_num_layers=1"],
    "selective": ["model.activations_checkpoint_granularity=selective"],
}


def one(name: str) -> dict[str, float]:
    import torch

    from rm_registry import get_reward_model
    from rm_registry.engine import parallel
    from rm_registry.engine.config import build_config

    plugin = get_reward_model("regression")
    cfg = build_config(plugin, overrides=[*MODEL, *SETTINGS[name]])
    parallel.initialize(seed=1234)
    parallel.manual_seed(1234)
    model = plugin.model_class.from_config(cfg, vocab_size=260)
    g = torch.Generator().manual_seed(0)
    tokens, lengths = torch.randint(0, 256, (16, 512), generator=g), torch.full((16,), 512)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    model(tokens, lengths).sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grad = sum(float(p.grad.double().abs().sum()) for p in model.parameters() if p.grad is not None)
    return {"peak_mib": round(peak), "activations_mib": round(peak - before), "seconds": round(seconds, 1), "grad_l1": grad}


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one(sys.argv[1])))
        return
    results = {}
    for name in SETTINGS:
        out = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:<10} peak RSS {results[name]['peak_mib']:>6} MiB   forward+backward added "
              f"{results[name]['activations_mib']:>6} MiB   {results[name]['seconds']:>5} s")
    base = results["none"]["grad_l1"]
    assert all(abs(r["grad_l1"] - base) <= 1e-6 * base for r in results.values()), "gradients differ"


if __name__ == "__main__":
    main()
