"""Pipeline parallelism under real ``torchrun`` (gloo, CPU): megatron-core's 1F1B schedule.

PP=2, TP=2 x PP=2 and PP=2 x DP=2 (4 processes) train step by step like one process (losses,
gradient norms and validation metrics within 1e-4 relative) for ``binary_ranking`` (pairs: two
sequences a sample) and ``regression`` (K=5 outputs); bf16-mixed under PP=2 (hidden states sent in
bfloat16) follows one bf16-mixed process. Micro-batches keep their own lengths (the data's lengths
vary), so the stages exchange shapes. Checkpoints reshard both ways: the PP=2 run's checkpoint
evaluated in one process, the one-process checkpoint evaluated under TP=2 x PP=2, the same metrics.
``process_reward`` (a token-level plugin) under PP=2 too; the listwise plugin's PP=2 run is in
``tests/test_listwise_plugin.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from test_mixed_precision_torchrun import _check_memory_line
from test_sequence_parallel_torchrun import _varied_prefs
from test_torchrun import TINY, _metrics, _rel, _texts, _train_losses, one, torchrun

pytestmark = pytest.mark.slow

PP2, TP2 = "model.pipeline_model_parallel_size=2", "model.tensor_model_parallel_size=2"
BF16 = "trainer.precision=bf16-mixed"
TOL = 1e-4
SAVE_2 = "trainer.rm.save_interval=2"  # checkpoints at steps 2 and 4: step 2 is resumed under other layouts
#: Regression's sample data is long: a longer window, and samples cut to fit.
REGRESSION = ["model.encoder_seq_length=256", "model.data.overlong_policy=truncate", "trainer.rm.max_steps=3",
              "trainer.rm.val_check_interval=3", "trainer.rm.limit_val_batches=2"]


@pytest.fixture(scope="module")
def pp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pp")
    train, val = _varied_prefs(d / "train.jsonl", 32), _varied_prefs(d / "val.jsonl", 12, offset=100)
    common = ["train", "binary_ranking", "--data", str(train), "--validation-data", str(val), "--no-progress", *TINY,
              SAVE_2]
    out: dict[str, Any] = {"dir": d, "val": val, "common": common}
    out["single"] = one("PP reference, 1 process", *common, "--output", str(d / "single"))
    out["pp2"] = torchrun("train PP=2", *common, "--output", str(d / "pp2"), PP2)
    out["tp2pp2"] = torchrun("train TP=2 x PP=2", *common, "--output", str(d / "tp2pp2"), PP2, TP2, nproc=4)
    out["pp2dp2"] = torchrun("train PP=2 x DP=2", *common, "--output", str(d / "pp2dp2"), PP2, nproc=4)
    out["single-bf16"] = one("bf16-mixed reference", *common, "--output", str(d / "single-bf16"), BF16)
    out["pp2-bf16"] = torchrun("train PP=2 bf16-mixed", *common, "--output", str(d / "pp2-bf16"), PP2, BF16)
    regression = ["train", "regression", "--no-progress", *TINY, *REGRESSION]
    out["regression"] = one("regression, 1 process", *regression, "--output", str(d / "regression"))
    out["regression-pp2"] = torchrun("regression PP=2", *regression, "--output", str(d / "regression-pp2"), PP2)
    return out


def _assert_same_steps(d: Path, layout: str | Path, reference: str, tol: float) -> None:
    ref, got = _train_losses(d / reference), _train_losses(d / layout)
    assert [s for s, _ in got] == [s for s, _ in ref] and len(ref) >= 3
    worst = max(_rel(a, b) for (_, a), (_, b) in zip(got, ref))
    assert worst <= tol, f"{layout}: losses {got} vs one process {ref} (worst relative {worst:.2e})"
    norms = {run: [r["grad_norm"] for r in _metrics(d / run) if r["split"] == "train"] for run in (reference, layout)}
    assert max(_rel(a, b) for a, b in zip(norms[layout], norms[reference])) <= tol, norms
    val_ref = [r for r in _metrics(d / reference) if r["split"] == "validation"]
    val_got = [r for r in _metrics(d / layout) if r["split"] == "validation"]
    assert [r["step"] for r in val_got] == [r["step"] for r in val_ref] and val_ref
    for a, b in zip(val_got, val_ref):
        for key, value in b.items():
            if not isinstance(value, float) or key == "seconds":
                continue
            if key.endswith("reward_mean"):
                # A pairwise loss does not see the head's bias (its gradient is rounding noise,
                # which Adam turns into steps of about lr): the mean reward drifts by ~lr per step.
                assert abs(a[key] - value) <= 1e-3, (key, a, b)
            else:
                assert _rel(a[key], value) <= tol or abs(a[key] - value) < 1e-6, (key, a, b)


@pytest.mark.parametrize(("layout", "world"), [("pp2", "TP=1 x PP=2 x DP=1"), ("tp2pp2", "TP=2 x PP=2 x DP=1"),
                                               ("pp2dp2", "TP=1 x PP=2 x DP=2")])
def test_pipeline_layouts_train_like_one_process(pp_runs: dict[str, Any], layout: str, world: str) -> None:
    stderr = pp_runs[layout].stderr
    assert f"layout {world}" in stderr and "memory per rank (the largest pipeline stage):" in stderr, stderr
    _check_memory_line(stderr, pp_runs["dir"] / layout, tp=2 if "tp2" in layout else 1, pp=2)
    _assert_same_steps(pp_runs["dir"], layout, "single", TOL)
    val = [r["loss"] for r in _metrics(pp_runs["dir"] / "single") if r["split"] == "validation"]
    assert val[-1] < val[0]  # it learned: equal losses are not equal by standing still


def test_regression_trains_under_pipeline_parallelism_like_one_process(pp_runs: dict[str, Any]) -> None:
    _assert_same_steps(pp_runs["dir"], "regression-pp2", "regression", TOL)


def test_bf16_mixed_under_pipeline_parallelism_follows_one_process(pp_runs: dict[str, Any]) -> None:
    # bfloat16 hidden states between the stages, float32 main weights on each.
    _assert_same_steps(pp_runs["dir"], "pp2-bf16", "single-bf16", 2e-3)


def test_checkpoints_reshard_between_pipeline_layouts(pp_runs: dict[str, Any]) -> None:
    d = pp_runs["dir"]
    final = {run: [r for r in _metrics(d / run) if r["split"] == "validation"][-1] for run in ("pp2", "single")}
    # PP=2 -> one process
    got = one("evaluate PP=2 checkpoint, 1 process", "evaluate", "--checkpoint", str(d / "pp2"), "--data",
              str(pp_runs["val"]), "--json", "--no-progress")
    one_proc = json.loads(got.stdout)
    # one process -> TP=2 x PP=2
    got = torchrun("evaluate 1-process checkpoint at TP=2 x PP=2", "evaluate", "--checkpoint", str(d / "single"),
                   "--data", str(pp_runs["val"]), "--json", "--no-progress", PP2, TP2, nproc=4)
    four = json.loads(got.stdout)
    for metrics, reference in ((one_proc, final["pp2"]), (four, final["single"])):
        assert metrics["accuracy"] == reference["accuracy"]
        assert _rel(metrics["loss"], reference["loss"]) <= TOL, (metrics, reference)
    info = json.loads((d / "pp2" / "checkpoints" / "step_0000004" / "checkpoint.json").read_text())
    assert info["pipeline_model_parallel_size"] == 2 and info["data_parallel_size"] == 1


def test_score_under_pipeline_parallelism_equals_one_process(pp_runs: dict[str, Any]) -> None:
    d = pp_runs["dir"]
    texts = _texts(d / "texts.jsonl", 13)
    one("score, 1 process", "score", "--checkpoint", str(d / "pp2"), "--data", str(texts), "--output",
        str(d / "scores-1.jsonl"), "--no-progress")
    torchrun("score at PP=2", "score", "--checkpoint", str(d / "pp2"), "--data", str(texts), "--output",
             str(d / "scores-pp2.jsonl"), "--no-progress", PP2)
    rows = {name: [json.loads(x) for x in (d / f"scores-{name}.jsonl").read_text().splitlines()] for name in ("1", "pp2")}
    assert len(rows["pp2"]) == len(rows["1"]) == 13
    for a, b in zip(rows["pp2"], rows["1"]):
        assert abs(a["reward"] - b["reward"]) <= 1e-5 * max(1.0, abs(b["reward"])), (a, b)


@pytest.mark.parametrize(("source", "layout", "nproc"), [("pp2", [], 1), ("single", [PP2, TP2], 4)],
                         ids=["PP=2 to one process", "one process to TP=2 x PP=2"])
def test_resuming_under_another_layout_takes_the_same_steps(pp_runs: dict[str, Any], tmp_path: Path, source: str,
                                                           layout: list[str], nproc: int) -> None:
    """The Adam moments are saved like the weights (optimizer/), so they reshard too: a run stopped
    at step 2 and resumed under another layout takes steps 3 and 4 as the uninterrupted run did."""
    d = pp_runs["dir"]
    run = tmp_path / "resumed"
    shutil.copytree(d / source, run)
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # as if stopped after step 2
    args = [*pp_runs["common"], "--output", str(run), "--resume", *layout]
    proc = one("resume in 1 process", *args) if nproc == 1 else torchrun("resume at TP=2 x PP=2", *args, nproc=4)
    assert "resuming from step 2" in proc.stderr, proc.stderr
    assert [s for s, _ in _train_losses(run)] == [1, 2, 3, 4]
    _assert_same_steps(d, run, "single", TOL)


def test_a_checkpoint_with_per_rank_optimizer_state_is_refused_under_another_layout(pp_runs: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    """No optimizer/ folder (a sharded optimizer's checkpoint, or an older one): one line naming the
    key and the size to resume with, before any training."""
    import subprocess
    import sys

    run = tmp_path / "old"
    shutil.copytree(pp_runs["dir"] / "pp2", run)
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    step2 = run / "checkpoints" / "step_0000002"
    shutil.rmtree(step2 / "optimizer")
    marker = json.loads((step2 / "checkpoint.json").read_text())
    marker["files"] = {k: v for k, v in marker["files"].items() if not k.startswith("optimizer/")}
    (step2 / "checkpoint.json").write_text(json.dumps(marker))
    proc = subprocess.run([sys.executable, "-m", "rm_registry", *pp_runs["common"], "--output", str(run), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "was saved with model.pipeline_model_parallel_size=2, this run uses 1; resume with " \
           "model.pipeline_model_parallel_size=2" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_process_reward_trains_under_pipeline_parallelism_like_one_process(tmp_path: Path) -> None:
    """A token-level plugin (its rewards read at the batch's reward_positions on the last stage)."""
    args = ["train", "process_reward", "--no-progress", *TINY, "trainer.rm.max_steps=3", "trainer.rm.val_check_interval=3",
            "trainer.rm.limit_val_batches=2"]
    one("process_reward, 1 process", *args, "--output", str(tmp_path / "single"))
    torchrun("process_reward PP=2", *args, "--output", str(tmp_path / "pp2"), PP2)
    _assert_same_steps(tmp_path, "pp2", "single", TOL)
