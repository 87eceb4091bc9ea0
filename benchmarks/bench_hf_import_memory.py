"""Peak memory of ``--pretrained`` loading: a ~1B-parameter random Llama in bfloat16.

Writes a random Llama folder (hidden 2048, 16 layers, 32 heads / 8 key-value heads, ffn 8192,
vocabulary 32000: 1.04 B parameters, 2.1 GB of bfloat16 safetensors in 4 shards), then, in a fresh
process, does what ``rm-registry train binary_ranking --pretrained DIR model.params_dtype=bfloat16``
does before its first step: build the config from ``config.json``, the tokenizer, the model, and
load the weights. It reports the peak resident memory (``ru_maxrss``) of that process, the part of
it above the imports, and both as multiples of the model's bytes. Target: peak < 1.5 x model bytes.

    python benchmarks/bench_hf_import_memory.py [--keep DIR]

Takes about a minute or two on 2 CPU cores and needs ~2.2 GB of free disk (a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
    "vocab_size": 32000, "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
SHARDS = 4

CHILD = r"""
import json, resource, sys, time
from rm_registry import get_reward_model
from rm_registry.engine import parallel
from rm_registry.engine.config import build_config
from rm_registry.engine.hf import load_hf_weights
from rm_registry.engine.tokenizer import load_tokenizer
import rm_registry.engine.model  # torch and megatron-core imported

def rss_mb():  # peak so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def current_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

folder = sys.argv[1]
plugin = get_reward_model("binary_ranking")
parallel.initialize(tensor_model_parallel_size=1, seed=1)
base = current_mb()
t0 = time.perf_counter()
cfg = build_config(plugin, overrides=[f"pretrained_checkpoint.restore_from_path={folder}", "model.params_dtype=bfloat16",
                                      "model.encoder_seq_length=1024"])
tok = load_tokenizer(cfg)
model = plugin.model_class.from_config(cfg, vocab_size=tok.vocab_size)
load_hf_weights(model, folder, cfg, require_head=False)
seconds = time.perf_counter() - t0
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"imports_mb": base, "peak_mb": rss_mb(), "after_mb": current_mb(), "seconds": seconds,
                  "param_bytes": params}))
"""


def write_model(folder: Path) -> int:
    """A random Llama folder (bf16 safetensors in shards, an index, config, byte tokenizer); returns its tensor bytes."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_models import tokenizer  # the tests' byte-level tokenizer

    c = CONFIG
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["head_dim"]
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    layers_per_shard = c["num_hidden_layers"] // SHARDS
    weight_map: dict[str, str] = {}
    total = 0
    for shard in range(SHARDS):
        tensors: dict[str, torch.Tensor] = {}
        if shard == 0:
            tensors["model.embed_tokens.weight"] = rnd(c["vocab_size"], h)
        if shard == SHARDS - 1:
            tensors["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        for i in range(shard * layers_per_shard, (shard + 1) * layers_per_shard):
            p = f"model.layers.{i}."
            tensors.update({
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                p + "mlp.gate_proj.weight": rnd(f, h), p + "mlp.up_proj.weight": rnd(f, h),
                p + "mlp.down_proj.weight": rnd(h, f),
            })
        name = f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({k: name for k in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    tokenizer(bos=True).save_pretrained(folder)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", metavar="DIR", help="write (or reuse) the model folder here instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "llama-1b"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if (folder / "model.safetensors.index.json").is_file():
            index = json.loads((folder / "model.safetensors.index.json").read_text())
            model_bytes = int(index["metadata"]["total_size"])
        else:
            model_bytes = write_model(folder)
        written = time.perf_counter() - started
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
    gb = model_bytes / 1e9
    peak = r["peak_mb"] * 2**20
    print(f"model: {gb:.2f} GB of bfloat16 tensors ({model_bytes / 2 / 1e9:.2f} B parameters), written in {written:.0f} s")
    print(f"load: {r['seconds']:.1f} s; our parameters: {r['param_bytes'] / 1e9:.2f} GB")
    print(f"RSS after imports: {r['imports_mb'] / 1024:.2f} GiB; after the load: {r['after_mb'] / 1024:.2f} GiB; "
          f"peak RSS of the process: {r['peak_mb'] / 1024:.2f} GiB "
          f"= {peak / model_bytes:.2f} x model bytes ({(peak - r['imports_mb'] * 2**20) / model_bytes:.2f} x above the imports)")
    print("target: peak < 1.5 x model bytes:", "met" if peak < 1.5 * model_bytes else "NOT met")


if __name__ == "__main__":
    main()
