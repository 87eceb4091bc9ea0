"""The file forms a data split may take (JSON Lines, Parquet, Arrow, save_to_disk folders, hf:// from
the local hub cache), model.data.columns, NeMo-RL's preference format and HelpSteer2's columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rm_registry import DataError, get_reward_model

TINY = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=96",
        "model.micro_batch_size=4", "model.global_batch_size=8", "model.optim.sched.warmup_steps=2",
        "trainer.rm.val_check_interval=100", "trainer.rm.save_interval=100"]


def _rows(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        out.append({"prompt": f"Q{i}: what is {a}+{b}?", "chosen": f" It is {a + b}. Glad to help!",
                    "rejected": f" It is {a + b + 1}, go away.", "margin": float(i % 3)})
    return out


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # several row groups
    return path


def _arrow(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    return path


def _saved(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def _hub(root: Path, repo: str, rows: list[dict[str, Any]], split: str = "train") -> None:
    """A hub data set as huggingface_hub lays out a download: blobs, a snapshot of links, refs/main."""
    base = root / "hub" / f"datasets--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123abcd")
    blob = base / "blobs" / "f00d"
    _parquet(blob, rows)
    snap = base / "snapshots" / "0123abcd" / "data"
    snap.mkdir(parents=True)
    (snap / f"{split}-00000-of-00001.parquet").symlink_to(os.path.relpath(blob, snap))


def _cfg(plugin: Any, *extra: str, **paths: Any) -> Any:
    from rm_registry.engine.config import build_config

    return build_config(plugin, overrides=[*TINY, *extra], data_paths=paths or None)


def _read(plugin: Any, path: Any, cfg: Any) -> Any:
    from rm_registry.engine.data._splits import read_split_file
    from rm_registry.engine.tokenizer import ByteTokenizer

    return read_split_file(plugin, "train", str(path), ByteTokenizer(), cfg)


def _samples(ds: Any) -> list[Any]:
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_every_file_form_gives_the_same_samples(tmp_path: Path, hub_home: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    rows = _rows(23)
    cfg = _cfg(plugin)
    _hub(hub_home, "acme/prefs", rows)
    forms = {
        "jsonl": _jsonl(tmp_path / "p.jsonl", rows),
        "parquet": _parquet(tmp_path / "p.parquet", rows),
        "arrow": _arrow(tmp_path / "p.arrow", rows),
        "save_to_disk": _saved(tmp_path / "saved", rows),
        "hub": "hf://acme/prefs:train",
    }
    expected = _samples(_read(plugin, forms["jsonl"], cfg))
    assert len(expected) == 23 and expected[4].margin == 1.0
    for name, path in forms.items():
        assert _samples(_read(plugin, path, cfg)) == expected, name


def test_a_dataset_dict_folder_names_its_split(tmp_path: Path) -> None:
    import datasets

    plugin = get_reward_model("binary_ranking")
    ds = datasets.Dataset.from_list(_rows(9))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"name one split's folder, e\.g\. .*dd/train"):
        _samples(_read(plugin, tmp_path / "dd", _cfg(plugin)))
    assert len(_read(plugin, tmp_path / "dd" / "train", _cfg(plugin))) == 9


def test_bad_rows_of_parquet_and_hub_names_are_named(tmp_path: Path, hub_home: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    rows = _rows(12)
    rows[9] = {"prompt": "x", "chosen": "y", "rejected": None}
    with pytest.raises(DataError) as info:
        _read(plugin, _parquet(tmp_path / "bad.parquet", rows), _cfg(plugin))
    assert info.value.path.endswith("bad.parquet") and info.value.line == 10 and "'rejected'" in info.value.problem
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a Parquet file"):
        _read(plugin, tmp_path / "junk.parquet", _cfg(plugin))
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        _read(plugin, "hf://acme/absent:train", _cfg(plugin))
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        (tmp_path / "plain").mkdir()
        _read(plugin, tmp_path / "plain", _cfg(plugin))
    assert not list(Path(os.environ["RM_REGISTRY_CACHE"]).glob(".tmp-*"))  # nothing half-made left


def test_columns_mapping_renames_the_file_s_columns(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    rows = _rows(10)
    renamed = [{"question": r["prompt"], "response_j": r["chosen"], "response_k": r["rejected"]} for r in rows]
    plain = _samples(_read(plugin, _jsonl(tmp_path / "a.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                               for r in rows]), _cfg(plugin)))
    cfg = _cfg(plugin, "model.data.columns={prompt: question, chosen: response_j, rejected: response_k}")
    assert _samples(_read(plugin, _parquet(tmp_path / "b.parquet", renamed), cfg)) == plain
    cfg = _cfg(plugin, "model.data.columns={chosen: good, rejected: response_k}")
    with pytest.raises(DataError) as info:
        _read(plugin, _parquet(tmp_path / "c.parquet", renamed), cfg)
    assert info.value.line == 1 and "'chosen' to column 'good'" in info.value.problem


def test_nemo_rl_preference_records_are_pairs(tmp_path: Path) -> None:
    plugin = get_reward_model("binary_ranking")
    context = [{"role": "user", "content": "What is 2+2?"}]
    good, bad = [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]
    nemo = [{"context": context, "completions": [{"rank": 1, "completion": bad}, {"rank": 0, "completion": good}]}] * 3
    trl = [{"prompt": context, "chosen": good, "rejected": bad}] * 3
    cfg = _cfg(plugin)
    assert _samples(_read(plugin, _jsonl(tmp_path / "n.jsonl", nemo), cfg)) == \
        _samples(_read(plugin, _jsonl(tmp_path / "t.jsonl", trl), cfg))
    tied = [{"context": context, "completions": [{"rank": 0, "completion": bad}, {"rank": 0, "completion": good}]}]
    with pytest.raises(DataError, match="both completions have rank 0"):
        _read(plugin, _jsonl(tmp_path / "tied.jsonl", tied), cfg)
    three = [{"context": context, "completions": [{"rank": i, "completion": good} for i in range(3)]}]
    with pytest.raises(DataError, match="exactly two"):
        _read(plugin, _jsonl(tmp_path / "three.jsonl", three), cfg)


def test_helpsteer2_attribute_columns_are_regression_labels(tmp_path: Path) -> None:
    plugin = get_reward_model("regression")
    names = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    flat = [{"prompt": f"Q{i}?", "response": f" A{i}.", **{n: (i + j) % 5 for j, n in enumerate(names)}}
            for i in range(8)]
    flat[3].pop("verbosity")  # a missing column is masked, as a missing name of a label object
    labelled = [{"text": f"Q{i}? A{i}.", "label": {n: r[n] for n in names if n in r}} for i, r in enumerate(flat)]
    cfg = _cfg(plugin, f"model.regression.attribute_names=[{','.join(names)}]")
    got = _samples(_read(plugin, _parquet(tmp_path / "hs2.parquet", flat), cfg))
    assert got == _samples(_read(plugin, _jsonl(tmp_path / "l.jsonl", labelled), cfg))
    assert got[3].label[4] == -100.0
    with pytest.raises(DataError, match="no attribute columns"):
        _read(plugin, _jsonl(tmp_path / "none.jsonl", [{"prompt": "q", "response": "a"}]), cfg)


@pytest.mark.slow
def test_the_same_pairs_in_every_form_train_the_same_losses(tmp_path: Path, hub_home: Path) -> None:
    from rm_registry.engine.trainer import train

    plugin = get_reward_model("binary_ranking")
    rows = _rows(48)
    _hub(hub_home, "acme/prefs", rows)
    forms = {"jsonl": _jsonl(tmp_path / "p.jsonl", rows), "parquet": _parquet(tmp_path / "p.parquet", rows),
             "save_to_disk": _saved(tmp_path / "saved", rows), "hub": "hf://acme/prefs"}
    losses = {}
    for name, path in forms.items():
        cfg = _cfg(plugin, "trainer.rm.max_steps=4", train=path)
        train(plugin, cfg, tmp_path / f"run-{name}", progress=False)
        log = [json.loads(x) for x in (tmp_path / f"run-{name}" / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in log if r["split"] == "train"]
    assert len(losses["jsonl"]) == 4
    for name, values in losses.items():
        assert values == losses["jsonl"], name  # step for step, exactly


@pytest.mark.slow
def test_cli_trains_on_a_parquet_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    rows = _rows(40)
    good = _parquet(tmp_path / "train.parquet", rows)
    env = {**os.environ, "RM_REGISTRY_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "rm_registry", "train", "binary_ranking", "--no-progress", *TINY,
           "trainer.rm.max_steps=2"]
    ok = subprocess.run([*cmd, "--data", str(good), "--output", str(tmp_path / "run")], capture_output=True,
                        text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    rows[30] = {"prompt": "q", "chosen": "c", "rejected": None, "margin": 0.0}
    bad = _parquet(tmp_path / "bad.parquet", rows)
    proc = subprocess.run([*cmd, "--data", str(bad), "--output", str(tmp_path / "run2")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"rm-registry: error: {bad}:31: ")
    assert not (tmp_path / "run2").exists()
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not any(p.name.startswith(".tmp-") for p in entries)  # only the good file's
