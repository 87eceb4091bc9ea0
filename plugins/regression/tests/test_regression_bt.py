"""NeMo-Aligner's loss_func variants on a regression head (HelpSteer2-Preference) and SteerLM names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rm_registry import ConfigError, DataError

M = -100.0
BT = ("model.regression.num_attributes=9", "model.micro_batch_size=2", "model.global_batch_size=2",
      "trainer.rm.train_random_sampler=false")


def _nll(d: float) -> float:
    return math.log1p(math.exp(-d))


def _rows(strengths: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two pairs: helpfulness (index 4) outputs A=1, B=3 then A=2.5, B=0 (reward differences 2 and
    2.5, so a rule applied to the batch instead of each pair gives another loss)."""
    rewards = torch.zeros(4, 9)
    rewards[:, 4] = torch.tensor([1.0, 3.0, 2.5, 0.0])
    labels = torch.full((4, 9), M)
    labels[:, 0] = torch.tensor([s for s in strengths for _ in (0, 1)])
    return rewards.requires_grad_(), labels


@pytest.mark.parametrize("loss_func, expected", [
    # pair 1: label +2 -> B chosen, d = 3 - 1 = 2, margin 2; pair 2: label -1 -> A chosen, d = 2.5 - 0, margin 1
    ("regular_bt", (_nll(2.0) + _nll(2.5)) / 2),
    ("margin_bt", (_nll(2.0 - 2) + _nll(2.5 - 1)) / 2),
    ("scaled_bt", (2 * _nll(2.0) + 1 * _nll(2.5)) / 2),
])
def test_bt_losses_by_hand(plugin, make_cfg, loss_func: str, expected: float) -> None:
    cfg = make_cfg(*BT, f"model.regression.loss_func={loss_func}")
    rewards, labels = _rows([2.0, -1.0])
    loss, metrics = plugin.loss(rewards, {"labels": labels}, cfg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["accuracy"] == 1.0
    loss.backward()
    assert rewards.grad[:, [0, 1, 2, 3, 5, 6, 7, 8]].abs().sum() == 0  # only the helpfulness output learns
    # each pair's own gradient: d loss / d chosen = -scale * sigmoid(-(d - shift)) / pairs
    scale, shift = {"regular_bt": ((1, 1), (0, 0)), "margin_bt": ((1, 1), (2, 1)),
                    "scaled_bt": ((2, 1), (0, 0))}[loss_func]
    chosen_grads = [rewards.grad[1, 4].item(), rewards.grad[2, 4].item()]  # B of pair 1, A of pair 2
    want = [-scale[i] * torch.sigmoid(torch.tensor(-(d - shift[i]))).item() / 2 for i, d in enumerate((2.0, 2.5))]
    assert chosen_grads == pytest.approx(want, rel=1e-5)


def test_bt_evaluation_metrics(plugin, make_cfg) -> None:
    cfg = make_cfg(*BT, "model.regression.loss_func=regular_bt")
    rewards, labels = _rows([-2.0, 0.0])  # pair 1: A chosen but B scores higher (wrong); pair 2: a tie
    metrics = plugin.evaluation_metrics([(rewards[:2].detach(), {"labels": labels[:2]}),
                                         (rewards[2:].detach(), {"labels": labels[2:]})], cfg)
    assert metrics["pairs"] == 2 and metrics["ties"] == 1
    assert metrics["accuracy"] == 0.0  # ties excluded
    assert metrics["loss"] == pytest.approx((_nll(1 - 3) + _nll(0 - 2.5)) / 2, rel=1e-5)  # a tie counts B as chosen


def test_bt_config_checks(make_cfg) -> None:
    # any batch size and a shuffled sampler are fine: a pair is one sample
    make_cfg("model.regression.num_attributes=9", "model.regression.loss_func=scaled_bt",
             "model.micro_batch_size=3", "model.global_batch_size=6")
    with pytest.raises(ConfigError, match="num_attributes=9"):
        make_cfg("model.regression.loss_func=scaled_bt", "model.micro_batch_size=2", "model.global_batch_size=2",
                 "trainer.rm.train_random_sampler=false")
    with pytest.raises(ConfigError, match="loss_func='mse'"):
        make_cfg("model.regression.loss_func=mse")


def test_bt_reward_is_the_helpfulness_output(plugin, make_cfg) -> None:
    cfg = make_cfg(*BT, "model.regression.loss_func=scaled_bt")
    assert plugin.settings(cfg).attribute_weights == (0, 0, 0, 0, 1, 0, 0, 0, 0)


def test_benchmarks_rank_by_the_weighted_reward_score_writes(plugin, make_cfg) -> None:
    import torch

    cfg = make_cfg(*BT, "model.regression.loss_func=scaled_bt")
    rewards = torch.randn(5, 9)
    scalar = plugin.scalar_rewards(rewards, cfg)
    assert scalar.shape == (5,)
    assert scalar.tolist() == pytest.approx([row["reward"] for row in plugin.score_outputs(rewards, cfg)], abs=1e-6)
    assert scalar.tolist() == pytest.approx(rewards[:, 4].tolist(), abs=1e-6)  # helpfulness only, for BT


def test_nine_attributes_are_steerlm_names(plugin, make_cfg) -> None:
    names = plugin.settings(make_cfg("model.regression.num_attributes=9")).attribute_names
    assert names == ("quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence",
                     "complexity", "verbosity")
    assert plugin.settings(make_cfg("model.regression.num_attributes=3")).attribute_names == ("attr_0", "attr_1", "attr_2")


def test_overlong_line_drops_its_whole_pair(plugin, make_cfg, tokenizer, tmp_path: Path) -> None:
    cfg = make_cfg(*BT, "model.regression.loss_func=regular_bt", "model.encoder_seq_length=16")
    texts = ["a", "b", "x" * 40, "c", "d", "e"]  # line 3 is too long: pair (3, 4) goes
    path = tmp_path / "pref.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": [1] + [M] * 8}) + "\n" for t in texts))
    ds = plugin.build_datasets({"train": path}, tokenizer, cfg)["train"]
    assert [(s.a.line, s.b.line) for s in ds.samples] == [(1, 2), (5, 6)]  # one sample per pair
    assert ds.stats.as_dict() == {"read": 3, "kept": 2, "truncated": 0, "dropped": 1}  # counted in pairs
    path.write_text("".join(json.dumps({"text": t, "label": [1] + [M] * 8}) + "\n" for t in texts[:5]))
    with pytest.raises(DataError, match="even number of lines"):
        plugin.build_datasets({"train": path}, tokenizer, cfg)


def _preference_file(path: Path, pairs: int, words: int = 3) -> Path:
    """``pairs`` A/B pairs on alternating lines, texts of different lengths (A short, B long:
    ``words`` to ``words + 4`` words more)."""
    rows = []
    for i in range(pairs):
        strength = [-2, 1, 3, -1][i % 4]
        rows.append({"text": f"q{i} short", "label": [strength] + [M] * 8})
        rows.append({"text": f"q{i} a much longer answer " + "word " * (i % 5 + words), "label": [strength] + [M] * 8})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_no_batching_rule_splits_a_pair(plugin, make_cfg, tokenizer, tmp_path: Path) -> None:
    # The budget fits one pair's rows but not two: before pairs were samples, it cut A from B.
    from rm_registry.engine.data._batching import StepSampler, micro_batches, sample_costs

    cfg = make_cfg(*BT, "model.regression.loss_func=regular_bt", "model.encoder_seq_length=64")
    ds = plugin.build_datasets({"train": _preference_file(tmp_path / "bt.jsonl", 12)}, tokenizer, cfg)["train"]
    costs = sample_costs(plugin, ds, tokenizer.pad_id)
    assert set(costs.sequences) == {2}  # every sample is two rows
    sampler = StepSampler(costs, 6, seed=3, shuffle=True, group_batches=2)
    for step in range(sampler.steps_per_epoch):
        for micro in micro_batches(sampler.batch(step), costs, dp=1, dp_rank=0, micro_batch_size=3,
                                   max_tokens=2 * max(costs.longest), sort=True):
            batch = plugin.collate([ds[i] for i in micro], tokenizer.pad_id)
            assert batch["tokens"].shape[0] == 2 * len(micro)
            lines = [line for i in micro for line in (ds[i].a.line, ds[i].b.line)]
            assert all(b == a + 1 and a % 2 == 1 for a, b in zip(lines[0::2], lines[1::2]))
            loss, metrics = plugin.loss(torch.zeros(batch["tokens"].shape[0], 9), batch, cfg)
            assert torch.isfinite(loss)


@pytest.mark.slow
def test_token_budget_with_bt_losses_trains(tmp_path: Path) -> None:
    # The report: this command ended in "ValueError: Bradley-Terry losses need A/B pairs: got 1 rows (odd)".
    import subprocess
    import sys

    data = _preference_file(tmp_path / "bt.jsonl", 8, words=26)  # B: 150-170 tokens, 2 x 150 > the budget of 256
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rm_registry", "train", "regression", "--data", str(data), "--output", str(out),
         "--no-progress", "model.regression.num_attributes=9", "model.micro_batch_size=2",
         "model.global_batch_size=2", "trainer.rm.train_random_sampler=false", "model.regression.loss_func=regular_bt",
         "model.max_tokens_per_micro_batch=256", "model.encoder_seq_length=256", "model.num_layers=2",
         "model.hidden_size=32", "model.num_attention_heads=2", "trainer.rm.max_steps=4",
         "trainer.rm.save_interval=4", "trainer.rm.val_check_interval=4"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["steps"] == 4
    assert json.loads((out / "data_stats.json").read_text())["train"] == {"read": 8, "kept": 8, "truncated": 0,
                                                                          "dropped": 0}
