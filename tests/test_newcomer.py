"""What a newcomer from TRL or NeMo trips over (issue 27): hints for TRL's names, `--output -`,
the launch message, one set of load-time keys in help / refusal / docs, `evaluate` without
`--data`, Hugging Face folders written by `train`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TINY, prefs, run_cli

REPO = Path(__file__).resolve().parents[1]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rm_registry._cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, hint", [
    (["--max_steps", "5"], "trainer.rm.max_steps=5"),
    (["--learning_rate=1e-5"], "model.optim.lr=1e-5"),
    (["--per_device_train_batch_size", "4"], "model.micro_batch_size=4"),
    (["--gradient_accumulation_steps", "4"], "model.global_batch_size=... here (model.global_batch_size = micro_batch_size x"),
    (["--bf16"], "trainer.precision=bf16-mixed"),
    (["--output_dir", "runs/x"], "--output runs/x"),
    (["--num_train_epochs", "3"], "trainer.rm.max_epochs=3"),
])
def test_trl_flags_get_our_name(capsys: pytest.CaptureFixture[str], args: list[str], hint: str) -> None:
    code, _, err = _main(capsys, "train", "binary_ranking", *args)
    assert code == 2 and hint in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("override, hint", [
    ("learning_rate=1e-5", "model.optim.lr=1e-05"), ("max_steps=5", "trainer.rm.max_steps=5"),
    ("max_length=512", "model.encoder_seq_length=512"), ("warmup_ratio=0.1", "model.optim.sched.warmup_steps=..."),
    ("weight_decay=0.1", "model.optim.weight_decay=0.1"), ("seed=3", None), ("bf16=true", "trainer.precision=bf16-mixed"),
])
def test_trl_keys_get_our_name(capsys: pytest.CaptureFixture[str], override: str, hint: str | None) -> None:
    code, _, err = _main(capsys, "train", "binary_ranking", "--output", "/nonexistent/x", override, "trainer.rm.max_steps=0")
    if hint is None:  # `seed` is our key too: accepted (the run then fails later for other reasons, not the key)
        assert "unknown config key" not in err
        return
    assert code == 2 and "unknown config key" in err and hint in err, err


def test_launch_says_what_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(capsys, "launch", "--nproc-per-node", "2", "export", "--checkpoint", "runs/rm1", "--output", "x")
    assert code == 2
    assert "export is not launched on several processes" in err and "rm-registry export --checkpoint runs/rm1" in err
    assert "launch runs train, evaluate, score, serve" in err
    code, _, err = _main(capsys, "launch", "--nproc-per-node", "2")
    assert code == 2 and "train|evaluate|score|serve" in err


def test_load_time_keys_are_the_same_in_help_refusal_and_docs(capsys: pytest.CaptureFixture[str]) -> None:
    from rm_registry.engine._load_keys import LOAD_OVERRIDES

    docs = (REPO / "docs" / "engine.md").read_text(encoding="utf-8")
    for command in ("evaluate", "score", "serve"):
        code, out, _ = _main(capsys, command, "--help")
        assert code == 0
        text = " ".join(out.split())
        missing = [k for k in LOAD_OVERRIDES if k not in text]
        assert not missing, f"{command} --help lacks {missing}"
    assert not [k for k in LOAD_OVERRIDES if f"`{k}`" not in docs]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run with validation data, trained with trainer.rm.save_hf=true."""
    d = tmp_path_factory.mktemp("newcomer")
    train, val = prefs(d / "train.jsonl", 16), prefs(d / "val.jsonl", 6)
    proc = run_cli("train", "binary_ranking", "--data", str(train), "--validation-data", str(val), "--output",
                   str(d / "rm"), "--no-progress", *TINY, "trainer.rm.save_hf=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": d, "rm": d / "rm", "val": val, "summary": json.loads(proc.stdout)}




@pytest.mark.slow
def test_train_writes_a_hugging_face_folder(run: dict[str, Any]) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    hf = run["rm"] / "hf"
    assert run["summary"]["hf_folder"] == str(hf)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    assert not list(run["rm"].glob(".hf.*"))  # no temporary folder left
    texts = ["User: what is 2+3?\nAssistant: It is 5. Glad to help!", "User: hi\nAssistant: go away."]
    d = run["dir"]
    (d / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc = run_cli("score", "--checkpoint", str(run["rm"]), "--data", str(d / "t.jsonl"), "--output", "-",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = [json.loads(x)["reward"] for x in proc.stdout.splitlines()]
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf).eval()
    with torch.no_grad():
        theirs = [float(model(**tok(t, return_tensors="pt")).logits[0, 0]) for t in texts]
    assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.slow
def test_score_output_dash_is_standard_output(run: dict[str, Any]) -> None:
    d = run["dir"]
    (d / "texts.jsonl").write_text("".join(json.dumps({"text": f"hello {i}"}) + "\n" for i in range(3)))
    proc = run_cli("score", "--checkpoint", str(run["rm"]), "--data", str(d / "texts.jsonl"), "--output", "-",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 3 and all(isinstance(x["reward"], float) for x in lines)
    assert "wrote 3 scores to standard output" in proc.stderr
    assert not (d / "-").exists() and not Path("-").exists()


@pytest.mark.slow
def test_evaluate_without_data_uses_the_runs_validation_split(run: dict[str, Any]) -> None:
    proc = run_cli("evaluate", "--checkpoint", str(run["rm"]), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"no --data: evaluating the run's validation data ({run['val']})" in proc.stderr
    with_data = run_cli("evaluate", "--checkpoint", str(run["rm"]), "--data", str(run["val"]), "--json", "--no-progress")
    assert json.loads(proc.stdout) == json.loads(with_data.stdout)
    assert json.loads(proc.stdout)["num_pairs"] == 6
    # an exported folder names no validation data
    refused = run_cli("evaluate", "--checkpoint", str(run["rm"] / "hf"), "--no-progress")
    assert refused.returncode == 2 and "is a Hugging Face folder; pass --data FILE" in refused.stderr


@pytest.mark.slow
def test_save_hf_refuses_a_layout_that_does_not_export_before_training(tmp_path: Path) -> None:
    proc = run_cli("train", "binary_ranking", "--output", str(tmp_path / "rm"), "--no-progress", *TINY,
                   "model.normalization=RMSNorm", "trainer.rm.save_hf=true")
    assert proc.returncode == 2
    assert re.search(r"trainer.rm.save_hf=true: no Hugging Face family represents this model", proc.stderr)
    assert not (tmp_path / "rm").exists()


@pytest.mark.slow
def test_launch_runs_serve(tmp_path: Path) -> None:
    """serve is launched like train: its own one-line error, then launch's summary."""
    proc = run_cli("launch", "--nproc-per-node", "1", "serve", "--checkpoint", str(tmp_path / "none"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{tmp_path / 'none'}: no such checkpoint or run folder" in proc.stderr
    assert "1 of the 1 process(es) per node failed" in proc.stderr and "Traceback" not in proc.stderr
