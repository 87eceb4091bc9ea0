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
    """Two pairs: helpfulness (index 4) outputs A=1, B=3 then A=2, B=0."""
    rewards = torch.zeros(4, 9)
    rewards[:, 4] = torch.tensor([1.0, 3.0, 2.0, 0.0])
    labels = torch.full((4, 9), M)
    labels[:, 0] = torch.tensor([s for s in strengths for _ in (0, 1)])
    return rewards.requires_grad_(), labels


@pytest.mark.parametrize("loss_func, expected", [
    # pair 1: label +2 -> B chosen, d = 3 - 1 = 2; pair 2: label -1 -> A chosen, d = 2 - 0 = 2
    ("regular_bt", (_nll(2.0) + _nll(2.0)) / 2),
    ("margin_bt", (_nll(2.0 - 2) + _nll(2.0 - 1)) / 2),
    ("scaled_bt", (2 * _nll(2.0) + 1 * _nll(2.0)) / 2),
])
def test_bt_losses_by_hand(plugin, make_cfg, loss_func: str, expected: float) -> None:
    cfg = make_cfg(*BT, f"model.regression.loss_func={loss_func}")
    rewards, labels = _rows([2.0, -1.0])
    loss, metrics = plugin.loss(rewards, {"labels": labels}, cfg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["accuracy"] == 1.0
    loss.backward()
    assert rewards.grad[:, [0, 1, 2, 3, 5, 6, 7, 8]].abs().sum() == 0  # only the helpfulness output learns


def test_bt_evaluation_metrics(plugin, make_cfg) -> None:
    cfg = make_cfg(*BT, "model.regression.loss_func=regular_bt")
    rewards, labels = _rows([-2.0, 0.0])  # pair 1: A chosen but B scores higher (wrong); pair 2: a tie
    metrics = plugin.evaluation_metrics([(rewards[:2].detach(), {"labels": labels[:2]}),
                                         (rewards[2:].detach(), {"labels": labels[2:]})], cfg)
    assert metrics["pairs"] == 2 and metrics["ties"] == 1
    assert metrics["accuracy"] == 0.0  # ties excluded
    assert metrics["loss"] == pytest.approx((_nll(1 - 3) + _nll(0 - 2)) / 2, rel=1e-5)  # a tie counts B as chosen


def test_bt_config_checks(make_cfg) -> None:
    with pytest.raises(ConfigError, match="micro_batch_size=2"):
        make_cfg("model.regression.num_attributes=9", "model.regression.loss_func=scaled_bt",
                 "trainer.rm.train_random_sampler=false", "model.micro_batch_size=4", "model.global_batch_size=4")
    with pytest.raises(ConfigError, match="train_random_sampler=false"):
        make_cfg("model.regression.num_attributes=9", "model.regression.loss_func=scaled_bt",
                 "model.micro_batch_size=2", "model.global_batch_size=2")
    with pytest.raises(ConfigError, match="num_attributes=9"):
        make_cfg("model.regression.loss_func=scaled_bt", "model.micro_batch_size=2", "model.global_batch_size=2",
                 "trainer.rm.train_random_sampler=false")
    with pytest.raises(ConfigError, match="loss_func='mse'"):
        make_cfg("model.regression.loss_func=mse")


def test_bt_reward_is_the_helpfulness_output(plugin, make_cfg) -> None:
    cfg = make_cfg(*BT, "model.regression.loss_func=scaled_bt")
    assert plugin.settings(cfg).attribute_weights == (0, 0, 0, 0, 1, 0, 0, 0, 0)


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
    assert [s.line for s in ds.samples] == [1, 2, 5, 6]
    assert ds.stats.as_dict() == {"read": 6, "kept": 4, "truncated": 0, "dropped": 2}
    path.write_text("".join(json.dumps({"text": t, "label": [1] + [M] * 8}) + "\n" for t in texts[:5]))
    with pytest.raises(DataError, match="even number of lines"):
        plugin.build_datasets({"train": path}, tokenizer, cfg)
