"""The token cache: built once and mapped read-only, keyed by content, tokenizer and settings; stale,
damaged and half-written entries; a writer killed mid-way; `rm-registry cache info / clear`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rm_registry import get_reward_model

TINY = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=64"]


def _prefs(path: Path, n: int, *, tag: str = "") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Q{i}{tag}?", "chosen": f" yes {i}", "rejected": f" no {i}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def _cfg(plugin: Any, cache: Path, *extra: str) -> Any:
    from rm_registry.engine.config import build_config

    return build_config(plugin, overrides=[*TINY, f"model.data.cache_dir={cache}", *extra])


def _dataset(plugin: Any, path: Path, cfg: Any, tokenizer: Any = None) -> Any:
    from rm_registry.engine.data._cache import split_dataset
    from rm_registry.engine.tokenizer import ByteTokenizer

    return split_dataset(plugin, path if hasattr(path, "columns") else str(path), tokenizer or ByteTokenizer(), cfg)


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


class _Counting:
    """The binary_ranking plugin, counting calls of text_samples (a cache hit makes none)."""

    def __init__(self) -> None:
        self._inner = get_reward_model("binary_ranking")
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def text_samples(self, path: Any, cfg: Any) -> Any:
        self.calls += 1
        return self._inner.text_samples(path, cfg)


def test_a_file_is_tokenized_once_then_mapped_read_only(tmp_path: Path) -> None:
    plugin = _Counting()
    data = _prefs(tmp_path / "p.jsonl", 30)
    cfg = _cfg(plugin, tmp_path / "cache")
    first = _dataset(plugin, data, cfg)
    second = _dataset(plugin, data, cfg)
    assert plugin.calls == 1
    assert second.cache == first.cache and len(_entries(tmp_path / "cache")) == 1
    assert isinstance(second.arrays.tokens, np.memmap) and not second.arrays.tokens.flags.writeable
    assert second.arrays.tokens.dtype == np.uint16  # the byte tokenizer's 258 ids
    assert [second[i] for i in range(30)] == plugin.build_datasets({"t": data}, _byte(), cfg)["t"].samples
    assert second.stats.as_dict() == {"read": 30, "kept": 30, "truncated": 0, "dropped": 0}


def _byte() -> Any:
    from rm_registry.engine.tokenizer import ByteTokenizer

    return ByteTokenizer()


class _WideTokenizer:
    """Ids above 65,535 (as a large BPE vocabulary's): each byte b is id 70,000 + b."""

    vocab_size = 70_258
    eos_id = 70_256
    pad_id = 70_257

    def encode(self, text: str) -> list[int]:
        return [70_000 + b for b in text.encode("utf-8")]

    def decode(self, ids: Any) -> str:
        return bytes(int(i) - 70_000 for i in ids if 70_000 <= int(i) < 70_256).decode("utf-8", "replace")


def test_what_changes_tokenization_changes_the_key(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "p.jsonl", 12)
    cache = tmp_path / "cache"
    base = _dataset(plugin, data, _cfg(plugin, cache))
    wide = _dataset(plugin, data, _cfg(plugin, cache), _WideTokenizer())
    assert wide.arrays.tokens.dtype == np.uint32 and wide[0].chosen[0] >= 70_000
    short = _dataset(plugin, data, _cfg(plugin, cache, "model.encoder_seq_length=8", "model.data.overlong_policy=truncate"))
    scaled = _dataset(plugin, data, _cfg(plugin, cache, "model.binary_ranking.margin_mode=scale"))
    from rm_registry.engine.data import DataSource

    mapped = _dataset(plugin, DataSource(data, {"chosen": "rejected", "rejected": "chosen"}), _cfg(plugin, cache))
    assert mapped[0].chosen == base[0].rejected  # the mapping applied, and kept apart from the plain entry
    assert len({base.cache, wide.cache, short.cache, scaled.cache, mapped.cache}) == 5
    assert short.stats.truncated == 12


def test_an_edited_file_replaces_its_stale_entry_with_one_warning(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "p.jsonl", 12)
    cfg = _cfg(plugin, tmp_path / "cache")
    old = _dataset(plugin, data, cfg)
    _prefs(data, 14, tag="!")
    with pytest.warns(UserWarning, match="changed since it was tokenized") as caught:
        new = _dataset(plugin, data, cfg)
    assert len(caught) == 1
    assert len(new) == 14 and "!" in _byte().decode(new[0].chosen) and "!" not in _byte().decode(old[0].chosen)
    assert _entries(tmp_path / "cache") == [new.cache]


def test_a_damaged_entry_is_rebuilt_with_one_warning(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "p.jsonl", 12)
    cfg = _cfg(plugin, tmp_path / "cache")
    good = [s for s in _dataset(plugin, data, cfg)]
    entry = _entries(tmp_path / "cache")[0]
    with open(entry / "tokens.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.warns(UserWarning, match="is damaged") as caught:
        again = _dataset(plugin, data, cfg)
    assert len(caught) == 1 and [s for s in again] == good
    (entry / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="is damaged"):
        assert [s for s in _dataset(plugin, data, cfg)] == good


def test_bad_input_leaves_no_entry(tmp_path: Path) -> None:
    from rm_registry import DataError

    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "p.jsonl", 2000)
    with data.open("a") as fh:
        fh.write('{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r":2001: missing key 'rejected'"):
        _dataset(plugin, data, _cfg(plugin, tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_an_unwritable_cache_folder_falls_back_to_memory_with_a_warning(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "p.jsonl", 8)
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be: not writable as a folder, even as root
    with pytest.warns(UserWarning, match="cannot be written.*tokenizing .* in memory"):
        ds = _dataset(plugin, data, _cfg(plugin, blocked / "cache"))
    assert ds.cache is None and len(ds) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = _dataset(plugin, data, _cfg(plugin, tmp_path / "unused", "model.data.cache=false"))
    assert off.cache is None and not (tmp_path / "unused").exists()


_WRITER = """
import sys
from rm_registry import get_reward_model
from rm_registry.engine.config import build_config
from rm_registry.engine.data._cache import split_dataset
from rm_registry.engine.tokenizer import ByteTokenizer
plugin = get_reward_model("binary_ranking")
cfg = build_config(plugin, overrides={overrides!r})
ds = split_dataset(plugin, sys.argv[1], ByteTokenizer(), cfg)
print(len(ds), ds.cache, ds.cache_note)
"""


def _writer(tmp_path: Path, pairs: int, words: int) -> tuple[Path, Path, Path]:
    """``(cache, data, script)``: a file of ``pairs`` pairs, and a script building its cache entry."""
    cache, data, script = tmp_path / "cache", tmp_path / "big.jsonl", tmp_path / "writer.py"
    data.write_text("".join(json.dumps({"chosen": f"c {i} " * words, "rejected": f"r {i} " * words}) + "\n"
                            for i in range(pairs)), encoding="utf-8")
    script.write_text(_WRITER.format(overrides=[*TINY, "model.encoder_seq_length=512", f"model.data.cache_dir={cache}"]))
    return cache, data, script


@pytest.mark.slow
def test_a_writer_killed_mid_way_leaves_nothing_mistaken_for_a_cache(tmp_path: Path) -> None:
    cache, data, script = _writer(tmp_path, 60_000, 40)
    proc = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it has started writing token ids
        tmp = [p for p in cache.glob(".tmp-*") if (p / "tokens.bin").exists() and (p / "tokens.bin").stat().st_size]
        if tmp or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the writer finished before it could be killed; make the file bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp and not _entries(cache)  # only the unfinished .tmp- folder

    listed = subprocess.run([sys.executable, "-m", "rm_registry", "cache", "info", "--cache-dir", str(cache), "--json"],
                            capture_output=True, text=True, timeout=60)
    info = json.loads(listed.stdout)
    assert [e["ok"] for e in info["entries"]] == [False] and "unfinished" in info["entries"][0]["note"]

    done = subprocess.run([sys.executable, str(script), str(data)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "60000"
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [Path(done.stdout.split()[1]).name]  # leftover gone

    cleared = subprocess.run([sys.executable, "-m", "rm_registry", "cache", "clear", "--cache-dir", str(cache)],
                             capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0 and cleared.stdout.startswith("removed 1 entry")
    assert not _entries(cache)


def test_cache_cli_lists_and_clears_by_key(tmp_path: Path) -> None:
    from rm_registry._cli import main

    plugin = get_reward_model("binary_ranking")
    cache = tmp_path / "cache"
    a = _dataset(plugin, _prefs(tmp_path / "a.jsonl", 5), _cfg(plugin, cache))
    _dataset(plugin, _prefs(tmp_path / "b.jsonl", 7), _cfg(plugin, cache))
    assert main(["cache", "clear", a.cache.name[:10], "--cache-dir", str(cache)]) == 0
    assert len(_entries(cache)) == 1
    assert main(["cache", "clear", "ffffnothing", "--cache-dir", str(cache)]) == 2
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0


@pytest.mark.slow
def test_training_and_evaluate_reuse_the_cache(tmp_path: Path) -> None:
    """train tokenizes; a second run, evaluate and --resume map the same entries."""
    cache = tmp_path / "cache"
    train, val = _prefs(tmp_path / "t.jsonl", 40), _prefs(tmp_path / "v.jsonl", 12, tag="v")
    env = {**os.environ, "RM_REGISTRY_CACHE": str(cache)}
    base = [sys.executable, "-m", "rm_registry"]
    tiny = [*TINY, "model.micro_batch_size=4", "model.global_batch_size=8", "trainer.rm.save_interval=2"]
    run = subprocess.run([*base, "train", "binary_ranking", "--data", str(train), "--validation-data", str(val),
                          "--output", str(tmp_path / "r1"), "--no-progress", *tiny, "trainer.rm.max_steps=2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    made = {p.name: (p / "meta.json").stat().st_mtime_ns for p in _entries(cache)}
    assert len(made) == 2
    time.sleep(0.05)
    ev = subprocess.run([*base, "evaluate", "--checkpoint", str(tmp_path / "r1"), "--data", str(val), "--json",
                         "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert ev.returncode == 0, ev.stderr
    resumed = subprocess.run([*base, "train", "binary_ranking", "--data", str(train), "--validation-data", str(val),
                              "--output", str(tmp_path / "r1"), "--resume", "--no-progress", *tiny,
                              "trainer.rm.max_steps=4"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert {p.name for p in _entries(cache)} == set(made)  # nothing tokenized again
    assert all((cache / k / "meta.json").stat().st_mtime_ns > t for k, t in made.items())  # each one used again


@pytest.mark.slow
def test_processes_asking_at_once_get_one_entry_written_by_one_of_them(tmp_path: Path) -> None:
    """As the ranks of a node under torchrun: one writes the entry, the others wait and map it."""
    cache, data, script = _writer(tmp_path, 40_000, 30)
    procs = [subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert len({out.split()[1] for out, _ in outs}) == 1 and {out.split()[0] for out, _ in outs} == {"40000"}
    notes = [out for out, _ in outs]
    assert sum("tokenized in" in n for n in notes) == 1, notes
    assert sum("written by another process" in n for n in notes) == 1, notes
    assert len(_entries(cache)) == 1 and not list(cache.glob(".tmp-*"))


def test_stored_samples_are_the_encoded_texts_across_chunks(tmp_path: Path) -> None:
    """Against hand-encoded samples (encode_text + fit_length), not the plugin's own build: a field
    absent for the first 600 samples (more than one encoding chunk) and present after, and vector
    labels, come back as written, from the writer and from the mapped files."""
    from rm_registry.engine.data import encode_text, fit_length

    tok = _byte()
    plugin = get_reward_model("binary_ranking")
    rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}" * (1 + i % 9), "rejected": f" no {i}"} for i in range(700)]
    for i in range(600, 700):
        rows[i]["margin"] = i / 100
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = _cfg(plugin, tmp_path / "cache", "model.data.overlong_policy=truncate")

    def fit(text: str) -> list[int]:
        return fit_length(encode_text(tok, text), 64, "truncate", eos_id=tok.eos_id, path="-", line=0)[0]

    expected = [(fit(r["prompt"] + r["chosen"]), fit(r["prompt"] + r["rejected"]), r.get("margin")) for r in rows]
    for _ in ("written", "mapped"):
        ds = _dataset(plugin, data, cfg)
        assert [(s.chosen, s.rejected, s.margin) for s in ds] == expected
        rows_, longest = ds.sequence_counts()
        assert rows_ == [2] * 700 and longest == [max(len(c), len(r)) for c, r, _ in expected]
    assert ds.stats.truncated == sum(len(encode_text(tok, r["prompt"] + r["chosen"])) > 64 for r in rows) > 0

    reg = get_reward_model("regression")
    lines = [{"text": f"t{i}", "label": [i % 5, None if i % 7 == 0 else 1.5, -100]} for i in range(600)]
    rdata = tmp_path / "r.jsonl"
    rdata.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    rcfg = _cfg(reg, tmp_path / "cache", "model.regression.attribute_names=[a,b,c]")
    for _ in ("written", "mapped"):
        got = [(s.ids, s.label, s.line) for s in _dataset(reg, rdata, rcfg)]
        assert got == [(encode_text(tok, r["text"]), (float(i % 5), -100.0 if i % 7 == 0 else 1.5, -100.0), i + 1)
                       for i, r in enumerate(lines)]
