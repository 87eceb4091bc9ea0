"""Tests of the tutorial plugin: the conformance kit first, then what is specific to a hinge loss."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import rm_registry
from rm_hinge_ranking import HingeRankingPlugin, plugin
from rm_registry.testing import check_plugin, check_protocol

ROOT = Path(__file__).resolve().parents[1]


def test_protocol() -> None:
    check_protocol(plugin)


def test_conformance_kit() -> None:
    # Protocol, then behaviour on a tiny megatron-core model: build, forward, loss, backward,
    # learning on the sample data, evaluation, scoring and a checkpoint round trip.
    check_plugin(plugin)


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = "import sys, rm_hinge_ranking; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_installed_entry_point_resolves_to_this_plugin() -> None:
    try:
        dist = metadata.distribution("rm-hinge-ranking")
    except metadata.PackageNotFoundError:
        pytest.skip("rm-hinge-ranking is not installed (pip install -e examples/rm-hinge-ranking)")
    [ep] = [ep for ep in dist.entry_points if ep.group == rm_registry.ENTRY_POINT_GROUP]
    assert (ep.name, ep.value) == ("hinge_ranking", "rm_hinge_ranking:plugin")
    assert rm_registry.get_reward_model("hinge_ranking", distribution="rm-hinge-ranking") is plugin


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    from rm_registry.engine import build_config

    return build_config(plugin, overrides=["model.encoder_seq_length=64"])


def test_hinge_loss_by_hand(cfg) -> None:  # type: ignore[no-untyped-def]
    import torch

    # Two pairs, margin 1: pair 0 leads by 2 (satisfied, loss 0), pair 1 trails by 0.5 (loss 1.5).
    rewards = torch.tensor([[2.0], [0.5], [0.0], [1.0]], requires_grad=True)  # [2P, 1]: chosen, then rejected
    loss, metrics = plugin.loss(rewards, {}, cfg)
    assert loss.item() == pytest.approx(0.75)
    assert metrics == {"loss": 0.75, "accuracy": 0.5, "chosen_reward_mean": 1.25, "rejected_reward_mean": 0.5}
    loss.backward()
    # Only the violating pair gets a gradient: d/d r_chosen = -1/P, d/d r_rejected = +1/P.
    assert rewards.grad is not None
    assert rewards.grad[:, 0].tolist() == [0.0, -0.5, 0.0, 0.5]


def test_margin_is_read_from_config(cfg) -> None:  # type: ignore[no-untyped-def]
    import torch
    from rm_registry.engine import build_config

    wide = build_config(plugin, overrides=["model.hinge_ranking.margin=3.0"])
    rewards = torch.tensor([[2.0], [0.0]])
    assert plugin.loss(rewards, {}, cfg)[0].item() == 0.0
    assert plugin.loss(rewards, {}, wide)[0].item() == pytest.approx(1.0)


def test_empty_batch_gives_a_finite_zero_attached_to_the_graph(cfg) -> None:  # type: ignore[no-untyped-def]
    import torch

    rewards = torch.zeros(0, 1, requires_grad=True)
    loss, metrics = plugin.loss(rewards, {}, cfg)
    assert loss.item() == 0.0 and loss.requires_grad
    assert metrics == {"loss": 0.0, "accuracy": 0.0, "chosen_reward_mean": 0.0, "rejected_reward_mean": 0.0}
    assert plugin.evaluation_metrics([], cfg)["num_pairs"] == 0


def test_evaluation_metrics_weight_every_pair_equally(cfg) -> None:  # type: ignore[no-untyped-def]
    import torch

    batches = [torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [0.0], [1.0], [0.5]])]
    metrics = plugin.evaluation_metrics([(r, {}) for r in batches], cfg)
    # Pairs (2, 0), (0, 1), (0, 0.5): hinge losses 0, 2, 1.5.
    assert metrics["num_pairs"] == 3
    assert metrics["loss"] == pytest.approx(3.5 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    json.dumps(metrics)


def test_score_outputs(cfg) -> None:  # type: ignore[no-untyped-def]
    import torch

    assert plugin.score_outputs(torch.tensor([[0.25], [-1.0]]), cfg) == [{"reward": 0.25}, {"reward": -1.0}]


def test_collate_puts_chosen_rows_first() -> None:
    batch = plugin.collate([([1, 2, 3], [4]), ([5], [6, 7])], pad_id=0)
    assert batch["tokens"].tolist() == [[1, 2, 3], [5, 0, 0], [4, 0, 0], [6, 7, 0]]
    assert batch["lengths"].tolist() == [3, 1, 1, 2]


def test_build_datasets_reads_the_sample_data() -> None:
    from rm_registry.engine import build_config, load_tokenizer

    cfg = build_config(plugin)  # default encoder_seq_length (256) fits every sample pair
    tokenizer = load_tokenizer(cfg)
    datasets = plugin.build_datasets(plugin.sample_data(), tokenizer, cfg)
    assert set(datasets) == {"train", "validation"}
    train = datasets["train"]
    assert train.stats.read == 240  # type: ignore[attr-defined]
    assert (train.stats.kept, train.stats.dropped) == (240, 0)  # type: ignore[attr-defined]
    assert len(datasets["validation"]) == 48
    chosen, rejected = train[0]
    assert chosen[-1] == tokenizer.eos_id and rejected[-1] == tokenizer.eos_id
    assert tokenizer.decode(chosen[:-1]).startswith("User: How do I")


def test_overlong_pairs_follow_the_policy(tmp_path: Path) -> None:
    from rm_registry.engine import build_config, load_tokenizer

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"chosen": "short", "rejected": "x" * 50}) + "\n" + json.dumps({"chosen": "a", "rejected": "b"}) + "\n")
    for policy, kept, dropped, truncated in (("drop", 1, 1, 0), ("truncate", 2, 0, 1)):
        cfg = build_config(plugin, overrides=["model.encoder_seq_length=16", f"model.data.overlong_policy={policy}"])
        ds = plugin.build_datasets({"train": data}, load_tokenizer(cfg), cfg)["train"]
        assert (ds.stats.kept, ds.stats.dropped, ds.stats.truncated) == (kept, dropped, truncated)  # type: ignore[attr-defined]
    cfg = build_config(plugin, overrides=["model.encoder_seq_length=16", "model.data.overlong_policy=error"])
    with pytest.raises(rm_registry.DataError, match=r"pairs\.jsonl:1: .*encoder_seq_length=16"):
        plugin.build_datasets({"train": data}, load_tokenizer(cfg), cfg)


def test_missing_key_names_file_line_and_key(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    from rm_registry.engine import load_tokenizer

    data = tmp_path / "bad.jsonl"
    data.write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": "a", "reject": "b"}\n')
    with pytest.raises(rm_registry.DataError, match=r"bad\.jsonl:2: missing key 'rejected'.*found chosen, reject"):
        plugin.build_datasets({"train": data}, load_tokenizer(cfg), cfg)


@pytest.mark.parametrize("margin", ["0", "-1.5"])
def test_margin_must_be_positive(margin: str) -> None:
    from rm_registry.engine import build_config

    with pytest.raises(rm_registry.ConfigError, match=rf"model\.hinge_ranking\.margin={margin}"):
        build_config(plugin, overrides=[f"model.hinge_ranking.margin={margin}"])


def test_sample_data_is_what_the_generator_writes() -> None:
    script = ROOT / "scripts" / "make_sample_data.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr



def test_explicit_prompt_is_joined_as_scoring_joins_it(tmp_path) -> None:
    import json

    from omegaconf import OmegaConf

    from rm_hinge_ranking import plugin
    from rm_registry.engine.config import build_config
    from rm_registry.engine.data import encode_text
    from rm_registry.engine.tokenizer import ByteTokenizer

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Q: 2+2?", "chosen": " A: 4.", "rejected": " A: 5."}) + "\n")
    tok = ByteTokenizer()
    cfg = build_config(plugin)
    chosen, rejected = plugin.build_datasets({"train": data}, tok, cfg)["train"][0]
    assert chosen == encode_text(tok, "Q: 2+2? A: 4.") and rejected == encode_text(tok, "Q: 2+2? A: 5.")
    assert OmegaConf.select(cfg, "model.hinge_ranking.margin") is not None
