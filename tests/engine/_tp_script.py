"""Run by tests/engine/test_tensor_parallel.py under ``torchrun --nproc-per-node 2``.

Builds the same tiny reward model with tensor parallelism 2 and 1 (data parallelism 2) from the
same seed, checks that rewards and gradients agree, saves the TP=2 model as a checkpoint and
writes the reference rewards for the single-process reload done by the test.

Usage: python -m torch.distributed.run --nproc-per-node 2 _tp_script.py OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rm_registry.engine import checkpoint, parallel
from rm_registry.engine.model import RewardModel

DEFAULTS = Path(__file__).resolve().parents[2] / "src" / "rm_registry" / "engine" / "config" / "defaults.yaml"
SEED = 4321


def tiny_cfg(tp: int) -> OmegaConf:
    cfg = OmegaConf.load(DEFAULTS)
    cfg.seed = SEED
    cfg.model.num_layers = 2
    cfg.model.hidden_size = 32
    cfg.model.num_attention_heads = 4
    cfg.model.encoder_seq_length = 16
    cfg.model.tensor_model_parallel_size = tp
    return cfg


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 258, (4, 12), generator=g)
    lengths = torch.tensor([12, 5, 1, 9])
    return tokens, lengths


def build(tp: int) -> tuple[RewardModel, parallel.ParallelInfo]:
    info = parallel.initialize(tensor_model_parallel_size=tp, seed=SEED)
    parallel.manual_seed(SEED)  # same default stream for both builds
    return RewardModel.from_config(tiny_cfg(tp), vocab_size=258, num_outputs=2), info


def main(out: Path) -> None:
    tokens, lengths = batch()
    m2, info2 = build(2)
    assert info2.tp == 2 and info2.dp == 1, info2
    r2 = m2(tokens, lengths)
    r2.sum().backward()
    checkpoint.save_checkpoint(out / "tp2", m2, state={"rank": info2.rank})
    shard_grads = {n: p.grad.clone() for n, p in m2.named_parameters()}
    shard_params = {n: p.detach().clone() for n, p in m2.named_parameters()}
    tp_rank = info2.tp_rank

    m1, info1 = build(1)
    assert info1.tp == 1 and info1.dp == 2, info1
    r1 = m1(tokens, lengths)
    r1.sum().backward()

    rel = ((r2 - r1).abs().max() / r1.abs().max().clamp_min(1e-12)).item()
    assert rel <= 1e-5, f"rank {info2.rank}: TP=2 rewards differ from TP=1 by {rel:.3e} relative"
    # Every TP=2 shard is the matching slice of the TP=1 tensor (weights and gradients).
    for name, p1 in m1.named_parameters():
        full_w, full_g, shard_w, shard_g = p1.detach(), p1.grad, shard_params[name], shard_grads[name]
        if shard_w.shape != full_w.shape:
            dim = next(d for d in range(full_w.dim()) if shard_w.shape[d] != full_w.shape[d])
            size = shard_w.shape[dim]
            full_w = full_w.narrow(dim, tp_rank * size, size)
            full_g = full_g.narrow(dim, tp_rank * size, size)
        assert torch.equal(shard_w, full_w), f"weight {name} differs between TP=2 and TP=1"
        gdiff = (shard_g - full_g).abs().max().item() / full_g.abs().max().clamp_min(1e-12).item()
        assert gdiff <= 1e-4, f"gradient of {name} differs by {gdiff:.3e} relative"
    if info1.is_main:
        (out / "reference.json").write_text(
            json.dumps(
                {
                    "tokens": tokens.tolist(),
                    "lengths": lengths.tolist(),
                    "rewards": r1.tolist(),
                    "relative_difference": rel,
                }
            )
        )
    parallel.barrier()
    parallel.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
