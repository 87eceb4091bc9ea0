"""The token-level architecture under real ``torchrun`` (2 CPU processes, gloo): a process reward
model trains under TP=2 and DP=2 with the single process's losses and validation metrics (the
rewards read at ``reward_positions`` on every layout), and ``score`` under DP=2 writes the single
process's step rewards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_torchrun import LOSS_RTOL, OUTPUT_TOL, TINY, _metrics, _rel, _train_losses, one, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prm_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from rm_process_reward import plugin

    d = tmp_path_factory.mktemp("prm-dist")
    sample = plugin.sample_data()
    train, val = d / "train.jsonl", d / "val.jsonl"
    train.write_text("".join(sample["train"].read_text().splitlines(keepends=True)[:32]))
    val.write_text("".join(sample["validation"].read_text().splitlines(keepends=True)[:12]))
    common = ["train", "process_reward", "--data", str(train), "--validation-data", str(val), "--no-progress", *TINY,
              "model.encoder_seq_length=192"]
    one("prm train 1 process", *common, "--output", str(d / "single"))
    torchrun("prm train TP=2", *common, "--output", str(d / "tp2"), "model.tensor_model_parallel_size=2")
    torchrun("prm train DP=2", *common, "--output", str(d / "dp2"))
    return {"dir": d, "val": val, "single": d / "single", "tp2": d / "tp2", "dp2": d / "dp2"}


@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_prm_losses_and_validation_match_one_process(prm_runs: dict[str, Any], layout: str) -> None:
    reference, got = _train_losses(prm_runs["single"]), _train_losses(prm_runs[layout])
    assert [s for s, _ in got] == [s for s, _ in reference] == [1, 2, 3, 4]
    worst = max(_rel(a, b) for (_, a), (_, b) in zip(got, reference))
    assert worst <= LOSS_RTOL, f"{layout}: losses {got} vs one process {reference}"
    val_ref = [r for r in _metrics(prm_runs["single"]) if r["split"] == "validation"]
    val_got = [r for r in _metrics(prm_runs[layout]) if r["split"] == "validation"]
    assert [r["step"] for r in val_got] == [r["step"] for r in val_ref] == [2, 4]
    for a, b in zip(val_got, val_ref):
        assert a["num_steps"] == b["num_steps"] > 12 and a["num_solutions"] == b["num_solutions"] == 12
        assert a["step_accuracy"] == b["step_accuracy"] and a["first_error_f1"] == b["first_error_f1"]
        assert _rel(a["loss"], b["loss"]) <= LOSS_RTOL


def test_prm_score_under_data_parallelism(prm_runs: dict[str, Any]) -> None:
    d = prm_runs["dir"]
    one("prm score 1 process", "score", "--checkpoint", str(prm_runs["tp2"]), "--data", str(prm_runs["val"]),
        "--output", str(d / "one.jsonl"), "--no-progress")
    torchrun("prm score DP=2", "score", "--checkpoint", str(prm_runs["tp2"]), "--data", str(prm_runs["val"]),
             "--output", str(d / "two.jsonl"), "--no-progress")
    a = [json.loads(line) for line in (d / "one.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (d / "two.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert len(x["step_rewards"]) == len(y["step_rewards"]) > 0
        assert max(abs(p - q) for p, q in zip(x["step_rewards"], y["step_rewards"])) <= OUTPUT_TOL
