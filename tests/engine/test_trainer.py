"""The training loop end to end, in-process, with the real binary_ranking plugin and a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rm_registry import ConfigError, DataError, get_reward_model

TINY = [
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.encoder_seq_length=96",
    "model.micro_batch_size=4",
    "model.global_batch_size=8",
    "model.optim.sched.warmup_steps=2",
    "trainer.rm.val_check_interval=3",
    "trainer.rm.save_interval=3",
]


def _prefs(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        lines.append(json.dumps({"prompt": f"Q{i}: what is {a}+{b}?",
                                 "chosen": f" It is {a + b}. Glad to help!",
                                 "rejected": f" It is {a + b + 1}, go away."}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(tmp_path: Path, *extra: str):
    from rm_registry.engine.config import build_config

    plugin = get_reward_model("binary_ranking")
    train = _prefs(tmp_path / "train.jsonl", 48)
    val = _prefs(tmp_path / "val.jsonl", 12)
    cfg = build_config(plugin, overrides=[*TINY, *extra], data_paths={"train": train, "validation": val})
    return plugin, cfg


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_writes_metrics_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    from rm_registry.engine.checkpoint import find_latest, is_complete
    from rm_registry.engine.trainer import train

    plugin, cfg = _build(tmp_path, "trainer.rm.max_steps=6")
    full = train(plugin, cfg, tmp_path / "full", progress=False)
    records = _records(tmp_path / "full")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # train loss every step by default
    val = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in val] == [3, 6]
    for r in records:
        assert isinstance(r["loss"], float)
    assert {"accuracy", "chosen_reward_mean", "rejected_reward_mean"} <= set(val[-1])
    assert full.last_checkpoint == find_latest(tmp_path / "full")
    assert full.last_checkpoint.name == "step_0000006" and is_complete(full.last_checkpoint)
    for name in ("config.yaml", "tokenizer"):
        assert (full.last_checkpoint / name).exists()

    # A run interrupted after its step-3 checkpoint (the step-6 one never completed), then resumed:
    # steps 4-6 match the uninterrupted run, and the log holds each step once.
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_0000006")
    with pytest.raises(ConfigError, match="--resume"):
        train(plugin, cfg, tmp_path / "resumed", progress=False)
    again = train(plugin, cfg, tmp_path / "resumed", resume=True, progress=False)
    assert again.last_checkpoint.name == "step_0000006"
    resumed = _records(tmp_path / "resumed")
    assert [(r["step"], r["split"]) for r in resumed] == [(r["step"], r["split"]) for r in records]
    for a, b in zip(records, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)


@pytest.mark.slow
def test_max_time_per_run_validates_saves_and_stops_then_resume_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NeMo-Aligner's run timer: the step that reaches exp_manager.max_time_per_run is validated and
    checkpointed (though neither interval says so), the run stops cleanly, --resume goes on."""
    from rm_registry.engine.checkpoint import is_complete
    from rm_registry.engine.trainer import train

    plugin, cfg = _build(tmp_path, "trainer.rm.max_steps=100000", "trainer.rm.val_check_interval=100000",
                         "trainer.rm.save_interval=100000", "trainer.rm.log_every_n_steps=100000",
                         "exp_manager.max_time_per_run=00:00:00:02")
    cfg.model.data.data_prefix.test = cfg.model.data.data_prefix.validation
    run = tmp_path / "run"
    first = train(plugin, cfg, run, progress=False)
    n = first.steps
    assert first.time_limit_reached and 1 <= n < 100000 and first.test is None  # the test set waits for the end
    assert first.last_checkpoint.name == f"step_{n:07d}" and is_complete(first.last_checkpoint)
    assert [(r["step"], r["split"]) for r in _records(run)] == [(n, "train"), (n, "validation")]
    assert first.validation is not None and "accuracy" in first.validation
    assert (f"rm-registry: time limit exp_manager.max_time_per_run=00:00:00:02 reached at step {n} of 6000; "
            "checkpoint saved, continue with --resume") in capsys.readouterr().err

    second = train(plugin, cfg, run, resume=True, progress=False)
    m = second.steps
    assert second.time_limit_reached and m > n
    assert [r["step"] for r in _records(run) if r["split"] == "train"] == [n, m]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step_{n:07d}", f"step_{m:07d}"]


def test_a_time_limit_reached_on_the_last_step_ends_the_run_as_usual(tmp_path: Path, monkeypatch) -> None:
    from rm_registry.engine import trainer as trainer_mod

    calls = []
    monkeypatch.setattr(trainer_mod, "_time_is_up", lambda *a: calls.append(a) or len(calls) == 4)  # a clock at step 4
    plugin, cfg = _build(tmp_path, "trainer.rm.max_steps=4", "exp_manager.max_time_per_run=00:01:00:00")
    cfg.model.data.data_prefix.test = cfg.model.data.data_prefix.validation
    result = trainer_mod.train(plugin, cfg, tmp_path / "run", progress=False)
    assert len(calls) == 4 and result.steps == 4 and not result.time_limit_reached and result.test is not None


@pytest.mark.parametrize("value, seconds", [("00:00:01:30", 90.0), ("01:00:00:00", 86400.0),
                                            ({"minutes": 1, "seconds": 5}, 65.0), (None, None)])
def test_max_time_per_run_forms(value, seconds) -> None:
    from omegaconf import OmegaConf

    from rm_registry.engine.config import max_time_seconds

    assert max_time_seconds(OmegaConf.create({"exp_manager": {"max_time_per_run": value}})) == seconds


@pytest.mark.parametrize("override, message", [
    ("exp_manager.max_time_per_run=4h", "exp_manager.max_time_per_run='4h': expected \"DD:HH:MM:SS\""),
    ("exp_manager.max_time_per_run=00:00:00:00", "longer than zero"),
    ("exp_manager.max_time_per_run={hours: 1, weeks: 2}", "expected \"DD:HH:MM:SS\""),
    ("exp_manager.max_time_per_run=3", "expected a string or mapping"),
])
def test_bad_max_time_per_run_is_refused_naming_it(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _build(tmp_path, override)


def _train_observed(tmp_path: Path, name: str, *extra: str) -> tuple[list[dict], list[dict]]:
    """Train, and return the train lines of metrics.jsonl and what every ``optimizer.step()`` saw.

    A global optimizer step pre-hook (torch's own, nothing replaced) reads the learning rate and
    the total norm of the gradients the optimizer is about to apply.
    """
    import math

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from rm_registry.engine.trainer import train

    seen: list[dict] = []

    def observe(optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append({"lr": optimizer.param_groups[0]["lr"],
                     "lrs": {g["lr"] for g in optimizer.param_groups},
                     "norm": math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))})

    plugin, cfg = _build(tmp_path, *extra)
    cfg.model.data.data_prefix.validation = None  # only the optimizer steps matter here
    handle = register_optimizer_step_pre_hook(observe)
    try:
        train(plugin, cfg, tmp_path / name, progress=False)
    finally:
        handle.remove()
    return [r for r in _records(tmp_path / name) if r["split"] == "train"], seen


@pytest.mark.slow
def test_metrics_log_the_lr_and_the_norm_before_clipping_that_the_optimizer_step_used(tmp_path: Path) -> None:
    import math

    clip = 1e-3
    logged, seen = _train_observed(tmp_path, "clipped", "trainer.rm.max_steps=4", "trainer.rm.save_interval=100",
                                   f"trainer.rm.gradient_clip_val={clip}", "model.optim.lr=0.002",
                                   "model.optim.sched.min_lr=0.0002")
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and len(seen) == 4
    # Warmup over 2 steps (lr/2, lr), then the cosine from lr to min_lr over the last 2.
    expected = [0.001, 0.002, 0.002, 0.0002 + (0.002 - 0.0002) * (1 + math.cos(math.pi / 2)) / 2]
    assert [s["lr"] for s in seen] == pytest.approx(expected, rel=1e-12)
    assert all(len(s["lrs"]) == 1 for s in seen)  # every parameter group steps with the same lr
    assert [r["lr"] for r in logged] == [s["lr"] for s in seen]
    # The optimizer got gradients clipped to the limit; the log holds the norm before clipping.
    for r, s in zip(logged, seen):
        assert r["grad_norm"] > 10 * clip, r
        assert s["norm"] <= clip * (1 + 1e-5) and s["norm"] == pytest.approx(clip, rel=1e-3)

    # Without clipping, the first step (same seed, same weights, same batch) applies exactly the
    # gradients whose norm the clipped run logged.
    plain, seen_plain = _train_observed(tmp_path, "plain", "trainer.rm.max_steps=1", "trainer.rm.gradient_clip_val=null")
    assert plain[0]["grad_norm"] == pytest.approx(seen_plain[0]["norm"], rel=1e-6)
    assert logged[0]["grad_norm"] == pytest.approx(seen_plain[0]["norm"], rel=1e-6)
    assert plain[0]["loss"] == logged[0]["loss"]


def test_bad_data_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from rm_registry.engine.trainer import train

    plugin, cfg = _build(tmp_path, "trainer.rm.max_steps=2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    cfg.model.data.data_prefix.train = str(bad)
    with pytest.raises(DataError) as info:
        train(plugin, cfg, tmp_path / "out", progress=False)
    assert "bad.jsonl:2" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_too_little_data_names_the_batch_size(tmp_path: Path) -> None:
    from rm_registry.engine.trainer import train

    plugin, cfg = _build(tmp_path, "model.global_batch_size=64", "model.micro_batch_size=8")
    with pytest.raises(ConfigError, match="model.global_batch_size=64"):
        train(plugin, cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_plugin_model_that_cannot_be_a_pipeline_stage_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import torch

    from rm_registry.engine.trainer import train

    class PlainModel(torch.nn.Module):  # a plugin's own model, not built on RewardModel
        @classmethod
        def from_config(cls, cfg, *, vocab_size):
            return cls()

    plugin, cfg = _build(tmp_path, "model.pipeline_model_parallel_size=2")
    plain = type("PlainPlugin", (type(plugin),), {"model_class": PlainModel})()
    with pytest.raises(ConfigError) as info:
        train(plain, cfg, tmp_path / "out", progress=False)
    message = str(info.value)
    assert message.startswith("model.pipeline_model_parallel_size=2: plugin 'binary_ranking': its model class "
                              "PlainModel has no set_input_tensor()"), message
    assert "model.pipeline_model_parallel_size=1" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_token_budget_splits_micro_batches_without_changing_the_steps(tmp_path: Path, monkeypatch) -> None:
    """Micro-batches cut by model.max_tokens_per_micro_batch are weighted by their samples: the same losses."""
    from rm_registry.engine import _contract
    from rm_registry.engine import trainer as trainer_mod

    shapes: list[tuple[int, int]] = []
    rewards_of = _contract.batch_rewards

    def spy(model, batch, max_tokens):
        if model.training:
            shapes.append(tuple(batch["tokens"].shape))
        return rewards_of(model, batch, max_tokens)

    monkeypatch.setattr(_contract, "batch_rewards", spy)
    runs, forwards = {}, {}
    for name, extra in (("whole", []), ("budget", ["model.max_tokens_per_micro_batch=300"])):
        plugin, cfg = _build(tmp_path, "trainer.rm.max_steps=3", "model.micro_batch_size=8", *extra)
        lines = (tmp_path / "train.jsonl").read_text().splitlines()  # lengths from about 40 to 90 tokens
        (tmp_path / "train.jsonl").write_text("".join(line.replace("Glad", "so " * (i % 17) + "Glad") + "\n"
                                                      for i, line in enumerate(lines)))
        shapes.clear()
        trainer_mod.train(plugin, cfg, tmp_path / name, progress=False)
        runs[name], forwards[name] = _records(tmp_path / name), list(shapes)
    assert forwards["whole"] == [(16, s) for _, s in forwards["whole"]] and len(forwards["whole"]) == 3
    # Micro-batches of different sizes within a step (3, 3, 2 pairs in step 1, so a wrong weighting
    # would show), each within the budget.
    assert all(n * s <= 300 for n, s in forwards["budget"])
    assert len({n for n, _ in forwards["budget"]}) > 1 and len(forwards["budget"]) > 3
    for a, b in zip(runs["whole"], runs["budget"]):
        assert (a["step"], a["split"]) == (b["step"], b["split"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)
        assert b["accuracy"] == pytest.approx(a["accuracy"])
