"""Reading preference data: the three formats, margins, every bad input, over-long pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from rm_registry import DataError
from rm_binary_ranking._data import PreferencePair, read_pairs


def _ids(tokenizer: Any, text: str) -> list[int]:
    return [*tokenizer.encode(text), tokenizer.eos_id]


def _build(plugin: Any, tokenizer: Any, cfg: Any, path: Path) -> Any:
    return plugin.build_datasets({"train": path}, tokenizer, cfg)["train"]


def test_alternating_text_lines(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    path = write_jsonl([{"text": "good 1"}, {"text": "bad 1"}, {"text": "good 2", "id": 7}, {"text": "bad 2"}])
    ds = _build(plugin, tokenizer, make_cfg(), path)
    assert list(ds.samples) == [
        PreferencePair(_ids(tokenizer, "good 1"), _ids(tokenizer, "bad 1"), None),
        PreferencePair(_ids(tokenizer, "good 2"), _ids(tokenizer, "bad 2"), None),
    ]
    assert ds.stats.as_dict() == {"read": 2, "kept": 2, "truncated": 0, "dropped": 0}
    assert ds.path == str(path)


def test_chosen_rejected_pairs_with_optional_margin(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    path = write_jsonl(
        [
            {"chosen": "yes", "rejected": "no", "margin": 2},
            {"chosen": "fine", "rejected": "bad"},
            {"chosen": "ok", "rejected": "ko", "margin": None, "source": "x"},
            {"chosen": "a", "rejected": "b", "margin": -0.5},
        ]
    )
    ds = _build(plugin, tokenizer, make_cfg(), path)
    assert [s.margin for s in ds] == [2.0, None, None, -0.5]
    assert isinstance(ds[0].margin, float)
    assert ds[0].chosen == _ids(tokenizer, "yes") and ds[0].rejected == _ids(tokenizer, "no")


def test_prompt_is_put_before_each_response(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    path = write_jsonl([{"prompt": "Q: 2+2?\nA: ", "chosen": "4", "rejected": "5", "margin": 1.5}])
    (pair,) = _build(plugin, tokenizer, make_cfg(), path)
    assert pair == PreferencePair(_ids(tokenizer, "Q: 2+2?\nA: 4"), _ids(tokenizer, "Q: 2+2?\nA: 5"), 1.5)


def test_chat_message_lists(write_jsonl) -> None:
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    path = write_jsonl(
        [
            {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "assistant", "content": "Go away."}]},
            {"prompt": "Say hi.", "chosen": [{"role": "assistant", "content": "Hi!"}], "rejected": "no"},
        ]
    )
    first, second = read_pairs(path)
    assert first.chosen == "system: Be kind.\nuser: Hi?\nassistant: Hello!"
    assert first.rejected == "system: Be kind.\nuser: Hi?\nassistant: Go away."
    assert second.chosen == "Say hi.\nassistant: Hi!"
    assert second.rejected == "Say hi.no"  # two strings are concatenated as they are (TRL)
    implicit = write_jsonl(
        [{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
          "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}],
        name="implicit.jsonl",
    )
    (pair,) = read_pairs(implicit)
    assert (pair.chosen, pair.rejected) == ("user: a\nassistant: b", "user: a\nassistant: c")


GOOD_PAIR = {"chosen": "c", "rejected": "r"}
GOOD_PROMPT_PAIR = {"prompt": "p", "chosen": "c", "rejected": "r"}

BAD_INPUTS: list[tuple[str, list[Any], int | None, str]] = [
    ("odd alternating", [{"text": "a"}, {"text": "b"}, {"text": "c"}], 3, "odd number of records"),
    ("odd alternating, one line", [{"text": "a"}], 1, "odd number of records"),
    ("text after pairs", [GOOD_PAIR, {"text": "t"}], 2, "detected from line 1"),
    ("pairs after text", [{"text": "t"}, GOOD_PAIR], 2, "detected from line 1"),
    ("no prompt in prompt file", [GOOD_PROMPT_PAIR, GOOD_PAIR], 2, "missing key 'prompt'"),
    ("prompt in pairs file", [GOOD_PAIR, GOOD_PROMPT_PAIR], 2, "use one format per file"),
    ("text and chosen", [{"text": "t", "chosen": "c", "rejected": "r"}], 1, "both 'text' and"),
    ("text and chosen later", [{"text": "t"}, {"text": "t", "chosen": "c"}], 2, "both 'text' and"),
    ("unknown keys", [{"question": "q", "answer": "a"}], 1, "cannot tell the preference format"),
    ("no text in alternating file", [{"text": "a"}, {"body": "b"}], 2, "missing key 'text'"),
    ("no pair keys in pairs file", [GOOD_PAIR, {"body": "b"}], 2, "missing keys 'chosen' and 'rejected'"),
    ("missing rejected", [GOOD_PAIR, {"chosen": "c"}], 2, "missing key 'rejected'"),
    ("missing chosen", [{"prompt": "p", "rejected": "r"}], 1, "missing key 'chosen'"),
    ("chosen not text", [GOOD_PAIR, {"chosen": 3, "rejected": "r"}], 2, "'chosen' must be a string"),
    ("prompt not text", [{"prompt": {"a": 1}, "chosen": "c", "rejected": "r"}], 1, "'prompt' must be a string"),
    ("text not text", [{"text": ["a"]}, {"text": "b"}], 1, "'text' must be a string"),
    ("message without content", [{"chosen": "c", "rejected": [{"role": "user"}]}], 1, "'rejected'[0]"),
    ("margin is a string", [GOOD_PAIR, {**GOOD_PAIR, "margin": "high"}], 2, "'margin' must be a number"),
    ("margin is a bool", [{**GOOD_PAIR, "margin": True}], 1, "'margin' must be a number"),
    ("margin is a list", [{**GOOD_PAIR, "margin": [1]}], 1, "'margin' must be a number"),
    ("margin is NaN", ['{"chosen": "c", "rejected": "r", "margin": NaN}'], 1, "'margin' must be finite"),
    ("margin in alternating", [{"text": "a", "margin": 1}, {"text": "b"}], 1, "'margin' is not supported"),
    ("malformed JSON", [GOOD_PAIR, '{"chosen": "c", '], 2, "malformed JSON"),
    ("not an object", [GOOD_PAIR, "[1, 2]"], 2, "expected a JSON object"),
    ("empty file", [], None, "empty"),
]


@pytest.mark.parametrize(("records", "line", "problem"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_line_and_problem(
    plugin, tokenizer, make_cfg, write_jsonl, records: list[Any], line: int | None, problem: str
) -> None:
    path = write_jsonl(records)
    with pytest.raises(DataError) as info:
        _build(plugin, tokenizer, make_cfg(), path)
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert problem in err.problem
    assert str(err).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")


def test_missing_file_is_a_data_error(plugin, tokenizer, make_cfg, tmp_path) -> None:
    with pytest.raises(DataError, match="no such file"):
        _build(plugin, tokenizer, make_cfg(), tmp_path / "nope.jsonl")


def test_negative_margin_refused_in_scale_mode(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    path = write_jsonl([GOOD_PAIR, {**GOOD_PAIR, "margin": -1}])
    assert len(_build(plugin, tokenizer, make_cfg(), path)) == 2  # fine when subtracted
    with pytest.raises(DataError) as info:
        _build(plugin, tokenizer, make_cfg("model.binary_ranking.margin_mode=scale"), path)
    assert info.value.line == 2 and "margin_mode=scale" in info.value.problem


# --- over-long pairs: model.encoder_seq_length=8 holds 7 bytes plus EOS -------------------------

OVERLONG = [
    {"chosen": "short", "rejected": "tiny"},  # fits
    {"chosen": "much too long", "rejected": "tiny"},  # chosen too long
    {"chosen": "short", "rejected": "far too long!"},  # rejected too long
    {"chosen": "1234567", "rejected": "7654321"},  # exactly 8 with EOS: fits
]


def test_overlong_drop_drops_the_whole_pair(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg("model.encoder_seq_length=8", "model.data.overlong_policy=drop")
    ds = _build(plugin, tokenizer, cfg, write_jsonl(OVERLONG))
    assert ds.stats.as_dict() == {"read": 4, "kept": 2, "truncated": 0, "dropped": 2}
    assert [s.chosen for s in ds] == [_ids(tokenizer, "short"), _ids(tokenizer, "1234567")]


def test_overlong_truncate_keeps_first_tokens_and_eos(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg("model.encoder_seq_length=8", "model.data.overlong_policy=truncate")
    ds = _build(plugin, tokenizer, cfg, write_jsonl(OVERLONG))
    assert ds.stats.as_dict() == {"read": 4, "kept": 4, "truncated": 2, "dropped": 0}
    assert ds[1].chosen == [*tokenizer.encode("much too long")[:7], tokenizer.eos_id]
    assert ds[1].rejected == _ids(tokenizer, "tiny")
    assert ds[2].rejected == [*tokenizer.encode("far too long!")[:7], tokenizer.eos_id]
    assert all(len(s.chosen) <= 8 and len(s.rejected) <= 8 for s in ds)


def test_overlong_error_names_the_line(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    cfg = make_cfg("model.encoder_seq_length=8", "model.data.overlong_policy=error")
    with pytest.raises(DataError) as info:
        _build(plugin, tokenizer, cfg, write_jsonl(OVERLONG))
    assert info.value.line == 2 and "model.encoder_seq_length=8" in info.value.problem
    # In the alternating format the offending line is the rejected text's own line.
    alternating = write_jsonl([{"text": "ok"}, {"text": "no"}, {"text": "ok"}, {"text": "far too long"}], "alt.jsonl")
    with pytest.raises(DataError) as info:
        _build(plugin, tokenizer, cfg, alternating)
    assert info.value.line == 4


def test_build_datasets_skips_absent_splits(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    train = write_jsonl([GOOD_PAIR], "train.jsonl")
    val = write_jsonl([GOOD_PAIR, GOOD_PAIR], "val.jsonl")
    out = plugin.build_datasets({"train": train, "validation": str(val), "test": None}, tokenizer, make_cfg())
    assert set(out) == {"train", "validation"}
    assert (len(out["train"]), len(out["validation"])) == (1, 2)
    assert out["validation"].stats.read == 2


def test_sample_data_reads_cleanly(plugin, tokenizer, make_cfg) -> None:
    paths = plugin.sample_data()
    assert set(paths) == {"train", "validation"}
    out = plugin.build_datasets(paths, tokenizer, make_cfg())
    for split, ds in out.items():
        assert ds.stats.dropped == 0 and ds.stats.truncated == 0, split
        assert ds.stats.kept == len(ds) == ds.stats.read
    assert 1000 <= len(out["train"]) <= 2000 and 150 <= len(out["validation"]) <= 300
