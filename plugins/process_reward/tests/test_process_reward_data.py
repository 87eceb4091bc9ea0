"""Reading and tokenizing step-labelled data: TRL's tokenization exactly, the placeholder format at the
same positions, labels of every accepted kind, truncation that never cuts a label, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rm_registry import DataError
from trl_reference import tokenize_row

RECORDS = [
    {"prompt": "Get from the hall to the gate.\n", "completions": ["walk to the desk", "fly to the roof", "step to the gate"],
     "labels": [True, False, False]},
    {"prompt": "one two", "completions": ["three"], "labels": [True]},
    {"prompt": "", "completions": ["walk to the hall", "walk to the gate"], "labels": [True, True]},
]


def _ours(plugin, tok, cfg, records, write_jsonl, split="train"):
    path = write_jsonl(records)
    return list(plugin.build_datasets({split: path}, tok, cfg)[split])


def _reference(features, fast, sep="\n", last_only=False, is_eval=False, max_prompt=None):
    row = tokenize_row(features, fast, sep, None, max_prompt, None, last_only, is_eval)
    positions = [i for i, y in enumerate(row["labels"]) if y != -100]
    return row["input_ids"], positions, [float(row["labels"][i]) for i in positions]


@pytest.mark.parametrize("sep", ["\n", " ки", "\n\n"])
def test_tokenization_equals_trls_prm_trainer(plugin, make_cfg, write_jsonl, bpe_folder, sep) -> None:
    from transformers import AutoTokenizer

    from rm_registry.engine.tokenizer import HFTokenizer

    fast = AutoTokenizer.from_pretrained(bpe_folder)
    assert fast.bos_token_id is not None
    ours_tok = HFTokenizer(bpe_folder, hf_rules=True)
    cfg = make_cfg("model.encoder_seq_length=256")
    cfg.model.process_reward.step_separator = sep
    samples = _ours(plugin, ours_tok, cfg, RECORDS, write_jsonl)
    for record, sample in zip(RECORDS, samples):
        assert (sample.ids, sample.positions, sample.labels) == _reference(record, fast, sep)


def test_train_on_last_step_only_as_trl_train_split_only(plugin, make_cfg, write_jsonl, bpe_folder) -> None:
    from transformers import AutoTokenizer

    from rm_registry.engine.tokenizer import HFTokenizer

    fast, tok = AutoTokenizer.from_pretrained(bpe_folder), HFTokenizer(bpe_folder, hf_rules=True)
    cfg = make_cfg("model.process_reward.train_on_last_step_only=true", "model.process_reward.max_prompt_length=3")
    path = write_jsonl(RECORDS)
    ds = plugin.build_datasets({"train": path, "validation": path}, tok, cfg)
    for record, train, val in zip(RECORDS, ds["train"], ds["validation"]):
        assert (train.ids, train.positions, train.labels) == _reference(record, fast, last_only=True, max_prompt=3)
        assert (val.ids, val.positions, val.labels) == _reference(record, fast, last_only=True, is_eval=True,
                                                                    max_prompt=3)
        assert len(train.positions) == 1 and len(val.positions) == len(record["labels"])


@pytest.mark.parametrize("use_bpe", [False, True])
def test_placeholder_and_trl_files_of_the_same_steps_give_the_same_positions(plugin, make_cfg, write_jsonl, tokenizer,
                                                                             bpe_folder, use_bpe) -> None:
    from rm_registry.engine.tokenizer import HFTokenizer

    tok = HFTokenizer(bpe_folder, hf_rules=True) if use_bpe else tokenizer
    cfg = make_cfg()
    cfg.model.process_reward.step_separator = " ки"
    steps = ["Get from the hall to the gate.\nwalk to the desk", "\nfly to the roof", "\nstep to the gate"]
    trl = [{"prompt": "", "completions": steps, "labels": [True, False, False]}]
    tagged = [{"input": " ки".join(steps) + " ки\n", "value": ["+", "-", "-"]}]
    a = _ours(plugin, tok, cfg, trl, write_jsonl)[0]
    b = _ours(plugin, tok, cfg, tagged, write_jsonl)[0]
    assert (a.ids, a.positions, a.labels) == (b.ids, b.positions, b.labels)
    assert len(a.positions) == 3 and a.positions[-1] == len(a.ids) - 1


def test_labels_of_every_kind_and_configurable_keys(plugin, make_cfg, write_jsonl, tokenizer) -> None:
    cfg = make_cfg("model.process_reward.input_key=q", "model.process_reward.label_key=steps",
                   "model.process_reward.positive_label=good", "model.process_reward.negative_label=bad")
    records = [{"q": "a ки b ки c ки", "steps": ["good", "bad", 0.25]},
               {"prompt": "p", "completions": ["x", "y"], "labels": [1, 0.0]},
               {"prompt": "p", "completions": ["x"], "labels": [False]}]
    labels = [s.labels for s in _ours(plugin, tokenizer, cfg, records, write_jsonl)]
    assert labels == [[1.0, 0.0, 0.25], [1.0, 0.0], [0.0]]


def test_chat_prompts_use_the_template_or_the_role_rendering(plugin, make_cfg, write_jsonl, tokenizer) -> None:
    cfg = make_cfg()
    record = {"prompt": [{"role": "user", "content": "Get to the gate."}], "completions": ["walk"], "labels": [True]}
    sample = _ours(plugin, tokenizer, cfg, [record], write_jsonl)[0]
    assert tokenizer.decode(sample.ids) == "user: Get to the gate.walk\n"


@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, r":1: 1 labels in 'labels' but 2 completions"),
    ({"input": "a ки b ки", "value": ["+"]}, r":1: 1 labels in 'value' but 2 step tags 'ки'"),
    ({"input": "a ки b", "value": ["+", "-"]}, r":1: 2 labels in 'value' but 1 step tags"),
    ({"prompt": "p", "completions": ["a"], "labels": ["yes"]}, r":1: labels\[0\] is 'yes'; a step label is true/false"),
    ({"prompt": "p", "completions": ["a"], "labels": [1.5]}, r":1: labels\[0\] is 1.5"),
    ({"prompt": "p", "completions": ["a", "  "], "labels": [True, True]}, r":1: completions\[1\] \(step 2\) has no text"),
    ({"input": "a ки ки", "value": ["+", "+"]}, r":1: step 2 of 'input' \(before step tag 2\) has no text"),
    ({"input": "no tags", "value": []}, r":1: 'input' holds no step tag"),
    ({"prompt": "p", "completions": ["a"]}, r":1: no 'labels'"),
    ({"chosen": "a", "rejected": "b"}, r":1: expected TRL's 'prompt'/'completions'/'labels'"),
])
def test_bad_records_are_refused_naming_file_and_line(plugin, make_cfg, write_jsonl, tokenizer, record, message) -> None:
    path = write_jsonl([record])
    with pytest.raises(DataError, match=f"{path.name}{message}"):
        plugin.build_datasets({"train": path}, tokenizer, make_cfg())


def test_over_long_samples_lose_whole_steps_never_a_label(plugin, make_cfg, write_jsonl, tokenizer) -> None:
    record = {"prompt": "P" * 10, "completions": ["a" * 9, "b" * 9, "c" * 9], "labels": [True, False, True]}
    # 10 + 3 * 10 = 40 tokens
    cut = _ours(plugin, tokenizer, make_cfg("model.encoder_seq_length=32", "model.data.overlong_policy=truncate"),
                [record], write_jsonl)[0]
    assert cut.truncated and cut.labels == [1.0, 0.0] and len(cut.ids) == 30
    assert [tokenizer.decode([cut.ids[p]]) for p in cut.positions] == ["\n", "\n"]
    tiny = _ours(plugin, tokenizer, make_cfg("model.encoder_seq_length=14", "model.data.overlong_policy=truncate"),
                 [record], write_jsonl)[0]
    assert tiny.labels == [1.0] and tokenizer.decode(tiny.ids) == "PPPP" + "a" * 9 + "\n"  # the prompt cut from the left
    path = write_jsonl([record, {"prompt": "", "completions": ["x" * 40], "labels": [True]}])
    ds = plugin.build_datasets({"train": path}, tokenizer, make_cfg("model.encoder_seq_length=14",
                                                                    "model.data.overlong_policy=truncate"))["train"]
    assert ds.stats.as_dict() == {"read": 2, "kept": 1, "truncated": 1, "dropped": 1}
    dropped = plugin.build_datasets({"train": path}, tokenizer, make_cfg("model.encoder_seq_length=32"))["train"]
    assert dropped.stats.as_dict() == {"read": 2, "kept": 0, "truncated": 0, "dropped": 2}
    with pytest.raises(DataError, match=f"{path.name}:1: the sample has 40 tokens \\(3 steps\\), more than "
                                        "model.encoder_seq_length=32"):
        plugin.build_datasets({"train": path}, tokenizer, make_cfg("model.encoder_seq_length=32",
                                                                   "model.data.overlong_policy=error"))


def test_collate_lays_out_positions_and_labels(plugin, make_cfg, write_jsonl, tokenizer) -> None:
    samples = _ours(plugin, tokenizer, make_cfg(), RECORDS, write_jsonl)
    batch = plugin.collate(samples, tokenizer.pad_id)
    assert batch["tokens"].shape == (3, max(len(s.ids) for s in samples))
    assert batch["reward_positions"].tolist() == [[r, p] for r, s in enumerate(samples) for p in s.positions]
    assert batch["step_labels"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    empty = plugin.collate([], tokenizer.pad_id)
    assert empty["tokens"].shape == (0, 0) and empty["reward_positions"].shape == (0, 2)


def test_cli_refuses_bad_data_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completions": ["a"], "labels": ["+", "-"]}) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    cli = Path(sys.executable).with_name("rm-registry")
    proc = subprocess.run([str(cli), "train", "process_reward", "--data", str(bad), "--output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"rm-registry: error: {bad}:1: 2 labels in 'labels' but 1 "
                                                    "completions; give one label a step")
    assert "Traceback" not in proc.stderr and not out.exists()
