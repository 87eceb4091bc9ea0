"""``trainer.precision=bf16-mixed`` under real ``torchrun`` (2 CPU processes, gloo): tensor parallelism
with bfloat16 compute trains like the one-process bf16-mixed run, and the Adam state can be sharded
at the same time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_torchrun import TINY, _prefs, _rel, _train_losses, one, torchrun

pytestmark = pytest.mark.slow


def _check_memory_line(stderr: str, run: Path, tp: int, pp: int = 1) -> None:
    """The run's "memory per rank" line counts what the estimate behind docs/scaling.md's table counts."""
    from omegaconf import OmegaConf

    from rm_registry.engine.config._checks import model_shape
    from rm_registry.engine.config._memory import rank_memory

    line = next(x for x in stderr.splitlines() if x.startswith("memory per rank"))
    counted = int(re.search(r"([\d,]+) parameters", line).group(1).replace(",", ""))
    cfg = OmegaConf.load(run / "config.yaml")
    padded = -(-258 // int(cfg.model.make_vocab_size_divisible_by)) * int(cfg.model.make_vocab_size_divisible_by)
    assert rank_memory(model_shape(cfg), padded, tp=tp, pp=pp).parameters == counted, line


def test_tp2_and_sharded_dp2_bf16_mixed_follow_one_process(tmp_path: Path) -> None:
    train = _prefs(tmp_path / "train.jsonl", 32)
    common = ["train", "binary_ranking", "--data", str(train), "--no-progress", *TINY, "trainer.precision=bf16-mixed"]
    single = one("bf16-mixed 1 process", *common, "--output", str(tmp_path / "single"))
    assert "memory per rank:" in single.stderr and "bf16-mixed compute" in single.stderr, single.stderr
    tp = torchrun("bf16-mixed TP=2", *common, "--output", str(tmp_path / "tp2"), "model.tensor_model_parallel_size=2")
    _check_memory_line(single.stderr, tmp_path / "single", tp=1)
    _check_memory_line(tp.stderr, tmp_path / "tp2", tp=2)
    dp = torchrun("bf16-mixed DP=2 sharded", *common, "--output", str(tmp_path / "dp2"),
                  "model.optim.use_distributed_optimizer=true")
    assert "sharded over 2 data-parallel ranks" in dp.stderr, dp.stderr
    reference = _train_losses(tmp_path / "single")
    for layout in ("tp2", "dp2"):
        got = _train_losses(tmp_path / layout)
        assert [s for s, _ in got] == [s for s, _ in reference] == [1, 2, 3, 4]
        # bfloat16 sums in another order under TP / DP: equal to bf16's resolution, not to float32's
        assert max(_rel(a, b) for (_, a), (_, b) in zip(got, reference)) <= 2e-2, (layout, got, reference)
