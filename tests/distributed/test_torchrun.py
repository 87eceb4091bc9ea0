"""Real ``torchrun`` launches with 2 CPU processes (gloo): training, evaluation and scoring under
tensor parallelism 2 and data parallelism 2 against the single-process results.

Every launch is ``python -m torch.distributed.run --nproc-per-node 2 -m rm_registry ...``, as a
user would type it. One TP=2 and one DP=2 training run are shared by all tests of this module;
the TP=2 run's checkpoint is the one evaluated and scored. Each launch costs a few seconds of
imports per process, so the configs are tiny (2 layers, hidden 32, 4 steps).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from checkpoint_payloads import assert_allow_list_covers, craft, refusal

pytestmark = pytest.mark.slow

#: Small enough that every step clips (the gradient norms of these runs are around 3-4).
CLIP = 0.5
#: Same seed and global batch in every run; micro-batch 2 so that one process accumulates 4
#: micro-batches, a DP=2 rank 2, and a TP=2 rank 4 (on the same data as its partner).
TINY = [
    "seed=77",
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.encoder_seq_length=64",
    "model.micro_batch_size=2",
    "model.global_batch_size=8",
    "model.params_dtype=float32",
    "trainer.rm.max_steps=4",
    "trainer.rm.val_check_interval=2",
    "trainer.rm.save_interval=4",
    f"trainer.rm.gradient_clip_val={CLIP}",
]
LOSS_RTOL = 1e-3
OUTPUT_TOL = 1e-4
TIMINGS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.pop("PYTHONWARNINGS", None)  # warnings stay visible: only rank 0 may print them
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(label: str, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    TIMINGS[label] = time.perf_counter() - started
    assert proc.returncode == 0, f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def one(label: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m rm_registry ARGS`` in one process."""
    return _run(label, [sys.executable, "-m", "rm_registry", *args])


def torchrun(label: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node NPROC -m rm_registry ARGS`` (gloo on CPU)."""
    return _run(label, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                        "-m", "rm_registry", *args])


def _prefs(path: Path, n: int, offset: int = 0) -> Path:
    rows = [{"prompt": f"Q{i}: what is {i % 7}+{i % 5}?", "chosen": f" It is {i % 7 + i % 5}. Glad to help!",
             "rejected": f" It is {i % 7 + i % 5 + 1}, go away."} for i in range(offset, offset + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts(path: Path, n: int) -> Path:
    """Texts of varied lengths (so that length-sorted batches differ from input order), some cut to fit."""
    rows = [{"prompt": f"Q{i}: what is {i % 7}+{i % 5}?",
             "response": f"It is {i % 7 + i % 5 + i % 2}." + " Glad to help!" * (i % 4)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in _metrics(run) if r["split"] == "train"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Data, and three training runs from the same seed: one process, TP=2 and DP=2 under torchrun."""
    d = tmp_path_factory.mktemp("dist")
    train, val = _prefs(d / "train.jsonl", 32), _prefs(d / "val.jsonl", 12, offset=100)
    common = ["train", "binary_ranking", "--data", str(train), "--validation-data", str(val), "--no-progress", *TINY]
    out: dict[str, Any] = {"dir": d, "train": train, "val": val, "texts": _texts(d / "texts.jsonl", 21)}
    out["single_proc"] = one("train 1 process", *common, "--output", str(d / "single"))
    out["tp_proc"] = torchrun("train TP=2", *common, "--output", str(d / "tp2"), "model.tensor_model_parallel_size=2")
    out["dp_proc"] = torchrun("train DP=2", *common, "--output", str(d / "dp2"))
    out.update(single=d / "single", tp2=d / "tp2", dp2=d / "dp2")
    yield out
    print("\ndistributed test launches (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_losses_match_single_process_step_by_step(runs: dict[str, Any], layout: str) -> None:
    reference = _train_losses(runs["single"])
    got = _train_losses(runs[layout])
    assert [s for s, _ in got] == [s for s, _ in reference] == [1, 2, 3, 4]
    worst = max(_rel(a, b) for (_, a), (_, b) in zip(got, reference))
    assert worst <= LOSS_RTOL, f"{layout}: losses {got} vs one process {reference} (worst relative {worst:.2e})"
    # The model did learn something, so equal losses are not equal by standing still.
    assert reference[-1][1] < reference[0][1]
    # Every step clipped, and the norm logged is that of the whole step's gradient before clipping
    # (after the DP all-reduce, over all TP shards): the single process's.
    norms = {run: [r["grad_norm"] for r in _metrics(runs[run]) if r["split"] == "train"] for run in ("single", layout)}
    assert all(n > 2 * CLIP for n in norms["single"]), norms
    worst = max(_rel(a, b) for a, b in zip(norms[layout], norms["single"]))
    assert worst <= LOSS_RTOL, f"{layout}: gradient norms {norms[layout]} vs one process {norms['single']}"
    # Validation during training (split across DP ranks, or TP-sharded) agrees as well.
    val_ref = [r for r in _metrics(runs["single"]) if r["split"] == "validation"]
    val_got = [r for r in _metrics(runs[layout]) if r["split"] == "validation"]
    assert [r["step"] for r in val_got] == [r["step"] for r in val_ref] == [2, 4]
    for a, b in zip(val_got, val_ref):
        assert a["num_pairs"] == b["num_pairs"] == 12
        assert a["accuracy"] == b["accuracy"]
        assert _rel(a["loss"], b["loss"]) <= LOSS_RTOL


@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_one_rank_logs_and_writes(runs: dict[str, Any], layout: str) -> None:
    proc = runs[f"{layout[:2]}_proc"]
    summary = json.loads(proc.stdout)  # one JSON document: only rank 0 printed it
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("step_0000004")
    assert proc.stderr.count("train: 32 samples from") == 1
    # Warnings (if any are left unfiltered) come from rank 0 only: a line printed by both ranks
    # would appear twice, more often than in one process.
    warnings = Counter(line for line in proc.stderr.splitlines() if line.startswith("rm-registry: warning:"))
    single = Counter(line for line in runs["single_proc"].stderr.splitlines()
                     if line.startswith("rm-registry: warning:"))
    assert all(count <= max(1, single[line]) for line, count in warnings.items()), (warnings, single)
    run = runs[layout]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in runs["single"].iterdir())
    assert len(_metrics(run)) == len(_metrics(runs["single"])) == 6  # no line written twice
    ckpt = run / "checkpoints" / "step_0000004"
    marker = json.loads((ckpt / "checkpoint.json").read_text())
    tp = 2 if layout == "tp2" else 1
    assert (marker["world_size"], marker["tensor_model_parallel_size"], marker["data_parallel_size"]) == (2, tp, 2 // tp)
    assert sorted(p.name for p in (ckpt / "state").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]


@pytest.mark.parametrize(("layout", "rank1_file"), [("tp2", "weights/__1_0.distcp"), ("dp2", "state/rank_00001.pt")])
def test_multi_process_checkpoints_are_allow_listed_data(runs: dict[str, Any], layout: str, rank1_file: str,
                                                         tmp_path: Path) -> None:
    """What two ranks save is covered by the allow-list; a payload in a file rank 1 wrote is refused.

    (Under DP=2 rank 0 writes every weight shard: the weights are replicated.)
    """
    from rm_registry import UnsafeCheckpointError
    from rm_registry.engine.checkpoint import _safe_pickle

    ckpt = runs[layout] / "checkpoints" / "step_0000004"
    assert_allow_list_covers(ckpt)
    _safe_pickle.check_checkpoint(ckpt)
    copy, marker = tmp_path / "ckpt", tmp_path / "PWNED"
    shutil.copytree(ckpt, copy)
    where = craft(copy, rank1_file, marker)
    with pytest.raises(UnsafeCheckpointError) as exc:
        _safe_pickle.check_checkpoint(copy)
    assert str(exc.value) == refusal(where) and not marker.exists()


@pytest.fixture(scope="module")
def single_outputs(runs: dict[str, Any]) -> dict[str, Any]:
    """Evaluation and scores of the TP=2 checkpoint in ONE process (resharded to TP=1)."""
    d, ckpt = runs["dir"], str(runs["tp2"])
    ev = one("evaluate 1 process", "evaluate", "--checkpoint", ckpt, "--data", str(runs["val"]), "--json",
             "--no-progress")
    one("score 1 process", "score", "--checkpoint", ckpt, "--data", str(runs["texts"]), "--output",
        str(d / "scores_single.jsonl"), "--no-progress")
    scores = [json.loads(x) for x in (d / "scores_single.jsonl").read_text().splitlines()]
    return {"evaluate": json.loads(ev.stdout), "scores": scores}


def test_tp2_checkpoint_evaluates_in_one_process(runs: dict[str, Any], single_outputs: dict[str, Any]) -> None:
    last_val = [r for r in _metrics(runs["tp2"]) if r["split"] == "validation"][-1]
    metrics = single_outputs["evaluate"]
    assert last_val["step"] == 4
    assert metrics["num_pairs"] == last_val["num_pairs"] == 12
    assert metrics["accuracy"] == last_val["accuracy"]
    assert abs(metrics["loss"] - last_val["loss"]) <= 1e-3
    assert _rel(metrics["loss"], last_val["loss"]) <= 1e-4  # in fact equal up to float32 rounding


@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_evaluate_under_torchrun_equals_one_process(runs: dict[str, Any], single_outputs: dict[str, Any],
                                                   layout: str) -> None:
    extra = ["model.tensor_model_parallel_size=2"] if layout == "tp2" else []
    proc = torchrun(f"evaluate {layout}", "evaluate", "--checkpoint", str(runs["tp2"]), "--data", str(runs["val"]),
                    "--json", "--no-progress", *extra)
    metrics = json.loads(proc.stdout)  # printed once
    assert "trainer state" not in proc.stderr  # loading for evaluation does not talk about --resume state
    reference = single_outputs["evaluate"]
    assert set(metrics) == set(reference)
    assert metrics["num_pairs"] == reference["num_pairs"] == 12  # every pair counted once across the ranks
    assert metrics["accuracy"] == reference["accuracy"]
    for key, value in reference.items():
        assert abs(metrics[key] - value) <= OUTPUT_TOL, f"{key}: {metrics[key]} under {layout}, {value} in one process"


@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_score_under_torchrun_writes_one_file_in_input_order(runs: dict[str, Any], single_outputs: dict[str, Any],
                                                           layout: str) -> None:
    extra = ["model.tensor_model_parallel_size=2"] if layout == "tp2" else []
    out = runs["dir"] / f"scores_{layout}.jsonl"
    # batch size 2: 11 batches, so that with DP=2 the ranks hold interleaved, unequal shares
    proc = torchrun(f"score {layout}", "score", "--checkpoint", str(runs["tp2"]), "--data", str(runs["texts"]),
                    "--output", str(out), "--batch-size", "2", "--no-progress", *extra)
    assert proc.stderr.count("wrote 21 scores") == 1
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary file left behind by any rank
    got = [json.loads(x) for x in out.read_text().splitlines()]
    reference = single_outputs["scores"]
    assert len(got) == len(reference) == 21
    diffs = [abs(a["reward"] - b["reward"]) for a, b in zip(got, reference)]
    assert max(diffs) <= OUTPUT_TOL, f"{layout}: rewards differ by up to {max(diffs):.2e} from one process"
    # Input order, not batch order: the rewards are not all equal, so a permutation would show.
    assert len({round(r["reward"], 6) for r in reference}) > 5


def test_benchmark_under_torchrun_dp2_equals_one_process(runs: dict[str, Any]) -> None:
    """evaluate --benchmark splits the texts across DP ranks: the same figures and per-example rewards
    as one process, files written once."""
    d = runs["dir"]
    rows = [{"id": i, "prompt": f"Q{i}: what is {i % 7}+{i % 5}?", "chosen": f"It is {i % 7 + i % 5}." + " Sure!" * (i % 3),
             "rejected": f"It is {i % 7 + i % 5 + 1}.", "subset": ("alpacaeval-easy", "mt-bench-hard", "donotanswer",
                                                                 "hep-go")[i % 4]} for i in range(22)]
    data = d / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["evaluate", "--benchmark", "rewardbench", "--checkpoint", str(runs["tp2"]), "--data", str(data),
              "--no-progress", "model.micro_batch_size=2"]
    one("benchmark 1 process", *common, "--output", str(d / "bench1"))
    proc = torchrun("benchmark DP=2", *common, "--output", str(d / "bench_dp2"))
    assert proc.stdout.count("RewardBench score") == 1 and proc.stderr.count("wrote results.json") == 1
    single = json.loads((d / "bench1" / "results.json").read_text())
    dp = json.loads((d / "bench_dp2" / "results.json").read_text())
    assert dp["settings"]["data_parallel_size"] == 2 and dp["data"]["texts_scored"] == 44
    assert dp["sections"] == pytest.approx(single["sections"], abs=1e-12)
    a = [json.loads(x) for x in (d / "bench1" / "per_example.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (d / "bench_dp2" / "per_example.jsonl").read_text().splitlines()]
    assert [r["id"] for r in a] == [r["id"] for r in b] == [str(i) for i in range(22)]
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra["rewards_chosen"] + ra["rewards_rejected"],
                                                                  rb["rewards_chosen"] + rb["rewards_rejected"])]
    assert max(diffs) <= OUTPUT_TOL
    assert not list(d.glob(".bench_dp2.*"))  # no temporary folder left by either rank
