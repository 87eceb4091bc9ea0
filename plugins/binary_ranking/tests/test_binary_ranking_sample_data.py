"""The shipped sample data: reproducible from its script, small, and not solvable by length."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_equal_the_script_output(plugin) -> None:
    generated = _script().generate()
    paths = plugin.sample_data()
    assert set(generated) == {p.name for p in paths.values()}
    for path in paths.values():
        assert path.read_text(encoding="utf-8") == generated[path.name], (
            f"{path} is stale: run python {SCRIPT.relative_to(SCRIPT.parents[3])}"
        )
    assert sum(p.stat().st_size for p in paths.values()) < 1_000_000


def test_script_writes_to_a_folder(tmp_path) -> None:
    _script().main(["--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "validation.jsonl"]


def test_length_does_not_predict_the_label(plugin) -> None:
    for split, path in plugin.sample_data().items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        longer_wins = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)
        assert 0.4 <= longer_wins <= 0.6, (split, longer_wins)


def test_validation_topics_are_unseen_in_training(plugin) -> None:
    facts = [q for q, _, _ in _script().FACTS]

    def questions(path: Path) -> set[str]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        found = [[q for q in facts if q in r["prompt"]] for r in rows]
        assert all(len(f) == 1 for f in found)
        return {f[0] for f in found}

    paths = plugin.sample_data()
    train, validation = questions(paths["train"]), questions(paths["validation"])
    assert train and validation and not train & validation
