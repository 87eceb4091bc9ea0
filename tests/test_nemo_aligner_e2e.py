"""NeMo-Aligner users' recipes run as they are (slow: real training through the CLI).

1. NeMo-Aligner's functional test ``tests/functional/rm.sh`` (fixture beside the stock
   ``training_rm.yaml``): its Hydra overrides, read from the script itself, with the torchrun
   launcher and the ``.nemo`` path replaced, on HelpSteer-style data generated here.
2. The HelpSteer2-Preference recipe (``model.regression.loss_func=scaled_bt``) on generated A/B
   strength data: validation accuracy far above chance, logged to TensorBoard and W&B (offline).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "nemo_aligner"
STOCK = FIXTURES / "training_rm.yaml"

#: The .nemo checkpoint gave NeMo-Aligner its model size; here a tiny model of our own.
TINY_MODEL = ["++model.num_layers=2", "++model.hidden_size=32", "++model.num_attention_heads=4"]

pytestmark = pytest.mark.slow


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rm_registry", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, timeout=900)


def rm_sh_overrides(variables: dict[str, str]) -> list[str]:
    """The Hydra overrides of rm.sh's torchrun command, with its shell variables substituted."""
    script = (FIXTURES / "rm.sh").read_text()
    body = script.split("--config-name=${CONF_NAME} \\\n", 1)[1].split("\n}", 1)[0]
    body = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], body.replace("\\\n", " "))
    return shlex.split(body)


def _helpsteer_rows(n: int, seed: int) -> list[dict[str, object]]:
    """HelpSteer-style regression rows: 9 SteerLM attributes, the first four masked with -100."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        h = rng.randint(0, 4)
        text = (f"<extra_id_0>System\nA chat.\n<extra_id_1>User\nquestion {i}\n<extra_id_1>Assistant\n"
                + "good " * h + "bad " * (4 - h) + "\n<extra_id_2>")
        rows.append({"text": text, "label": [-100.0] * 4 + [float(h), float(h), 4.0, 2.0, float(rng.randint(0, 4))]})
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _metrics(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rm_sh_with_stock_training_rm_yaml(tmp_path: Path) -> None:
    data = _write(tmp_path / "test-rm.jsonl", _helpsteer_rows(16, 0))
    results = tmp_path / "results"
    overrides = rm_sh_overrides({
        "TRAIN_DATA_PATH": data, "VALID_DATA_PATH": data, "NAME": "rm_test", "PROJECT": "rm_test", "LR": "9e-7",
        "PRETRAINED_CHECKPOINT_NEMO_FILE": "null",  # the .nemo checkpoint: replaced by TINY_MODEL
    })
    assert "++model.activations_checkpoint_granularity=full" in overrides and len(overrides) == 31
    overrides = [o.replace("=/results", f"={results}") for o in overrides]
    extra = f"++model.data.data_prefix.validation_twice=[{data},{data}]"  # NeMo's extra validation set, two files
    proc = _run("train", "--config", str(STOCK), "--no-progress", *overrides, *TINY_MODEL, extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "trainer.devices" in warnings[0] and "model.dist_ckpt_load_strictness" in warnings[0]
    assert "NeMo-Aligner key trainer.precision=bf16 -> trainer.precision=bf16-mixed" in proc.stderr
    # exp_manager.explicit_log_dir is the run folder; trained, validated and tested (max_steps=1)
    records = _metrics(results)
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (1, "validation"), (1, "validation_twice"),
                                                          (1, "test")]
    assert records[1]["num_samples"] == 16 and set(records[1]["attributes"]) >= {"quality", "helpfulness", "verbosity"}
    assert records[2]["num_samples"] == 32 and records[2]["loss"] == pytest.approx(records[1]["loss"], rel=1e-3)
    assert (results / "checkpoints" / "step_0000001").is_dir()
    saved = (results / "config.yaml").read_text()
    for line in ("activations_checkpoint_granularity: full", "num_attributes: 9", "constant_steps: 0"):
        assert line in saved


def _preference_rows(pairs: int, seed: int) -> list[dict[str, object]]:
    """HelpSteer2-Preference rows: A and B on consecutive lines, strength -3..3 in label[0]."""
    rng = random.Random(seed)
    good, bad = ["clear", "correct", "helpful"], ["vague", "wrong", "rude"]
    rows = []
    for _ in range(pairs):
        qa, qb = rng.sample(range(5), 2)
        strength = float(max(-3, min(3, qb - qa)))  # < 0: A preferred
        for q in (qa, qb):
            words = [rng.choice(good) for _ in range(q)] + [rng.choice(bad) for _ in range(4 - q)]
            rng.shuffle(words)
            rows.append({"text": "User: question\nAssistant: " + " ".join(words), "label": [strength] + [-100.0] * 8})
    return rows


def test_helpsteer2_preference_recipe_beats_chance(tmp_path: Path) -> None:
    train = _write(tmp_path / "train_reg.jsonl", _preference_rows(160, 0))
    val = _write(tmp_path / "val_reg.jsonl", _preference_rows(60, 1))
    run = tmp_path / "run"
    recipe = [  # NeMo-Aligner's docs/user-guide/steerlm.rst, second stage (cluster and .nemo keys dropped)
        # NeMo-Aligner counted lines (micro_batch_size 2 = one A/B pair); ours count pairs, so its
        # global_batch_size=8 is halved as docs/migrating-from-nemo-aligner.md says: 160 pairs, 40 steps
        "++model.micro_batch_size=1", "++model.global_batch_size=4", "++model.data.data_impl=jsonl",
        f"model.data.data_prefix={{train: [{train}], validation: [{val}], test: [{val}]}}",
        f"exp_manager.explicit_log_dir={run}", "trainer.rm.val_check_interval=40", "exp_manager.create_wandb_logger=True",
        "exp_manager.wandb_logger_kwargs.project=steerlm", "exp_manager.wandb_logger_kwargs.name=rm_training",
        "trainer.rm.save_interval=40", "trainer.rm.max_steps=40", "++model.activations_checkpoint_method=uniform",
        "++model.activations_checkpoint_num_layers=1", "++model.sequence_parallel=False",
        "model.optim.sched.constant_steps=0", "model.optim.sched.warmup_steps=5", 'model.reward_model_type=regression',
        "trainer.rm.train_random_sampler=False", "model.regression.loss_func=scaled_bt",
        "model.regression.load_rm_head_weights=True", "model.optim.lr=3e-3", "model.optim.sched.min_lr=3e-4",
        "model.regression.num_attributes=9",
        # CPU-sized: a tiny fp32 model, short texts, TensorBoard too
        *TINY_MODEL, "trainer.precision=32", "model.force_head_dtype=null", "model.encoder_seq_length=64",
        "exp_manager.create_tensorboard_logger=True",
    ]
    proc = _run("train", "--config", str(STOCK), "--no-progress", *recipe,
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    print("HelpSteer2-Preference validation:", summary["validation"])  # shown with pytest -s
    assert summary["validation"]["pairs"] == 60 and summary["validation"]["accuracy"] >= 0.75, summary
    assert summary["validation"]["chosen_reward"] > summary["validation"]["rejected_reward"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("validation/accuracy")
    assert accuracy[-1].step == 40 and accuracy[-1].value == pytest.approx(summary["validation"]["accuracy"])
    assert len(events.Scalars("train/loss")) == 40
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((run / "wandb").iterdir())
