"""Byte and Hugging Face tokenizers, config loading, and saving into a checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rm_registry import ConfigError, Tokenizer
from rm_registry.engine.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    load_tokenizer,
    tokenizer_from_dir,
    tokenizer_to_dir,
)


def _word_level(folder: Path, *, specials: tuple[str, ...] = ("<unk>", "</s>", "<pad>"), config: dict | None = None) -> Path:
    from tokenizers import Tokenizer as HF
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["hello", "world", "reward", "model", "good", "bad"]
    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    tok = HF(WordLevel(vocab, unk_token="<unk>" if "<unk>" in vocab else None))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens([s for s in specials])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (258, 256, 257)
    ids = tok.encode("héllo ✓")
    assert all(0 <= i < 256 for i in ids) and len(ids) == len("héllo ✓".encode())
    assert tok.decode([*ids, tok.eos_id, tok.pad_id]) == "héllo ✓"
    assert tok.encode("") == []


def test_hf_tokenizer_from_folder_and_file(tmp_path: Path) -> None:
    folder = _word_level(tmp_path / "tok")
    for path in (folder, folder / "tokenizer.json"):
        tok = HFTokenizer(path)
        assert isinstance(tok, Tokenizer)
        assert tok.vocab_size == 9 and tok.eos_id == 1 and tok.pad_id == 2
        ids = tok.encode("hello reward model")
        assert ids == [3, 5, 6]
        assert tok.decode([*ids, tok.eos_id]) == "hello reward model"


def test_hf_specials_from_config_and_pad_fallback(tmp_path: Path) -> None:
    folder = _word_level(tmp_path / "tok", specials=("<unk>", "<end>", "<fill>"),
                         config={"eos_token": {"content": "<end>"}, "pad_token": "<fill>"})
    tok = HFTokenizer(folder)
    assert (tok.eos_token, tok.pad_token, tok.eos_id, tok.pad_id) == ("<end>", "<fill>", 1, 2)
    no_pad = HFTokenizer(_word_level(tmp_path / "np", specials=("<unk>", "<|endoftext|>")))
    assert no_pad.pad_id == no_pad.eos_id == 1


def test_hf_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.tokenizer.path='.*missing': no tokenizer.json"):
        HFTokenizer(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad.json: not a Hugging Face tokenizers file"):
        HFTokenizer(bad)
    with pytest.raises(ConfigError, match=r"no end-of-sequence token found"):
        HFTokenizer(_word_level(tmp_path / "noeos", specials=("<unk>",)))
    with pytest.raises(ConfigError, match=r"eos token '<nope>' is not in the vocabulary"):
        HFTokenizer(_word_level(tmp_path / "x"), eos_token="<nope>")


def test_load_tokenizer(tmp_path: Path, tiny_cfg) -> None:
    assert isinstance(load_tokenizer(tiny_cfg()), ByteTokenizer)
    folder = _word_level(tmp_path / "tok")
    tok = load_tokenizer(tiny_cfg(tokenizer={"library": "huggingface", "path": str(folder)}))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 9
    with pytest.raises(ConfigError, match=r"model.tokenizer.path is required"):
        load_tokenizer(tiny_cfg(tokenizer={"library": "huggingface", "path": None}))
    with pytest.raises(ConfigError, match=r"model.tokenizer.library='sentencepiece'"):
        load_tokenizer(tiny_cfg(tokenizer={"library": "sentencepiece", "path": None}))


def test_tokenizer_dir_round_trip(tmp_path: Path) -> None:
    byte = tokenizer_from_dir(tokenizer_to_dir(ByteTokenizer(), tmp_path / "b"))
    assert isinstance(byte, ByteTokenizer)
    hf = HFTokenizer(_word_level(tmp_path / "src", specials=("<unk>", "<end>", "<fill>"),
                                 config={"eos_token": "<end>", "pad_token": "<fill>"}))
    saved = tokenizer_to_dir(hf, tmp_path / "h")
    assert sorted(p.name for p in saved.iterdir()) == ["rm_registry_tokenizer.json", "tokenizer.json"]
    back = tokenizer_from_dir(saved)  # no tokenizer_config.json there: specials come from the meta file
    assert isinstance(back, HFTokenizer)
    assert (back.eos_id, back.pad_id, back.vocab_size) == (hf.eos_id, hf.pad_id, hf.vocab_size)
    assert back.encode("good bad world") == hf.encode("good bad world")
    with pytest.raises(ConfigError, match=r"rm_registry_tokenizer.json: missing"):
        tokenizer_from_dir(tmp_path / "nothing")


def test_unknown_tokenizer_cannot_be_saved(tmp_path: Path) -> None:
    class Other:
        vocab_size, eos_id, pad_id = 3, 1, 2

        def encode(self, text: str) -> list[int]:
            return []

        def decode(self, ids) -> str:
            return ""

    with pytest.raises(TypeError, match="only ByteTokenizer and HFTokenizer"):
        tokenizer_to_dir(Other(), tmp_path)
