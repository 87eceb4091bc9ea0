"""The data-parallel reductions of one optimizer step, with two real gloo processes and no torchrun.

``_dp_reduce_script.py`` runs as ranks 0 and 1 (a small torch model, a different batch on each
rank) and records the gradients before and after the trainer's ``allreduce_grads``, the norm
``clip_grad_norm`` returns with the clip of a small ``gradient_clip_val``, and the logged metrics
reduced by name (``MetricMeans``), including ranks that disagree on the names. This test recomputes all of it from the ranks' local gradients and values.
(The full training equivalence under torchrun is tests/distributed/test_torchrun.py, marked slow.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rm_registry.engine.parallel import _free_port

SCRIPT = Path(__file__).with_name("_dp_reduce_script.py")
CLIP = 0.05


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dp")
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(out)], env={**base, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]


def _flat(grads: dict[str, list]) -> torch.Tensor:
    return torch.cat([torch.tensor(g, dtype=torch.float64).flatten() for g in grads.values()])


def test_gradients_are_averaged_over_the_ranks(ranks: list[dict]) -> None:
    r0, r1 = ranks
    assert r0["names"] == r1["names"] == ["a.weight", "a.bias", "b.weight", "b.bias"]  # no gradient, not reduced
    local0, local1 = _flat(r0["local"]), _flat(r1["local"])
    assert not torch.allclose(local0, local1)  # the ranks saw different data
    mean = (local0 + local1) / 2
    for r in ranks:
        assert torch.allclose(_flat(r["averaged"]), mean, rtol=1e-6, atol=1e-8)


def test_clip_reports_the_norm_of_the_averaged_gradient_and_clips_it(ranks: list[dict]) -> None:
    mean = (_flat(ranks[0]["local"]) + _flat(ranks[1]["local"])) / 2
    norm = float(mean.norm())
    assert norm > 4 * CLIP  # the limit does bite
    for r in ranks:
        assert r["norm"] == pytest.approx(norm, rel=1e-6)  # before clipping, the same on every rank
        clipped = _flat(r["clipped"])
        assert float(clipped.norm()) <= CLIP * (1 + 1e-6)
        assert torch.allclose(clipped, mean * (CLIP / norm), rtol=1e-4, atol=1e-9)
    assert torch.equal(_flat(ranks[0]["clipped"]), _flat(ranks[1]["clipped"]))  # the ranks step alike


def test_logged_metrics_are_weighted_means_by_name_over_the_ranks(ranks: list[dict]) -> None:
    # rank r logged loss r + 1 and accuracy r / 4 with weight r + 1, and tokens 10 + r (a total)
    for r in ranks:
        assert list(r["means"]) == ["loss", "accuracy", "tokens"]
        assert r["means"] == pytest.approx({"loss": (1 + 2 * 2) / 3, "accuracy": 0.25 * 2 / 3, "tokens": 21.0},
                                           rel=1e-12)


def test_ranks_with_different_metric_names_stop_naming_them(ranks: list[dict]) -> None:
    for r in ranks:  # every rank stops, with every rank's names
        assert r["mismatch"] == ("step 2: data-parallel ranks returned different metric names from loss() "
                                 "(data-parallel rank 0: accuracy, loss; data-parallel rank 1: loss); every batch "
                                 "must return the same metric names (the empty one too)")
