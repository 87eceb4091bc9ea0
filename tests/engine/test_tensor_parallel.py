"""Tensor parallelism with real processes: torchrun, 2 CPU processes on gloo.

``_tp_script.py`` checks (on both ranks) that TP=2 has the same un-sharded weights, rewards
(1e-5 relative) and gradients as TP=1, and saves a TP=2 checkpoint; this test then loads that
checkpoint in this single process (TP=1) and checks the same rewards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_tp_script.py")


@pytest.mark.slow
def test_tp2_matches_tp1_and_its_checkpoint_loads_in_one_process(parallel_info, tiny_cfg, tmp_path: Path) -> None:
    from rm_registry.engine import checkpoint, parallel
    from rm_registry.engine.model import RewardModel

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(SCRIPT), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so a hang can be killed with its worker processes
    )
    try:
        output, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 400 s:\n{output[-5000:]}")
    assert proc.returncode == 0, f"torchrun failed:\n{output[-8000:]}"
    ref = json.loads((tmp_path / "reference.json").read_text())
    assert ref["relative_difference"] <= 1e-5

    info = checkpoint.checkpoint_info(tmp_path / "tp2")
    assert (info["world_size"], info["tensor_model_parallel_size"]) == (2, 2)
    cfg = tiny_cfg(encoder_seq_length=16)
    cfg.seed = 4321
    parallel.manual_seed(0)  # a different init: the rewards must come from the checkpoint
    model = RewardModel.from_config(cfg, vocab_size=258, num_outputs=2)
    with pytest.warns(RuntimeWarning, match=r"saved by 2 process\(es\) with tensor parallelism 2 x pipeline 1"):
        state = checkpoint.load_checkpoint(tmp_path / "tp2", model)
    assert state["rank"] == 0 and state["layout_changed"] is True
    tokens, lengths = torch.tensor(ref["tokens"]), torch.tensor(ref["lengths"])
    expected = torch.tensor(ref["rewards"])
    rewards = model(tokens, lengths)
    rel = ((rewards - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-5, f"TP=2 checkpoint loaded with TP=1 gives rewards {rel:.2e} relative away"
