"""The engine's side of the plugin contract: metric reduction by name, the batch device rule,
score records, typed null defaults, fit_length keys and groups, plugin provenance, optional
members in the protocol check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import rm_registry
from rm_registry import ConfigError, DataError, TrainingError
from rm_registry.engine import _contract
from rm_registry.engine.trainer._metrics import MetricMeans
from rm_registry.engine.data import fit_group, fit_length
from rm_registry.engine.parallel import ParallelInfo


def _info(dp: int = 1, rank: int = 0) -> ParallelInfo:
    return ParallelInfo(rank=rank, world_size=dp, local_rank=rank, tp=1, pp=1, dp=dp, tp_rank=0, dp_rank=rank,
                        is_main=rank == 0, device=__import__("torch").device("cpu"), backend="gloo")


def test_metrics_are_weighted_means_by_name_and_totals_add_up() -> None:
    acc = MetricMeans("step 3")
    acc.add({"loss": 1.0, "acc": 0.5}, 3.0)
    acc.add({"acc": 1.0, "loss": 3.0}, 1.0)  # other order, same names
    acc.add({"loss": float("nan"), "acc": float("nan")}, 0.0)  # weight 0: checked, not counted
    means = acc.reduce(_info(), totals={"tokens": 12.0})
    assert list(means) == ["loss", "acc", "tokens"]
    assert means["loss"] == pytest.approx((3 * 1.0 + 3.0) / 4) and means["acc"] == pytest.approx((1.5 + 1.0) / 4)
    assert means["tokens"] == 12.0
    nothing = MetricMeans("step 4")
    nothing.add({"loss": 0.0}, 0.0)
    assert math.isnan(nothing.reduce(_info())["loss"])


def test_a_batch_with_other_metric_names_stops_training_naming_them() -> None:
    acc = MetricMeans("step 7")
    acc.add({"loss": 1.0, "accuracy": 0.5}, 1.0)
    with pytest.raises(TrainingError, match=r"step 7: .*only in the first: accuracy; only in the other: acc\b"):
        acc.add({"loss": 0.0, "acc": 0.0}, 1.0)


def test_every_batch_tensor_goes_to_the_device_and_metrics_get_what_they_read() -> None:
    import torch

    batch = {"tokens": torch.ones(3, 5, dtype=torch.long), "lengths": torch.tensor([5, 4, 2]),
             "list_sizes": torch.tensor([2, 1]), "labels": torch.zeros(2, 3), "note": "plain"}
    moved = _contract.batch_to(batch, "meta")
    assert all(v.device.type == "meta" for k, v in moved.items() if k != "note") and moved["note"] == "plain"

    class Plain:
        name = "plain"

    kept = _contract.evaluation_batch(Plain(), batch)
    assert set(kept) == {"lengths", "list_sizes", "labels", "note"}  # no tokens by default
    assert all(v.device.type == "cpu" for k, v in kept.items() if k != "note")
    assert kept["labels"] is batch["labels"]  # already on the CPU: not copied

    class Declares:
        name = "declares"
        evaluation_batch_keys = ("list_sizes",)

    assert set(_contract.evaluation_batch(Declares(), batch)) == {"list_sizes"}
    Declares.evaluation_batch_keys = ("margins",)
    with pytest.raises(rm_registry.PluginValidationError, match="'margins'"):
        _contract.evaluation_batch(Declares(), batch)


def test_score_records_default_keeps_todays_output_and_groups_the_rest() -> None:
    import torch

    class Plain:
        name = "plain"

        def score_outputs(self, rewards: Any, cfg: Any) -> list[dict[str, Any]]:
            return [{"reward": float(r)} for r in rewards[:, 0]]

    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    assert _contract.score_records(Plain(), rewards, [1, 1, 1], None) == [{"reward": 1.0}, {"reward": 2.0},
                                                                         {"reward": 3.0}]
    assert _contract.score_records(Plain(), rewards, [2, 1], None) == [
        {"responses": [{"reward": 1.0}, {"reward": 2.0}]}, {"reward": 3.0}]
    with pytest.raises(ValueError, match="do not add up"):
        _contract.score_records(Plain(), rewards, [2, 2], None)


def test_scalar_rewards_default_is_the_score_reward_and_a_plugins_own_is_checked() -> None:
    import torch

    from rm_registry import PluginValidationError

    class Plain:
        name = "plain"

        def score_outputs(self, rewards: Any, cfg: Any) -> list[dict[str, Any]]:
            return [{"reward": float(r.sum())} for r in rewards]

    rewards = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert _contract.scalar_rewards(Plain(), rewards, None).tolist() == [3.0, 2.0]

    class Own(Plain):
        def __init__(self, out: Any) -> None:
            self.out = out

        def scalar_rewards(self, rewards: Any, cfg: Any) -> Any:
            return self.out

    assert _contract.scalar_rewards(Own(torch.tensor([5.0, 6.0])), rewards, None).tolist() == [5.0, 6.0]
    with pytest.raises(PluginValidationError, match=r"must return a tensor \[N\].*got \(2, 1\)"):
        _contract.scalar_rewards(Own(torch.zeros(2, 1)), rewards, None)
    with pytest.raises(PluginValidationError, match="NaN or inf"):
        _contract.scalar_rewards(Own(torch.tensor([1.0, float("nan")])), rewards, None)


def test_default_score_texts_and_a_plugins_own(tmp_path: Path) -> None:
    assert _contract.score_texts(None, {"text": "a"}, path="f", line=1) == ["a"]
    assert _contract.score_texts(None, {"prompt": "Q ", "response": "A"}, path="f", line=2) == ["Q A"]
    with pytest.raises(DataError, match=r"f:3: expected a 'text' key"):
        _contract.score_texts(None, {"prompt": "Q"}, path="f", line=3)

    class Lists:
        name = "lists"

        def score_texts(self, record: Any, *, path: str, line: int) -> list[str]:
            return record["responses"]

    assert _contract.score_texts(Lists(), {"responses": ["x", "y"]}, path="f", line=1) == ["x", "y"]
    with pytest.raises(DataError, match="non-empty list of strings"):
        _contract.score_texts(Lists(), {"responses": []}, path="f", line=4)


def test_engine_null_defaults_are_typed() -> None:
    from rm_registry.engine.config import build_config

    plugin = rm_registry.get_reward_model("binary_ranking")
    assert build_config(plugin, overrides=["model.ffn_hidden_size=128"]).model.ffn_hidden_size == 128
    for override, want in (("model.ffn_hidden_size=abc", "whole number"), ("model.tokenizer.path=[1]", "string"),
                           ("trainer.rm.limit_val_batches=1.5", "whole number")):
        with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* expected a {want}"):
            build_config(plugin, overrides=[override])


def test_regression_stores_resolved_attribute_names_and_types_its_nulls() -> None:
    from rm_registry.engine.config import build_config, to_yaml

    plugin = rm_registry.get_reward_model("regression")
    cfg = build_config(plugin)
    assert list(cfg.model.regression.attribute_names) == ["helpfulness", "correctness", "coherence", "complexity",
                                                          "verbosity"]
    assert cfg.model.regression.num_attributes == 5 and "verbosity" in to_yaml(cfg)
    assert list(build_config(plugin, overrides=["model.regression.num_attributes=2"]).model.regression.attribute_names) \
        == ["attr_0", "attr_1"]
    with pytest.raises(ConfigError, match=r"model\.regression\.num_attributes='abc'.*whole number"):
        build_config(plugin, overrides=["model.regression.num_attributes=abc"])


def test_fit_length_names_the_sequence_and_fit_group_keeps_groups_whole() -> None:
    with pytest.raises(DataError, match=r"d\.jsonl:4: 'responses\[1\]' has 5 tokens, more than model\.encoder_seq_length=3"):
        fit_length([1, 2, 3, 4, 9], 3, "error", eos_id=9, path="d.jsonl", line=4, key="responses[1]")
    with pytest.raises(DataError, match=r"d\.jsonl:4: sequence has 5 tokens"):
        fit_length([1, 2, 3, 4, 9], 3, "error", eos_id=9, path="d.jsonl", line=4)
    seqs = [[1, 9], [1, 2, 3, 4, 9], [5, 9]]
    keys = ["responses[0]", "responses[1]", "responses[2]"]
    assert fit_group(seqs, keys, 3, "drop", eos_id=9, path="d", line=1) == (None, False)
    assert fit_group(seqs, keys, 3, "truncate", eos_id=9, path="d", line=1) == ([[1, 9], [1, 2, 9], [5, 9]], True)
    assert fit_group(seqs[:1], keys[:1], 3, "error", eos_id=9, path="d", line=1) == ([[1, 9]], False)
    with pytest.raises(DataError, match=r"'responses\[1\]' has 5 tokens"):
        fit_group(seqs, keys, 3, "error", eos_id=9, path="d", line=1)


def test_plugin_record_names_the_distribution() -> None:
    from rm_registry.engine.checkpoint._provenance import plugin_record

    record = plugin_record(rm_registry.get_reward_model("regression"))
    assert record["name"] == "regression" and record["distribution"] == "rm-regression" and record["version"]

    class Mine:
        name = "mine"

    assert plugin_record(Mine())["distribution"] is None  # a script's own class: nothing to install


def test_protocol_check_covers_the_optional_members_present(fake_plugin_cls: Any) -> None:
    from rm_registry._registry import optional_members, protocol_problems

    plain = fake_plugin_cls("plain_rm")
    assert optional_members(plain) == () and protocol_problems(plain) == []

    class Extended(fake_plugin_cls):  # type: ignore[misc, valid-type]
        evaluation_batch_keys = ("labels",)

        def metric_weight(self, batch: Any, cfg: Any) -> float:
            return 1.0

        def score_texts(self, record: Any, *, path: str, line: int) -> list[str]:
            return []

    assert optional_members(Extended("ext")) == ("evaluation_batch_keys", "metric_weight", "score_texts")
    assert protocol_problems(Extended("ext")) == []

    class Wrong(fake_plugin_cls):  # type: ignore[misc, valid-type]
        evaluation_batch_keys = "labels"

        def metric_weight(self, batch: Any) -> float:
            return 1.0

        def score_texts(self, record: Any) -> list[str]:
            return []

    problems = protocol_problems(Wrong("wrong"))
    assert any("'evaluation_batch_keys' must be a tuple of str" in p for p in problems)
    assert any(p.startswith("'metric_weight' cannot be called as metric_weight(batch, cfg)") for p in problems)
    assert any(p.startswith("'score_texts' cannot be called as score_texts(record, path, line)") for p in problems)


def test_evaluation_moves_every_batch_tensor_and_keeps_only_what_metrics_read(
        parallel_info: Any, build_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rm_registry.engine import _contract, evaluation
    from rm_registry.engine.config import build_config
    from rm_registry.engine.tokenizer import ByteTokenizer

    plugin = rm_registry.get_reward_model("binary_ranking")
    cfg = build_config(plugin, overrides=["model.micro_batch_size=3", "model.global_batch_size=3",
                                          "model.encoder_seq_length=32", "model.data.overlong_policy=truncate"])
    tok = ByteTokenizer()
    from rm_registry.engine.data import ListDataset

    dataset = plugin.build_datasets({"validation": plugin.sample_data()["validation"]}, tok, cfg)["validation"]
    dataset = ListDataset(dataset.samples[:7])
    moved: list[set[str]] = []
    real = _contract.batch_to

    def spy(batch: Any, device: Any) -> Any:
        if isinstance(device, torch.device):  # to the model's device; evaluation_batch's own move names "cpu"
            moved.append({k for k, v in batch.items() if isinstance(v, torch.Tensor)})
        return real(batch, device)

    seen: list[Any] = []
    original = type(plugin).evaluation_metrics

    def metrics(self: Any, outputs: Any, cfg: Any) -> Any:
        seen.extend(outputs)
        return original(self, outputs, cfg)

    monkeypatch.setattr(_contract, "batch_to", spy)
    monkeypatch.setattr(type(plugin), "evaluation_metrics", metrics)
    result = evaluation.evaluate_dataset(plugin, build_model(), dataset, cfg, tok, parallel_info)
    assert result["num_pairs"] == 7
    assert moved == [{"tokens", "lengths", "margin", "has_margin"}] * 3  # every tensor, every batch (3 + 3 + 1)
    assert [set(b) for _, b in seen] == [{"lengths", "margin", "has_margin"}] * 3  # no tokens kept or gathered
    assert all(v.device.type == "cpu" for _, b in seen for v in b.values())


class _WithoutScoreSequences:
    """The process_reward plugin minus score_sequences: batches with reward_positions and no way to score."""

    def __init__(self) -> None:
        from rm_process_reward import plugin

        self._plugin = plugin

    def __getattr__(self, name: str) -> Any:
        if name == "score_sequences":
            raise AttributeError(name)
        return getattr(self._plugin, name)


@pytest.mark.slow
def test_a_token_level_plugin_needs_score_sequences() -> None:
    from rm_registry.engine._conformance import check_behaviour

    with pytest.raises(AssertionError, match=r"collate\(\) gives 'reward_positions' but the plugin has no "
                                             r"score_sequences\(\)"):
        check_behaviour(_WithoutScoreSequences(), checkpoint=False, export=False)  # type: ignore[arg-type]


def test_score_sequences_output_is_checked() -> None:
    from rm_registry import PluginValidationError
    from rm_registry.engine import _contract

    class Bad:
        name = "bad"

        def score_sequences(self, record, tokenizer, cfg, *, path, line):
            return [([1, 2, 3], [3])]

    with pytest.raises(PluginValidationError, match=r"positions \[3\] for 3 token ids"):
        _contract.score_sequences(Bad(), {}, None, None, path="f", line=1)  # type: ignore[arg-type]
    assert _contract.score_sequences(object(), {}, None, None, path="f", line=1) is None  # type: ignore[arg-type]
