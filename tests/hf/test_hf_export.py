"""Export: checkpoints of any plugin become Hugging Face *ForSequenceClassification folders that
transformers loads and that score exactly like `rm-registry score` (1e-4); import then export
gives back identical tensors; bad targets are refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from hf_models import FAMILIES

pytestmark = pytest.mark.slow  # trains tiny runs / full conformance checks (seconds each)

TEXTS = ["Hello there, how are you?", "x", "A third, longer text to score."]
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
TOL = 1e-4
TINY = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=128",
        "model.micro_batch_size=4", "model.global_batch_size=4", "trainer.rm.max_steps=2",
        "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``runs(name)``: a 2-step run of plugin ``name`` on its sample data (trained once per module)."""
    from rm_registry import get_reward_model
    from rm_registry.engine import build_config, train

    done: dict[str, Path] = {}

    def make(name: str, *extra: str) -> Path:
        key = " ".join((name, *extra))
        if key not in done:
            plugin = get_reward_model(name)
            sample = dict(plugin.sample_data())
            cfg = build_config(plugin, overrides=[*TINY, *extra], data_paths={"train": sample["train"]})
            out = tmp_path_factory.mktemp(name) / "run"
            train(plugin, cfg, out, progress=False)
            done[key] = out
        return done[key]

    return make


def _hf(folder: Path) -> tuple[Any, Any]:
    import transformers as tf

    return (tf.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval(),
            tf.AutoTokenizer.from_pretrained(folder))


def _scores(cli: Callable[..., tuple[int, str]], checkpoint: Path, tmp_path: Path) -> list[dict[str, Any]]:
    data = tmp_path / "texts.jsonl"
    rows = [{"text": t} for t in TEXTS] + [{"prompt": CHAT[:1], "response": CHAT[1:]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / f"scores-{checkpoint.name}.jsonl"
    code, err = cli("score", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), "--no-progress")
    assert code == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()]


def _transformers_logits(folder: Path) -> torch.Tensor:
    """The ordinary way: model(**tokenizer(texts, padding=True)) and apply_chat_template."""
    model, tok = _hf(folder)
    with torch.no_grad():
        plain = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
        chat = model(torch.tensor([tok.apply_chat_template(CHAT, tokenize=True, return_dict=False)])).logits
    return torch.cat([plain, chat])


def test_quickstart_byte_model_exports_and_scores_the_same(runs: Callable[..., Path], tmp_path: Path,
                                                           cli: Callable[..., tuple[int, str]]) -> None:
    """The default model (byte tokenizer, head with a bias) -> GPT-2 folder; transformers' logits
    equal `rm-registry score` of the checkpoint, and of the exported folder."""
    run = runs("binary_ranking")
    out = tmp_path / "exported"
    code, err = cli("export", "--checkpoint", str(run), "--output", str(out))
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert (config["problem_type"], config["id2label"], config["pad_token_id"]) == ("regression", {"0": "reward"}, 257)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "special_tokens_map.json"}
    ours = torch.tensor([r["reward"] for r in _scores(cli, run, tmp_path)])
    torch.testing.assert_close(_transformers_logits(out)[:, 0], ours, atol=TOL, rtol=0)
    again = torch.tensor([r["reward"] for r in _scores(cli, out, tmp_path)])
    torch.testing.assert_close(again, ours, atol=TOL, rtol=0)


def test_regression_exports_k_attributes_in_order(runs: Callable[..., Path], tmp_path: Path,
                                                  cli: Callable[..., tuple[int, str]]) -> None:
    run = runs("regression")
    out = tmp_path / "exported"
    assert cli("export", "--checkpoint", str(run), "--output", str(out))[0] == 0
    config = json.loads((out / "config.json").read_text())
    names = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert [config["id2label"][str(i)] for i in range(5)] == names and config["problem_type"] == "regression"
    scored = _scores(cli, run, tmp_path)
    ours = torch.tensor([[r["attributes"][n] for n in names] for r in scored])
    torch.testing.assert_close(_transformers_logits(out), ours, atol=TOL, rtol=0)
    assert [r["reward"] for r in _scores(cli, out, tmp_path)] == pytest.approx([r["reward"] for r in scored], abs=TOL)
    # Folders exported before load_rm_head_weights moved to the engine hold it in their regression section.
    config["rm_registry"]["model"]["regression"]["load_rm_head_weights"] = False
    (out / "config.json").write_text(json.dumps(config))
    assert [r["reward"] for r in _scores(cli, out, tmp_path)] == pytest.approx([r["reward"] for r in scored], abs=TOL)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_then_export_gives_identical_tensors(family: str, hf_folder: Callable[..., Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rm_registry.engine import load_reward_model
    from rm_registry.engine.hf import export_model

    folder = hf_folder(family)
    out = export_model(load_reward_model(folder), tmp_path / "out")
    before, after = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    config = json.loads((out / "config.json").read_text())
    original = json.loads((folder / "config.json").read_text())
    for key in ("vocab_size", "pad_token_id", "eos_token_id", "num_attention_heads", "num_key_value_heads", "head_dim"):
        if key in original:
            assert config[key] == original[key], key


def test_pretrained_run_exports_and_scores_the_same(hf_folder: Callable[..., Path], tmp_path: Path,
                                                    cli: Callable[..., tuple[int, str]]) -> None:
    """--pretrained (a Qwen3 base model, q/k norm), 2 steps, export: a bias-free head, the folder's
    tokenizer and chat template, transformers' logits equal `rm-registry score`."""
    folder = hf_folder("qwen3", seq_cls=False)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": CHAT[:1], "chosen": [{"role": "assistant", "content": f"yes {i}"}],
                                         "rejected": [{"role": "assistant", "content": "no"}]}) + "\n" for i in range(8)))
    run = tmp_path / "run"
    code, err = cli("train", "binary_ranking", "--pretrained", str(folder), "--data", str(prefs), "--output", str(run),
                    "--no-progress", "model.micro_batch_size=4", "model.global_batch_size=4", "trainer.rm.max_steps=2")
    assert code == 0, err
    out = tmp_path / "exported"
    assert cli("export", "--checkpoint", str(run), "--output", str(out))[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    ours = torch.tensor([r["reward"] for r in _scores(cli, run, tmp_path)])
    model, tok = _hf(out)
    with torch.no_grad():
        plain = [float(model(torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]])).logits[0, 0]) for t in TEXTS]
        chat = float(model(torch.tensor([tok.apply_chat_template(CHAT, tokenize=True, return_dict=False)])).logits[0, 0])
    torch.testing.assert_close(torch.tensor([*plain, chat]), ours, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pretrained_process_reward_run_exports_a_token_classifier(family: str, hf_folder: Callable[..., Path],
                                                                  tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """--pretrained (a base model, BOS where the family has one) for the token-level architecture,
    2 steps, export: *ForTokenClassification whose probability of `correct` at each step's last token
    (ids as TRL tokenizes) equals the step reward of `rm-registry score`; the folder scores the same."""
    import transformers as tf

    folder = hf_folder(family, seq_cls=False)
    steps = tmp_path / "steps.jsonl"
    steps.write_text("".join(json.dumps({"prompt": f"Question {i}?\n", "completions": ["step one", f"step {i}"],
                                         "labels": [True, i % 2 == 0]}) + "\n" for i in range(8)))
    run = tmp_path / "run"
    code, err = cli("train", "process_reward", "--pretrained", str(folder), "--data", str(steps), "--output", str(run),
                    "--no-progress", "model.micro_batch_size=4", "model.global_batch_size=4", "trainer.rm.max_steps=2")
    assert code == 0, err
    out = tmp_path / "exported"
    assert cli("export", "--checkpoint", str(run), "--output", str(out))[0] == 0
    config = json.loads((out / "config.json").read_text())
    arch = {"llama": "LlamaForTokenClassification", "gpt2": "GPT2ForTokenClassification"}[family]
    assert config["architectures"] == [arch] and config["id2label"] == {"0": "incorrect", "1": "correct"}
    scored = tmp_path / "scored.jsonl"
    assert cli("score", "--checkpoint", str(run), "--data", str(steps), "--output", str(scored), "--no-progress")[0] == 0
    ours = [json.loads(line)["step_rewards"] for line in scored.read_text().splitlines()]
    model = tf.AutoModelForTokenClassification.from_pretrained(out, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(out)
    for line, want in zip(steps.read_text().splitlines(), ours):
        row = json.loads(line)
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(row["prompt"], add_special_tokens=False)["input_ids"]
        positions = []
        for step in row["completions"]:
            ids += tok(step + "\n", add_special_tokens=False)["input_ids"]
            positions.append(len(ids) - 1)
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits.softmax(-1)[0, positions, 1]
        torch.testing.assert_close(probs, torch.tensor(want), atol=TOL, rtol=0)
    again = tmp_path / "again.jsonl"
    assert cli("score", "--checkpoint", str(out), "--data", str(steps), "--output", str(again), "--no-progress")[0] == 0
    for a, b in zip((json.loads(x)["step_rewards"] for x in again.read_text().splitlines()), ours):
        assert a == pytest.approx(b, abs=1e-5)


def test_bad_targets_and_unexportable_models_exit_2_with_nothing_written(
        runs: Callable[..., Path], tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    run = runs("binary_ranking")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, err = cli("export", "--checkpoint", str(run), "--output", str(busy))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not an empty folder" in err, err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    pooled = runs("binary_ranking", "model.use_avg_pool=true")
    code, err = cli("export", "--checkpoint", str(pooled), "--output", str(tmp_path / "avg"))
    assert code == 2 and "model.use_avg_pool=true" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "avg").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    rms = runs("binary_ranking", "model.normalization=RMSNorm", "model.position_embedding_type=rope")
    code, err = cli("export", "--checkpoint", str(rms), "--output", str(tmp_path / "rms"))
    assert code == 2 and "no Hugging Face family represents this model exactly" in err, err
    assert not (tmp_path / "rms").exists()
