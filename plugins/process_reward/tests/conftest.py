"""Fixtures of the process_reward plugin tests: the real plugin, a tokenizer with a BOS token (as
TRL's tokenization handles it), plus rm_registry's shared plugin fixtures (``tokenizer``,
``make_cfg``, ``write_jsonl``: see rm_registry.testing.fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rm_registry.testing.fixtures import make_cfg, tokenizer, write_jsonl  # noqa: F401 (shared fixtures)


@pytest.fixture(scope="session")
def plugin() -> Any:
    from rm_process_reward import plugin

    return plugin


@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE tokenizer (with merges, so that tokenizing parts apart differs from
    tokenizing the whole) and a BOS token, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Get from the hall to the gate.", "walk to the desk", "fly to the roof", "step ки", "one two three"] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("bpe")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return folder
