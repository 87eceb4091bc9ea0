"""``model.sequence_parallel=true`` under real ``torchrun`` (TP=2, 2 CPU processes, gloo).

A Llama-shaped tiny model (RMSNorm, rotary positions, SwiGLU, query/key layernorms, biases on the
linear layers so that the row-parallel biases are sequence-parallel weights too) trains step by
step like one process: the sequence split over ranks, the gather before last-token pooling, and
the tensor-parallel sum of the norm, bias and q/k-norm gradients each change the losses if wrong.
The data's lengths vary, so most batches have an odd longest row and are padded for the split.
TP=2 without sequence parallelism checks the q/k-norm sum alone, and bf16-mixed the norms' outputs
in the compute dtype (the sequence-parallel linears' backward needs the two dtypes equal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_torchrun import TINY, _metrics, _rel, _train_losses, one, torchrun

pytestmark = pytest.mark.slow

LLAMA = ["model.normalization=RMSNorm", "model.position_embedding_type=rope", "model.qk_layernorm=true",
         "model.gated_linear_unit=true", "model.activation=silu", "model.ffn_hidden_size=64"]
TP2, SP = "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"
BF16 = "trainer.precision=bf16-mixed"


def _varied_prefs(path: Path, n: int, offset: int = 0) -> Path:
    rows = [{"prompt": f"Q{i}: what is {i % 7}+{i % 5}?" + "?" * (i % 3),
             "chosen": f" It is {i % 7 + i % 5}." + " Glad to help!" * (i % 4),
             "rejected": f" It is {i % 7 + i % 5 + 1}, go away." + " Bye" * (i % 5)} for i in range(offset, offset + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("sp")
    train, val = _varied_prefs(d / "train.jsonl", 32), _varied_prefs(d / "val.jsonl", 12, offset=100)
    common = ["train", "binary_ranking", "--data", str(train), "--validation-data", str(val), "--no-progress",
              *TINY, *LLAMA]
    out: dict[str, Any] = {"dir": d}
    out["single"] = one("SP reference, 1 process", *common, "--output", str(d / "single"))
    out["tp2"] = torchrun("train TP=2, q/k norms", *common, "--output", str(d / "tp2"), TP2)
    out["sp"] = torchrun("train TP=2 + SP", *common, "--output", str(d / "sp"), TP2, SP)
    out["single-bf16"] = one("bf16-mixed reference", *common, "--output", str(d / "single-bf16"), BF16)
    out["sp-bf16"] = torchrun("train TP=2 + SP bf16-mixed", *common, "--output", str(d / "sp-bf16"), TP2, SP, BF16)
    return out


@pytest.mark.parametrize(("layout", "reference", "tol"), [("sp", "single", 1e-3), ("tp2", "single", 1e-3),
                                                        ("sp-bf16", "single-bf16", 2e-2)])
def test_tensor_and_sequence_parallel_train_like_one_process(sp_runs: dict[str, Any], layout: str, reference: str,
                                                             tol: float) -> None:
    d = sp_runs["dir"]
    if layout.startswith("sp"):
        assert "layout TP=2 x PP=1 x DP=1 with sequence parallelism" in sp_runs[layout].stderr, sp_runs[layout].stderr
    else:
        assert "with sequence parallelism" not in sp_runs[layout].stderr
    ref, got = _train_losses(d / reference), _train_losses(d / layout)
    assert [s for s, _ in got] == [s for s, _ in ref] == [1, 2, 3, 4]
    worst = max(_rel(a, b) for (_, a), (_, b) in zip(got, ref))
    assert worst <= tol, f"{layout}: losses {got} vs one process {ref} (worst relative {worst:.2e})"
    assert ref[-1][1] < ref[0][1]
    norms = {run: [r["grad_norm"] for r in _metrics(d / run) if r["split"] == "train"] for run in (reference, layout)}
    assert max(_rel(a, b) for a, b in zip(norms[layout], norms[reference])) <= tol, norms
    val_ref = [r for r in _metrics(d / reference) if r["split"] == "validation"]
    val_got = [r for r in _metrics(d / layout) if r["split"] == "validation"]
    assert [r["step"] for r in val_got] == [r["step"] for r in val_ref] == [2, 4]
    for a, b in zip(val_got, val_ref):
        assert _rel(a["loss"], b["loss"]) <= tol, (a, b)
        if tol <= 1e-3:
            assert a["accuracy"] == b["accuracy"], (a, b)
