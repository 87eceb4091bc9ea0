"""The shipped sample data, and the whole path a user takes: ``rm-registry train process_reward`` on
it learns well above the majority class; ``score`` writes one reward per step (TRL and placeholder
records alike); ``export`` writes a ``*ForTokenClassification`` folder whose probabilities in
transformers equal our step rewards; ``score`` and ``evaluate`` read that folder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_sample_data.py"
CLI = str(Path(sys.executable).with_name("rm-registry"))


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rm_process_reward_make_sample_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_files_equal_the_scripts_output(plugin, tmp_path) -> None:
    _script().make(tmp_path)
    for split, path in plugin.sample_data().items():
        assert path.read_bytes() == (tmp_path / f"{split}.jsonl").read_bytes(), (
            f"{path} is stale: run python {SCRIPT.relative_to(ROOT.parents[1])}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CLI, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prm") / "run"
    _run("train", "process_reward", "--output", str(out))
    return out


@pytest.mark.slow
def test_training_on_the_sample_data_learns(trained: Path) -> None:
    last = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("split") == "validation"][-1]
    assert last["step_accuracy"] > last["majority_step_accuracy"] + 0.25, last
    assert last["first_error_f1"] > 0.9 and last["last_step_accuracy"] > 0.9, last


@pytest.mark.slow
def test_score_export_and_the_hf_folder(trained: Path, tmp_path: Path, plugin) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    records = [json.loads(line) for line in plugin.sample_data()["validation"].read_text().splitlines()[:5]]
    tagged = {"input": "Get from the hall to the gate.\nwalk to the desk ки\nfly to the gate ки\n"}
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*records, tagged]), encoding="utf-8")
    _run("score", "--checkpoint", str(trained), "--data", str(data), "--output", str(tmp_path / "s.jsonl"),
         "--no-progress")
    scores = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [len(s["step_rewards"]) for s in scores] == [len(r["completions"]) for r in records] + [2]
    for s, r in zip(scores, records):
        assert s["reward"] == min(s["step_rewards"])
        assert [p >= 0.5 for p in s["step_rewards"]] == r["labels"]
    assert scores[-1]["step_rewards"][0] > 0.5 > scores[-1]["step_rewards"][1]  # "fly" is impossible

    hf = tmp_path / "hf"
    _run("export", "--checkpoint", str(trained), "--output", str(hf))
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForTokenClassification"] and config["id2label"] == {"0": "incorrect",
                                                                                               "1": "correct"}
    model = AutoModelForTokenClassification.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    for r, s in zip(records, scores):
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        positions = []
        for step in r["completions"]:
            ids += tok(step + "\n", add_special_tokens=False)["input_ids"]
            positions.append(len(ids) - 1)
        with torch.no_grad():
            p = model(torch.tensor([ids])).logits.softmax(-1)[0, positions, 1]
        assert torch.allclose(p, torch.tensor(s["step_rewards"]), atol=1e-4)

    _run("score", "--checkpoint", str(hf), "--data", str(data), "--output", str(tmp_path / "h.jsonl"), "--no-progress")
    again = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    for a, b in zip(again, scores):
        assert a["step_rewards"] == pytest.approx(b["step_rewards"], abs=1e-5)
    val = str(plugin.sample_data()["validation"])
    ours = json.loads(_run("evaluate", "--checkpoint", str(trained), "--data", val, "--json").stdout)
    theirs = json.loads(_run("evaluate", "--checkpoint", str(hf), "--data", val, "--json").stdout)
    assert theirs["step_accuracy"] == pytest.approx(ours["step_accuracy"], abs=1e-3)
    assert theirs["first_error_f1"] == pytest.approx(ours["first_error_f1"], abs=1e-2)


@pytest.mark.slow
def test_benchmark_ranks_responses_by_their_aggregate_step_reward(trained: Path, tmp_path: Path) -> None:
    """``evaluate --benchmark rewardbench`` on a PRM: each response's reward is what ``score`` writes
    for its steps (the prompt not a step), and a trained PRM prefers the response without a bad move."""
    rows = []
    for i, (a, b) in enumerate([("hall", "gate"), ("door", "roof"), ("yard", "shed"), ("pond", "wall")]):
        good = f"walk to the desk\nhop to the {b}\n"
        bad = f"walk to the desk\nswim to the {b}\n"
        rows.append({"id": i, "prompt": f"Get from the {a} to the {b}.", "chosen": good, "rejected": bad,
                     "subset": "math-prm"})
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "bench"
    _run("evaluate", "--benchmark", "rewardbench", "--data", str(data), "--checkpoint", str(trained),
         "--output", str(out), "--swap-sample", "0")
    results = json.loads((out / "results.json").read_text())
    assert "score_records" in results["model"]["scalar"]
    per = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]
    assert [e["correct"] for e in per] == [True] * 4, per
    texts = tmp_path / "texts.jsonl"  # the same responses through `score`, as the benchmark renders them
    records = [{"prompt": f"user: {r['prompt']}\nassistant: ", "text": f"user: {r['prompt']}\nassistant: {side}"}
               for r in rows for side in (r["chosen"], r["rejected"])]
    texts.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    _run("score", "--checkpoint", str(trained), "--data", str(texts), "--output", str(tmp_path / "s.jsonl"),
         "--no-progress")
    scores = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert all(len(s["step_rewards"]) == 2 for s in scores)
    for i, example in enumerate(per):
        assert example["rewards_chosen"] == pytest.approx([scores[2 * i]["reward"]], abs=1e-5), example
        assert example["rewards_rejected"] == pytest.approx([scores[2 * i + 1]["reward"]], abs=1e-5), example
