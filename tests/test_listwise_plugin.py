"""The plugin contract beyond pairs, proven with a listwise plugin (Plackett-Luce, variable group
sizes) written against the docs only: ``tests/listwise/rm_plackett_luce.py``, installed as the fake
distribution ``rm-plackett-luce`` 0.3.0.

It goes through the conformance kit (which must also catch the mistakes such a plugin can make),
then the CLI in one process (train, check, evaluate, score with per-record output), a checkpoint
whose plugin is uninstalled or of another version, and short torchrun DP=2 and PP=2 runs whose losses
and validation metrics must equal the single process's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from cli_helpers import TINY, run_cli

import rm_registry
from rm_registry import ConfigError, DataError
from rm_registry.engine.parallel import _free_port
from rm_registry.testing import ConformanceError, check_plugin, fake_distribution

SOURCE = Path(__file__).parent / "listwise" / "rm_plackett_luce.py"
DIST, VERSION = "rm-plackett-luce", "0.3.0"


def _source_module() -> Any:
    spec = importlib.util.spec_from_file_location("_plackett_luce_source", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_site(root: Path, version: str = VERSION) -> Path:
    """A folder holding the installed-looking distribution (module, sample data, dist-info)."""
    site = root / f"site-{version}"
    fake_distribution(site, DIST, version, {"plackett_luce": "rm_plackett_luce:plugin"},
                      {"rm_plackett_luce/__init__.py": SOURCE.read_text(encoding="utf-8")})
    _source_module().make_sample_data(site / "rm_plackett_luce" / "data")
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("listwise"))


@pytest.fixture(scope="module")
def plugin(site: Path) -> Iterator[Any]:
    """The plugin as the registry hands it out (through its entry point)."""
    sys.path.insert(0, str(site))
    rm_registry.rescan()
    try:
        yield rm_registry.get_reward_model("plackett_luce")
    finally:
        sys.path.remove(str(site))
        rm_registry.rescan()


def env_with(*sites: Path, warnings: bool = False) -> dict[str, str]:
    env = {"PYTHONPATH": os.pathsep.join(str(s) for s in sites)}
    if warnings:
        env["PYTHONWARNINGS"] = "default"
    return env


# ------------------------------------------------------------------------------ conformance kit


def test_conformance_kit_passes_and_reports_the_optional_members(plugin: Any) -> None:
    report = check_plugin(plugin)
    assert set(report.optional_members) == {"evaluation_batch_keys", "metric_weight", "score_texts",
                                            "score_records", "config_types"}
    assert {"empty batch (finite loss, connected, same metric names)", "determinism", "config_types",
            "evaluation (empty set, batching does not change the metrics)"} <= set(report.checks)
    assert "Hugging Face export round trip" in report.checks and report.skipped == {}


def _variant(plugin: Any, **methods: Any) -> Any:
    """The plugin with some members replaced (each variant makes one mistake)."""
    cls = type("Broken", (type(plugin),), methods)
    return cls()


def _empty_batch_with_fewer_metrics(self: Any, rewards: Any, batch: Any, cfg: Any) -> Any:
    if batch["list_sizes"].numel() == 0:
        return rewards.sum() * 0.0, {"loss": 0.0}
    return type(self).__mro__[1].loss(self, rewards, batch, cfg)


def _metric_named_by_group_size(self: Any, rewards: Any, batch: Any, cfg: Any) -> Any:
    loss, metrics = type(self).__mro__[1].loss(self, rewards, batch, cfg)
    if batch["list_sizes"].numel():
        metrics[f"loss_k{int(batch['list_sizes'].max())}"] = metrics["loss"]
    return loss, metrics


def _mean_of_batch_means(self: Any, outputs: Any, cfg: Any) -> Any:
    parent = type(self).__mro__[1].evaluation_metrics
    parts = [parent(self, [o], cfg) for o in outputs]
    if not parts:
        return parent(self, [], cfg)
    return {"loss": sum(p["loss"] for p in parts) / len(parts), "top1_accuracy": None, "num_groups": 0}


@pytest.mark.slow
@pytest.mark.parametrize(("mistake", "members", "message"), [
    ("empty batch metrics", {"loss": _empty_batch_with_fewer_metrics}, "metric names differ on the empty batch"),
    ("per-batch means", {"evaluation_metrics": _mean_of_batch_means}, "weight every sample"),
    ("weight of the empty batch", {"metric_weight": lambda self, batch, cfg: 1.0}, "metric_weight() of the empty batch"),
    ("type of a missing key", {"config_types": lambda self: {"model.plackett_luce.topk": int}}, "not a config key"),
    ("names vary with group size", {"loss": _metric_named_by_group_size}, "metric names differ on a batch of"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_conformance_kit_catches_listwise_mistakes(plugin: Any, mistake: str, members: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ConformanceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_plugin(_variant(plugin, **members))


# ---------------------------------------------------------------------- contract, in one process


def test_typed_null_default_is_refused_naming_the_key(plugin: Any) -> None:
    from rm_registry.engine.config import build_config

    assert build_config(plugin, overrides=["model.plackett_luce.top_k=2"]).model.plackett_luce.top_k == 2
    with pytest.raises(ConfigError, match=r"model\.plackett_luce\.top_k='abc' \(command line\): expected a whole number"):
        build_config(plugin, overrides=["model.plackett_luce.top_k=abc"])


def test_overlong_response_is_named_and_groups_are_kept_or_dropped_whole(plugin: Any, tmp_path: Path) -> None:
    from rm_registry.engine.config import build_config
    from rm_registry.engine.tokenizer import ByteTokenizer

    data = tmp_path / "ranked.jsonl"
    data.write_text(json.dumps({"prompt": "Q: ", "responses": ["ok", "x" * 40, "no"]}) + "\n"
                    + json.dumps({"prompt": "Q: ", "responses": ["fine", "meh"]}) + "\n")
    tok = ByteTokenizer()
    for policy, kept, dropped, truncated in (("drop", 1, 1, 0), ("truncate", 2, 0, 1)):
        cfg = build_config(plugin, overrides=["model.encoder_seq_length=16", f"model.data.overlong_policy={policy}"])
        ds = plugin.build_datasets({"train": data}, tok, cfg)["train"]
        assert (ds.stats.kept, ds.stats.dropped, ds.stats.truncated) == (kept, dropped, truncated)
        assert [len(g) for g in ds.samples] == ([2] if policy == "drop" else [3, 2])
    cfg = build_config(plugin, overrides=["model.encoder_seq_length=16", "model.data.overlong_policy=error"])
    with pytest.raises(DataError, match=r"ranked\.jsonl:1: 'responses\[1\]' has 44 tokens"):
        plugin.build_datasets({"train": data}, tok, cfg)


# ----------------------------------------------------------------------------- CLI, one process


@pytest.fixture(scope="module")
def trained(site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny training run of the listwise plugin on its sample data, through the CLI."""
    d = tmp_path_factory.mktemp("listwise_run")
    proc = run_cli("train", "plackett_luce", "--output", str(d / "run"), "--no-progress", "seed=77", *TINY,
                   env=env_with(site))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": d, "run": d / "run", "proc": proc}


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_trains_with_metrics_weighted_by_group(trained: dict[str, Any]) -> None:
    lines = _metrics(trained["run"])
    train = [r for r in lines if r["split"] == "train"]
    validation = [r for r in lines if r["split"] == "validation"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in validation] == [2, 4]
    assert all({"loss", "top1_accuracy", "tokens", "padded_tokens"} <= set(r) for r in train)
    assert all(r["num_groups"] == 12 for r in validation)
    # top1_accuracy is a mean over groups: with 8 groups a step, a multiple of 1/8.
    assert all(abs(r["top1_accuracy"] * 8 - round(r["top1_accuracy"] * 8)) < 1e-9 for r in train)
    record = json.loads((trained["run"] / "checkpoints" / "step_0000004" / "plugin.json").read_text())
    assert record == {"name": "plackett_luce", "distribution": DIST, "version": VERSION, "module": "rm_plackett_luce"}


@pytest.mark.slow
def test_cli_check_evaluate_and_score_records(trained: dict[str, Any], site: Path, plugin: Any) -> None:
    env = env_with(site)
    check = run_cli("check", "plackett_luce", env=env)
    assert check.returncode == 0 and f"ok   plackett_luce ({DIST} {VERSION})" in check.stdout, check.stdout + check.stderr

    sample = site / "rm_plackett_luce" / "data" / "validation.jsonl"
    ev = run_cli("evaluate", "--checkpoint", str(trained["run"]), "--data", str(sample), "--json", "--no-progress",
                 env=env)
    assert ev.returncode == 0, ev.stderr
    last = [r for r in _metrics(trained["run"]) if r["split"] == "validation"][-1]
    metrics = json.loads(ev.stdout)
    assert metrics["num_groups"] == 12 and abs(metrics["loss"] - last["loss"]) < 1e-5

    # The plugin's own score input (a ranked list per line, any size) and per-record output.
    texts = trained["dir"] / "to_score.jsonl"
    texts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "User: tell me about owls\nAssistant: ", "responses": ["no", "Thanks for asking! Owls.", "owls? whatever."]},
        {"text": "User: hi\nAssistant: hello"},
        {"prompt": "User: tea?\nAssistant: ", "responses": ["Sure, about tea: it depends.", "no"]},
    ]))
    out = trained["dir"] / "scores.jsonl"
    sc = run_cli("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(out),
                 "--batch-size", "2", "--no-progress", env=env)
    assert sc.returncode == 0, sc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["rewards"]) for r in rows] == [3, 1, 2]
    for r in rows:
        assert sorted(r["ranking"]) == list(range(len(r["rewards"])))
        assert [r["rewards"][i] for i in r["ranking"]] == sorted(r["rewards"], reverse=True)

    # The Python API gives the same per-record outputs.
    from rm_registry.engine import load_reward_model

    api = load_reward_model(trained["run"]).score_records(
        [json.loads(line) for line in texts.read_text().splitlines()], batch_size=2)
    assert [r["ranking"] for r in api] == [r["ranking"] for r in rows]
    assert all(a == pytest.approx(b, abs=1e-5) for x, y in zip(api, rows) for a, b in zip(x["rewards"], y["rewards"]))

    bad = run_cli("score", "--checkpoint", str(trained["run"]), "--data", str(sample.with_name("nope.jsonl")),
                  "--output", str(trained["dir"] / "x.jsonl"), env=env)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr


@pytest.mark.slow
def test_checkpoint_names_the_distribution_to_install_and_warns_on_another_version(
        trained: dict[str, Any], tmp_path: Path) -> None:
    sample = trained["dir"] / "val.jsonl"
    sample.write_text(json.dumps({"prompt": "Q: ", "responses": ["a", "b"]}) + "\n")
    gone = run_cli("evaluate", "--checkpoint", str(trained["run"]), "--data", str(sample), env={"PYTHONPATH": ""})
    assert gone.returncode == 2, gone.stderr
    assert f"pip install {DIST}=={VERSION}" in gone.stderr and "Traceback" not in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1

    newer = make_site(tmp_path, "0.4.0")
    other = run_cli("evaluate", "--checkpoint", str(trained["run"]), "--data", str(sample), "--json",
                    env=env_with(newer, warnings=True))
    assert other.returncode == 0, other.stderr
    assert f"trained with {DIST} {VERSION}, but 0.4.0 is installed" in other.stderr

    typed = run_cli("train", "plackett_luce", "--output", str(tmp_path / "t"), "model.plackett_luce.top_k=abc",
                    env=env_with(newer))
    assert typed.returncode == 2 and "model.plackett_luce.top_k='abc'" in typed.stderr
    assert len(typed.stderr.strip().splitlines()) == 1 and not (tmp_path / "t").exists()


# --------------------------------------------------------------------------------- torchrun, DP=2



@pytest.mark.slow
@pytest.mark.parametrize("layout", [[], ["model.pipeline_model_parallel_size=2"]], ids=["dp2", "pp2"])
def test_torchrun_dp2_and_pp2_equal_one_process(trained: dict[str, Any], site: Path, layout: list[str]) -> None:
    """Two processes as data parallelism, then as two pipeline stages (lists of 2-4 sequences a
    sample through megatron's 1F1B schedule): the single process's steps either way."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = trained["dir"] / ("pp2" if layout else "dp2")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "rm_registry", "train", "plackett_luce", "--output", str(out),
         "--no-progress", "seed=77", *TINY, *layout],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, dp2 = _metrics(trained["run"]), _metrics(out)
    assert [(r["step"], r["split"]) for r in dp2] == [(r["step"], r["split"]) for r in single]
    for a, b in zip(dp2, single):
        for key in ("loss", "top1_accuracy", "num_groups", "tokens"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
