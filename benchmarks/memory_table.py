"""Memory per GPU of 8B and 70B reward models under a few layouts: the table in docs/scaling.md.

Computed by ``rm_registry.engine.config._memory.rank_memory`` (the estimate that
``tests/engine/test_memory.py`` checks against real models); ``tests/test_docs.py`` checks that
docs/scaling.md shows this script's output.

Usage: python benchmarks/memory_table.py
"""

from __future__ import annotations

from omegaconf import OmegaConf

from rm_registry.engine.config import engine_defaults
from rm_registry.engine.config._checks import model_shape
from rm_registry.engine.config._memory import rank_memory

#: Llama 3.1 8B and 70B (config.json), as ``--pretrained`` sets them; vocabulary 128,256 rows.
MODELS = {
    "8B (Llama 3.1 8B)": {"num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_query_groups": 8,
                          "ffn_hidden_size": 14336},
    "70B (Llama 3.1 70B)": {"num_layers": 80, "hidden_size": 8192, "num_attention_heads": 64, "num_query_groups": 8,
                            "ffn_hidden_size": 28672},
}
LLAMA = {"normalization": "RMSNorm", "activation": "silu", "gated_linear_unit": True, "add_bias_linear": False,
         "position_embedding_type": "rope", "head_bias": False, "encoder_seq_length": 4096}
VOCAB = 128256
#: (model, TP, PP, DP, sharded optimizer)
LAYOUTS = [
    ("8B (Llama 3.1 8B)", 1, 1, 8, False), ("8B (Llama 3.1 8B)", 1, 1, 8, True), ("8B (Llama 3.1 8B)", 2, 1, 4, True),
    ("8B (Llama 3.1 8B)", 2, 2, 2, True), ("8B (Llama 3.1 8B)", 8, 1, 1, False),
    ("70B (Llama 3.1 70B)", 8, 1, 1, False), ("70B (Llama 3.1 70B)", 8, 1, 2, True), ("70B (Llama 3.1 70B)", 8, 1, 8, True),
    ("70B (Llama 3.1 70B)", 8, 2, 1, False), ("70B (Llama 3.1 70B)", 8, 4, 2, True),
]


def table() -> str:
    gib = 1024**3
    rows = ["| model | layout (GPUs) | Adam state | weights | gradients | Adam | total per GPU |", "|---|---|---|---|---|---|---|"]
    for name, tp, pp, dp, sharded in LAYOUTS:
        cfg = engine_defaults()
        for key, value in {**LLAMA, **MODELS[name], "tensor_model_parallel_size": tp,
                           "pipeline_model_parallel_size": pp}.items():
            OmegaConf.update(cfg, f"model.{key}", value)
        m = rank_memory(model_shape(cfg), VOCAB, tp=tp, pp=pp, dp=dp, sharded_optimizer=sharded)
        rows.append(f"| {name} | TP={tp} x PP={pp} x DP={dp} ({tp * pp * dp}) | {'sharded' if sharded else 'replicated'} | "
                    f"{m.weights / gib:.1f} GiB | {m.gradients / gib:.1f} GiB | {m.optimizer / gib:.1f} GiB | "
                    f"**{m.total / gib:.1f} GiB** |")
    return "\n".join(rows)

if __name__ == "__main__":
    print(table())
