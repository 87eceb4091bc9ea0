"""With a real Hugging Face ``tokenizer.json``, every encoded sequence ends with that tokenizer's EOS.

The reward is read at the last real token, which must be EOS: in every data format of every
shipped architecture (binary_ranking, regression, the hinge example), after truncation, and when
scoring (``LoadedRewardModel.encode`` and ``score_file``, from a checkpoint that carries the
tokenizer). Expected ids come from the ``tokenizers`` library directly, not from our wrapper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rm_registry import get_reward_model

#: Special tokens first; EOS is neither the first nor the last id, and unlike the byte tokenizer's 256.
SPECIALS = ["<unk>", "<pad>", "</s>", "<mask>"]
EOS = 2
CHAT_PROMPT = [{"role": "user", "content": "What is 2+2?"}]
CHAT_REPLY = [{"role": "assistant", "content": "It is 4."}]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE ``tokenizer.json`` trained here (no download), and its folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Q{i}: what is {i}+{i % 3}? It is {i + i % 3}. Glad to help, go away." for i in range(50)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("hf_tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def _ids(tokenizer_json: Path, text: str) -> list[int]:
    """What the tokenizer itself gives for ``text`` (no special tokens), then EOS."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    assert EOS not in ids
    return [*ids, EOS]


def _cfg(name: str, tokenizer_json: Path, *overrides: str) -> Any:
    from rm_registry.engine.config import build_config

    return build_config(get_reward_model(name), overrides=[
        "model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=64",
        "model.micro_batch_size=2", "model.global_batch_size=2", "model.tokenizer.library=huggingface",
        f"model.tokenizer.path={tokenizer_json}", *overrides])


def _load(name: str, tokenizer_json: Path, path: Path, *overrides: str) -> list[Any]:
    from rm_registry.engine.tokenizer import load_tokenizer

    cfg = _cfg(name, tokenizer_json, *overrides)
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.eos_id == EOS
    return list(get_reward_model(name).build_datasets({"train": path}, tokenizer, cfg)["train"])


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_binary_ranking_formats_end_with_eos(hf_tokenizer: Path, tmp_path: Path) -> None:
    from rm_binary_ranking._data import PreferencePair

    files = {
        "alternating": ([{"text": "Q1: what is 1+1? It is 2."}, {"text": "Q1: what is 1+1? It is 3."}],
                        ("Q1: what is 1+1? It is 2.", "Q1: what is 1+1? It is 3.")),
        "pairs": ([{"chosen": "Q2: It is 4.", "rejected": "Q2: go away", "margin": 1.5}],
                  ("Q2: It is 4.", "Q2: go away")),
        "prompt_pairs": ([{"prompt": "Q3: what is 3+0?", "chosen": " It is 3.", "rejected": " It is 5."}],
                         ("Q3: what is 3+0? It is 3.", "Q3: what is 3+0? It is 5.")),
    }
    for fmt, (records, (chosen, rejected)) in files.items():
        [pair] = _load("binary_ranking", hf_tokenizer, _write(tmp_path / f"{fmt}.jsonl", records))
        assert isinstance(pair, PreferencePair)
        assert pair.chosen == _ids(hf_tokenizer, chosen), fmt
        assert pair.rejected == _ids(hf_tokenizer, rejected), fmt
    # Chat message lists: the rendering is the engine's business; the sequence still ends with EOS, once.
    chats = {"prompt_pairs": {"prompt": CHAT_PROMPT, "chosen": CHAT_REPLY, "rejected": CHAT_REPLY},
             "pairs": {"chosen": CHAT_PROMPT + CHAT_REPLY, "rejected": CHAT_PROMPT},
             "alternating": {"text": CHAT_PROMPT + CHAT_REPLY}}
    for fmt, record in chats.items():
        copies = 2 if fmt == "alternating" else 1
        [pair] = _load("binary_ranking", hf_tokenizer, _write(tmp_path / f"chat_{fmt}.jsonl", [record] * copies))
        for ids in (pair.chosen, pair.rejected):
            assert ids[-1] == EOS and EOS not in ids[:-1] and len(ids) > 3, fmt


def test_truncated_sequences_end_with_eos(hf_tokenizer: Path, tmp_path: Path) -> None:
    long = "Q4: what is 4+1? It is 5. " * 40
    data = _write(tmp_path / "long.jsonl", [{"chosen": long, "rejected": "Q4: go away"}])
    [pair] = _load("binary_ranking", hf_tokenizer, data, "model.data.overlong_policy=truncate")
    assert len(pair.chosen) == 64 and pair.chosen == [*_ids(hf_tokenizer, long)[:63], EOS]
    assert pair.rejected == _ids(hf_tokenizer, "Q4: go away")


def test_regression_formats_end_with_eos(hf_tokenizer: Path, tmp_path: Path) -> None:
    records = [{"text": "Q5: It is 5.", "label": [4, 3, 2, 1, 0]},
               {"text": "Q6: go away", "label": "helpfulness:1,verbosity:3"},
               {"text": "Q7: It is 9.", "label": {"coherence": 2}},
               {"text": CHAT_PROMPT + CHAT_REPLY, "label": [None, 1, 1, 1, 1]}]
    samples = _load("regression", hf_tokenizer, _write(tmp_path / "reg.jsonl", records))
    assert [s.ids for s in samples[:3]] == [_ids(hf_tokenizer, r["text"]) for r in records[:3]]
    assert samples[3].ids[-1] == EOS and EOS not in samples[3].ids[:-1]


def test_hinge_example_ends_with_eos(hf_tokenizer: Path, tmp_path: Path) -> None:
    records = [{"chosen": "Q8: It is 8.", "rejected": "Q8: go away"},
               {"prompt": "Q9: what is 9+0?", "chosen": " It is 9.", "rejected": " It is 1."}]
    pairs = _load("hinge_ranking", hf_tokenizer, _write(tmp_path / "hinge.jsonl", records))
    assert pairs == [(_ids(hf_tokenizer, "Q8: It is 8."), _ids(hf_tokenizer, "Q8: go away")),
                     (_ids(hf_tokenizer, "Q9: what is 9+0? It is 9."), _ids(hf_tokenizer, "Q9: what is 9+0? It is 1."))]


def test_scoring_appends_eos_and_reads_the_reward_there(hf_tokenizer: Path, tmp_path: Path, parallel_info) -> None:
    import torch

    from rm_registry.engine import checkpoint as ckpt
    from rm_registry.engine import parallel
    from rm_registry.engine.api import load_reward_model, score_file
    from rm_registry.engine.tokenizer import load_tokenizer
    from rm_registry.engine.trainer import checkpoint_files

    cfg = _cfg("binary_ranking", hf_tokenizer, "model.data.overlong_policy=truncate")
    tokenizer = load_tokenizer(cfg)
    parallel.manual_seed(3)
    model = get_reward_model("binary_ranking").model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    ckpt.save_checkpoint(tmp_path / "ckpt", model, extra_files=checkpoint_files(cfg, tokenizer))
    loaded = load_reward_model(tmp_path / "ckpt")  # the tokenizer comes from the checkpoint folder

    texts = ["Q1: what is 1+1? It is 2.", "Q2: go away", "Q3: what is 3+0? It is 3. " * 30]
    assert loaded.encode(texts[0]) == (_ids(hf_tokenizer, texts[0]), False)
    cut, was_cut = loaded.encode(texts[2])
    assert was_cut and cut == [*_ids(hf_tokenizer, texts[2])[:63], EOS]

    data = _write(tmp_path / "texts.jsonl", [{"text": texts[0]}, {"prompt": "Q2: ", "response": "go away"},
                                             {"text": texts[2]}])
    assert score_file(loaded, data, tmp_path / "scores.jsonl", progress=False) == 3
    got = [json.loads(line)["reward"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    expected = []
    with torch.no_grad():
        for ids in (_ids(hf_tokenizer, texts[0]), _ids(hf_tokenizer, texts[1]), cut):
            expected.append(float(loaded.model(torch.tensor([ids]), torch.tensor([len(ids)]))[0, 0]))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
