"""`rm-registry train / evaluate / score` as a user runs them: real subprocesses, real checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import TINY, prefs
from cli_helpers import run_cli as run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    train, val = prefs(d / "train.jsonl", 40), prefs(d / "val.jsonl", 12)
    out = d / "run"
    proc = run("train", "binary_ranking", "--data", str(train), "--validation-data", str(val),
               "--output", str(out), "--no-progress", *TINY)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("step_0000004")
    return {"dir": d, "run": out, "train": train, "val": val}


@pytest.mark.slow
def test_train_output_folder(trained: dict[str, Path]) -> None:
    run_dir = trained["run"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [
        (1, "train"), (2, "train"), (2, "validation"), (3, "train"), (4, "train"), (4, "validation")]
    assert all(isinstance(r["loss"], float) for r in lines)
    assert json.loads((run_dir / "data_stats.json").read_text())["train"]["kept"] == 40
    # It learns: the training loss falls, and so does the validation loss (same pairs at steps 2 and 4).
    train = [r for r in lines if r["split"] == "train"]
    validation = [r["loss"] for r in lines if r["split"] == "validation"]
    assert train[-1]["loss"] < 0.95 * train[0]["loss"], train
    assert validation[1] < validation[0], validation
    # The learning rate of each step is the linear warmup's, from the saved config (4 of 10 warmup steps).
    import math

    from omegaconf import OmegaConf

    optim = OmegaConf.load(run_dir / "config.yaml").model.optim
    warmup = optim.sched.warmup_steps
    assert warmup >= 4
    assert [r["lr"] for r in train] == pytest.approx([optim.lr * s / warmup for s in (1, 2, 3, 4)], rel=1e-9)
    for r in train:  # the norm before clipping: finite, positive, per step
        assert isinstance(r["grad_norm"], float) and math.isfinite(r["grad_norm"]) and 0 < r["grad_norm"] < 1e3, r
        assert 0 < r["tokens"] <= r["padded_tokens"], r
    assert len({r["grad_norm"] for r in train}) == 4


@pytest.mark.slow
def test_evaluate_json_from_run_folder_and_checkpoint_folder(trained: dict[str, Path]) -> None:
    proc = run("evaluate", "--checkpoint", str(trained["run"]), "--data", str(trained["val"]), "--json",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert {"accuracy", "loss", "chosen_reward_mean", "rejected_reward_mean"} <= set(metrics)
    assert metrics["num_pairs"] == 12
    one = trained["run"] / "checkpoints" / "step_0000004"
    again = run("evaluate", "--checkpoint", str(one), "--data", str(trained["val"]), "--json", "--no-progress")
    assert json.loads(again.stdout) == metrics
    # the validation line of the run's last step saw the same data and weights
    last_val = [json.loads(x) for x in (trained["run"] / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_val["accuracy"] == pytest.approx(metrics["accuracy"])
    assert last_val["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


@pytest.mark.slow
def test_score_writes_one_reward_per_line_in_order(trained: dict[str, Path]) -> None:
    d = trained["dir"]
    texts = d / "texts.jsonl"
    rows = [{"text": "Q1: what is 1+1? It is 2. Glad to help!"},
            {"prompt": "Q1: what is 1+1?", "response": " It is 3, go away."},
            {"text": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"text": "x" * 500}]  # longer than encoder_seq_length: cut to fit, reported
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "scores" / "scores.jsonl"
    proc = run("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(out),
               "--batch-size", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "1 of 4 texts were longer" in proc.stderr
    scores = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(scores) == 4 and all(isinstance(s["reward"], float) for s in scores)
    # The same texts one by one give the same rewards: order is kept through length sorting.
    from rm_registry.engine.api import load_reward_model

    rm = load_reward_model(trained["run"])
    # {"prompt", "response"} is joined exactly as training joins a prompt and a response.
    single = [rm.score([t])[0]["reward"] for t in
              ["Q1: what is 1+1? It is 2. Glad to help!", "Q1: what is 1+1? It is 3, go away."]]
    assert [s["reward"] for s in scores[:2]] == pytest.approx(single, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "file is empty"),
        ('{"text": "a"}\n{"text": \n', ":2: malformed JSON"),
        ('{"text": "a"}\n["not", "an", "object"]\n', ":2: expected a JSON object"),
        ('{"prompt": "a"}\n', ":1: expected a 'text' key, or 'prompt' and 'response'"),
        ('{"text": 3}\n', ":1: 'text' must be a string"),
    ],
)
def test_score_refuses_bad_input_with_exit_2(tmp_path: Path, content: str, fragment: str) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text(content)
    out = tmp_path / "out.jsonl"
    proc = run("score", "--checkpoint", str(tmp_path / "no-run"), "--data", str(data), "--output", str(out))
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and str(data) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_train_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bad = tmp_path / "alt.jsonl"
    bad.write_text('{"text": "chosen"}\n{"text": "rejected"}\n{"text": "lonely"}\n')
    cases = [
        (["train", "binary_ranking", "--data", str(bad)], "odd"),
        (["train", "binary_ranking", "--data", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
        (["train", "binary_ranking", "trainer.rm.max_stepz=3"], "trainer.rm.max_stepz"),
        (["train", "binary_ranking", "model.micro_batch_size=x"], "model.micro_batch_size"),
        (["train", "no_such_arch"], "no_such_arch"),
    ]
    for args, fragment in cases:
        proc = run(*args, "--output", str(out))
        assert proc.returncode == 2, (args, proc.stderr)
        assert fragment in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.exists(), args


def test_evaluate_missing_checkpoint_exit_2(tmp_path: Path) -> None:
    data = prefs(tmp_path / "v.jsonl", 2)
    proc = run("evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", str(data))
    assert proc.returncode == 2
    assert str(tmp_path / "nothing") in proc.stderr and "Traceback" not in proc.stderr


def test_help_answers() -> None:
    for cmd in ("train", "evaluate", "score"):
        proc = run(cmd, "--help")
        assert proc.returncode == 0 and re.search(r"examples?:", proc.stdout)


def test_info_config_prints_every_accepted_key_and_round_trips(tmp_path: Path) -> None:
    proc = run("info", "regression", "--config")
    assert proc.returncode == 0, proc.stderr
    assert "reward_model_type: regression" in proc.stdout and "loss_mask_val: -100" in proc.stdout
    # The printed tree is a valid --config file: every key in it is accepted.
    from rm_registry import get_reward_model
    from rm_registry.engine.config import build_config

    path = tmp_path / "regression.yaml"
    path.write_text(proc.stdout)
    cfg = build_config(get_reward_model("regression"), config_file=path)
    assert cfg.model.regression.loss_mask_val == -100


@pytest.mark.slow
def test_load_time_overrides_are_validated(trained: dict[str, Path]) -> None:
    base = ["evaluate", "--checkpoint", str(trained["run"]), "--data", str(trained["val"]), "--no-progress"]
    for override, fragment in [("model.micro_batch_size=0", "model.micro_batch_size=0"),
                               ("model.micro_batch_size=abc", "model.micro_batch_size"),
                               ("model.data.overlong_policy=bogus", "model.data.overlong_policy='bogus'"),
                               ("model.num_layers=3", "only model.tensor_model_parallel_size"),
                               ("model.binary_ranking.bogus=1", "model.binary_ranking.bogus")]:
        proc = run(*base, override)
        assert proc.returncode == 2, (override, proc.stderr)
        assert fragment in proc.stderr and "Traceback" not in proc.stderr, (override, proc.stderr)
    ok = run(*base, "--json", "model.micro_batch_size=3", "model.binary_ranking.center_rewards_coefficient=0.5")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_pairs"] == 12


@pytest.mark.slow
def test_unusable_output_paths_are_refused_before_work(trained: dict[str, Path], tmp_path: Path) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "hi"}\n')
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for output, fragment in [(tmp_path, "is a folder"), (a_file / "x.jsonl", "is a file")]:
        proc = run("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(output))
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for output, fragment in [(a_file, "is a file"), (a_file / "run", "is a file")]:
        proc = run("train", "binary_ranking", "--data", str(trained["train"]), "--output", str(output), *TINY)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert a_file.read_text() == "x"


@pytest.mark.slow
def test_diverging_training_is_one_line_exit_1(trained: dict[str, Path], tmp_path: Path) -> None:
    proc = run("train", "binary_ranking", "--data", str(trained["train"]), "--output", str(tmp_path / "nan"),
               "--no-progress", *TINY, "model.optim.lr=1e30", "trainer.rm.gradient_clip_val=0",
               "model.optim.sched.warmup_steps=0")
    assert proc.returncode == 1, proc.stderr
    assert "the training loss is" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_config_file_without_name_and_resume_of_a_run_without_checkpoint(trained: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  reward_model_type: binary_ranking\n")
    out = tmp_path / "run"
    # a run interrupted before its first checkpoint left its first files behind
    out.mkdir()
    (out / "config.yaml").write_text("model: {}\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 9.0}\n')
    proc = run("train", "--config", str(cfg), "--data", str(trained["train"]), "--test-data", str(trained["val"]),
               "--output", str(out), "--no-progress", *TINY, "trainer.rm.max_steps=2")
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run("train", "--config", str(cfg), "--data", str(trained["train"]), "--test-data", str(trained["val"]),
               "--output", str(out), "--resume", "--no-progress", *TINY, "trainer.rm.max_steps=2")
    assert proc.returncode == 0, proc.stderr
    assert "starting the run over" in proc.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(1, "train"), (2, "train"), (2, "test")]
    assert lines[0]["loss"] != 9.0 and lines[-1]["num_pairs"] == 12


@pytest.mark.slow
def test_huggingface_tokenizer_run_carries_its_tokenizer(trained: dict[str, Path], tmp_path: Path) -> None:
    """A run with a local tokenizer.json: evaluate and score need only the checkpoint folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [line for line in trained["train"].read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", "<pad>"]))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    out = tmp_path / "hf-run"
    proc = run("train", "binary_ranking", "--data", str(trained["train"]), "--validation-data", str(trained["val"]),
               "--output", str(out), "--no-progress", *TINY, "trainer.rm.max_steps=2",
               "model.tokenizer.library=huggingface", f"model.tokenizer.path={tok_dir / 'tokenizer.json'}")
    assert proc.returncode == 0, proc.stderr
    (tok_dir / "tokenizer.json").unlink()  # the checkpoint must not depend on the original file
    ev = run("evaluate", "--checkpoint", str(out), "--data", str(trained["val"]), "--json", "--no-progress")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["num_pairs"] == 12
    texts_in = tmp_path / "t.jsonl"
    texts_in.write_text('{"text": "Q1: what is 1+1? It is 2. Glad to help!"}\n')
    sc = run("score", "--checkpoint", str(out), "--data", str(texts_in), "--output", str(tmp_path / "s.jsonl"))
    assert sc.returncode == 0, sc.stderr
    assert isinstance(json.loads((tmp_path / "s.jsonl").read_text())["reward"], float)


@pytest.mark.slow
def test_python_api_score_policies(trained: dict[str, Path]) -> None:
    from rm_registry import ConfigError
    from rm_registry.engine.api import load_reward_model

    rm = load_reward_model(trained["run"])
    with pytest.raises(TypeError, match="list of texts"):
        rm.score("a single string")
    with pytest.warns(UserWarning, match="1 of 2 texts were longer"):
        assert len(rm.score(["short", "x" * 500])) == 2
    strict = load_reward_model(trained["run"], overrides=["model.data.overlong_policy=error"])
    with pytest.raises(ConfigError, match="text 1 .*overlong_policy=error"):
        strict.score(["short", "x" * 500])
