"""Reading regression data: the three label formats, masking, over-long policy, bad input."""

from __future__ import annotations

import pytest

from rm_registry import DataError

M = -100.0  # the default model.regression.loss_mask_val
NAMES = "model.regression.attribute_names=[helpfulness,correctness,verbosity]"


@pytest.fixture()
def cfg(make_cfg):  # type: ignore[no-untyped-def]
    return make_cfg(NAMES)


def _read(plugin, tokenizer, cfg, path):  # type: ignore[no-untyped-def]
    return plugin.build_datasets({"train": path}, tokenizer, cfg)["train"]


def test_the_three_label_formats(plugin, tokenizer, cfg, write_jsonl) -> None:
    path = write_jsonl([
        {"text": "a", "label": [4, 3, 1]},                                    # NeMo-Aligner list
        {"text": "b", "label": "helpfulness:2,correctness:1,verbosity:0"},    # SteerLM string
        {"text": "c", "label": {"verbosity": 2.5, "helpfulness": 1, "correctness": 0}},  # object
        {"text": "d", "label": " correctness : 3 , helpfulness:4 "},          # any order, spaces
    ])
    ds = _read(plugin, tokenizer, cfg, path)
    assert [s.label for s in ds] == [(4, 3, 1), (2, 1, 0), (1, 0, 2.5), (4, 3, M)]
    assert [s.line for s in ds] == [1, 2, 3, 4]
    assert ds[0].ids == [*tokenizer.encode("a"), tokenizer.eos_id]
    assert ds.stats.as_dict() == {"read": 4, "kept": 4, "truncated": 0, "dropped": 0}


def test_missing_entries_are_masked(plugin, tokenizer, cfg, write_jsonl) -> None:
    path = write_jsonl([
        {"text": "a", "label": [4, -100, None]},           # -100 and null in a list
        {"text": "b", "label": "verbosity:1"},             # names absent from a string
        {"text": "c", "label": {"correctness": None}},     # absent and null in an object
        {"text": "d", "label": ""},                        # nothing labelled
    ])
    ds = _read(plugin, tokenizer, cfg, path)
    assert [s.label for s in ds] == [(4, M, M), (M, M, 1), (M, M, M), (M, M, M)]


def test_a_custom_mask_value(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg(NAMES, "model.regression.loss_mask_val=-1")
    path = write_jsonl([{"text": "a", "label": [4, -1, 0]}, {"text": "b", "label": "helpfulness:3"}])
    ds = _read(plugin, tokenizer, cfg, path)
    assert [s.label for s in ds] == [(4, -1, 0), (3, -1, -1)]


def test_chat_message_text(plugin, tokenizer, cfg, write_jsonl) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ds = _read(plugin, tokenizer, cfg, write_jsonl([{"text": messages, "label": [1, 2, 3]}]))
    assert ds[0].ids == [*tokenizer.encode("user: hi\nassistant: hello"), tokenizer.eos_id]


def test_every_split_is_read(plugin, tokenizer, cfg, write_jsonl) -> None:
    train = write_jsonl([{"text": "a", "label": [1, 2, 3]}], "train.jsonl")
    val = write_jsonl([{"text": "b", "label": [1, 2, 3]}] * 2, "val.jsonl")
    out = plugin.build_datasets({"train": train, "validation": val, "test": None}, tokenizer, cfg)
    assert set(out) == {"train", "validation"} and len(out["validation"]) == 2


BAD = [
    ({"text": "x", "label": [1, 2]}, "label has 2 values but there are 3 attributes (helpfulness, correctness, verbosity)"),
    ({"text": "x", "label": [1, 2, 3, 4]}, "label has 4 values"),
    ({"text": "x", "label": [1, "two", 3]}, "label value 'two' for attribute 'correctness' is a string"),
    ({"text": "x", "label": [1, True, 3]}, "label value True for attribute 'correctness' is not a finite number"),
    ({"text": "x", "label": [1, [2], 3]}, "label value [2] for attribute 'correctness'"),
    ({"text": "x", "label": "helpfulness:4,humor:2"}, "unknown attribute 'humor' in label (known attributes: helpfulness"),
    ({"text": "x", "label": "helpfulness:good"}, "label value 'good' for attribute 'helpfulness' is not a finite number"),
    ({"text": "x", "label": "verbosity:nan"}, "label value 'nan' for attribute 'verbosity' is not a finite number"),
    ({"text": "x", "label": "helpfulness 4"}, "label entry 'helpfulness 4' is not of the form 'name:value'"),
    ({"text": "x", "label": "helpfulness:4,,verbosity:1"}, "has an empty entry"),
    ({"text": "x", "label": "helpfulness:4,helpfulness:3"}, "attribute 'helpfulness' appears twice"),
    ({"text": "x", "label": {"quality": 4}}, "unknown attribute 'quality' in label"),
    ({"text": "x", "label": {"verbosity": "4"}}, "label value '4' for attribute 'verbosity' is a string"),
    ({"text": "x", "label": 4}, "'label' must be a list of 3 numbers, a 'name:value,...' string or an object"),
    ({"label": [1, 2, 3]}, "missing key 'text'"),
    ({"text": "x"}, "missing key 'label'"),
    ({"text": 5, "label": [1, 2, 3]}, "'text' must be a string or a list of chat messages"),
    ("[1, 2, 3]", "expected a JSON object"),
    ("{not json", "malformed JSON"),
]


@pytest.mark.parametrize(("record", "problem"), BAD)
def test_bad_input_names_file_line_and_problem(plugin, tokenizer, cfg, write_jsonl, record, problem) -> None:
    path = write_jsonl([{"text": "fine", "label": [1, 2, 3]}, record])
    with pytest.raises(DataError) as info:
        _read(plugin, tokenizer, cfg, path)
    err = info.value
    assert (err.path, err.line) == (str(path), 2)
    assert problem in err.problem
    assert str(err).startswith(f"{path}:2: ")


def test_empty_and_missing_files(plugin, tokenizer, cfg, write_jsonl, tmp_path) -> None:
    with pytest.raises(DataError, match="file is empty"):
        _read(plugin, tokenizer, cfg, write_jsonl([]))
    with pytest.raises(DataError, match="no such file"):
        _read(plugin, tokenizer, cfg, tmp_path / "nope.jsonl")


def test_labels_are_checked_on_lines_the_length_policy_drops(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg(NAMES, "model.encoder_seq_length=8")
    path = write_jsonl([{"text": "short", "label": [1, 2, 3]}, {"text": "much too long here", "label": [1, 2]}])
    with pytest.raises(DataError, match=r":2: label has 2 values"):
        _read(plugin, tokenizer, cfg, path)


@pytest.mark.parametrize(
    ("policy", "kept", "truncated", "dropped"), [("drop", 1, 0, 2), ("truncate", 3, 2, 0)]
)
def test_overlong_policy_counts(plugin, tokenizer, make_cfg, write_jsonl, policy, kept, truncated, dropped) -> None:
    cfg = make_cfg(NAMES, "model.encoder_seq_length=8", f"model.data.overlong_policy={policy}")
    path = write_jsonl([
        {"text": "short", "label": [1, 2, 3]},
        {"text": "much too long here", "label": [1, 2, 3]},
        {"text": "also far too long", "label": [1, 2, 3]},
    ])
    ds = _read(plugin, tokenizer, cfg, path)
    assert ds.stats.as_dict() == {"read": 3, "kept": kept, "truncated": truncated, "dropped": dropped}
    assert all(len(s.ids) <= 8 and s.ids[-1] == tokenizer.eos_id for s in ds)


def test_overlong_policy_error_names_the_line(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg(NAMES, "model.encoder_seq_length=8", "model.data.overlong_policy=error")
    path = write_jsonl([{"text": "short", "label": [1, 2, 3]}, {"text": "much too long here", "label": [1, 2, 3]}])
    with pytest.raises(DataError, match=r":2: sequence has 19 tokens, more than model.encoder_seq_length=8"):
        _read(plugin, tokenizer, cfg, path)


def test_everything_dropped_is_an_error(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg(NAMES, "model.encoder_seq_length=4")
    with pytest.raises(DataError, match="no sample left"):
        _read(plugin, tokenizer, cfg, write_jsonl([{"text": "too long", "label": [1, 2, 3]}]))


def test_collate_pads_to_the_longest_and_stacks_labels(plugin, tokenizer, cfg, write_jsonl) -> None:
    import torch

    path = write_jsonl([{"text": "abc", "label": [1, 2, 3]}, {"text": "a", "label": "verbosity:4"}])
    ds = _read(plugin, tokenizer, cfg, path)
    batch = plugin.collate([ds[0], ds[1]], tokenizer.pad_id)
    assert batch["tokens"].shape == (2, 4) and batch["tokens"].dtype == torch.long
    assert batch["lengths"].tolist() == [4, 2]
    assert batch["tokens"][1, 2:].tolist() == [tokenizer.pad_id] * 2
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 2, 3], [M, M, 4]]
