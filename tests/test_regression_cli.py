"""`rm-registry train / evaluate / score regression` as a user runs them (issue 4).

Real subprocesses of ``python -m rm_registry``, real checkpoints, data written here (all three
label formats), so nothing depends on the shipped sample files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import TINY
from cli_helpers import run_cli as run

NAMES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
WEIGHTS = [0.3, 0.74, 0.46, 0.47, -0.33]
MASK = -100
ATTRS = [f"model.regression.attribute_names=[{','.join(NAMES)}]",
         f"model.regression.attribute_weights=[{','.join(str(w) for w in WEIGHTS)}]"]


def _values(i: int) -> list[float | None]:
    """Five HelpSteer-like 0-4 values for row ``i``; ``None`` marks a masked (unlabelled) entry."""
    vals: list[float | None] = [float((i * (k + 2) + k) % 5) for k in range(5)]
    if i % 3 == 1:
        vals[i % 5] = None  # one attribute unlabelled
    if i % 7 == 3:
        vals[(i + 2) % 5] = None  # sometimes a second one
    return vals


def _label(i: int, vals: list[float | None]) -> Any:
    """The same values in one of the three label formats, by row."""
    fmt = i % 3
    if fmt == 0:  # NeMo-Aligner list, -100 masks
        return [MASK if v is None else v for v in vals]
    if fmt == 1:  # SteerLM string, missing names masked
        return ",".join(f"{n}:{v:g}" for n, v in zip(NAMES, vals) if v is not None)
    return {n: v for n, v in zip(NAMES, vals) if v is not None}  # object, missing names masked


def _steer(path: Path, n: int, offset: int = 0) -> tuple[Path, dict[str, int]]:
    """Write ``n`` rows; return the file and the number of unmasked entries per attribute."""
    counts = dict.fromkeys(NAMES, 0)
    lines = []
    for i in range(offset, offset + n):
        vals = _values(i)
        for name, v in zip(NAMES, vals):
            counts[name] += v is not None
        text = f"user: tell me about item {i % 11}.\nassistant: " + "very " * (i % 4) + f"good answer {i % 5}."
        lines.append(json.dumps({"text": text, "label": _label(i, vals)}) + "\n")
    path.write_text("".join(lines))
    return path, counts


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("regcli")
    train, _ = _steer(d / "steer.jsonl", 40)
    val, val_counts = _steer(d / "steer_val.jsonl", 12, offset=100)
    # every format and masking really occur in the validation file
    raw = [json.loads(x)["label"] for x in val.read_text().splitlines()]
    assert {type(x) for x in raw} == {list, str, dict}
    assert min(val_counts.values()) < 12
    out = d / "runs" / "reg"
    proc = run("train", "regression", "--data", str(train), "--validation-data", str(val), "--output", str(out),
               "--no-progress", *ATTRS, *TINY)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("step_0000004")
    return {"dir": d, "run": out, "train": train, "val": val, "val_counts": val_counts}


def _check_attributes(attrs: dict[str, Any], names: list[str], counts: dict[str, int] | None = None) -> None:
    assert list(attrs) == names
    for name in names:
        a = attrs[name]
        assert set(a) == {"mse", "mae", "pearson", "count"}, a
        assert isinstance(a["mse"], float) and a["mse"] >= 0
        assert isinstance(a["mae"], float) and a["mae"] >= 0 and a["mae"] ** 2 <= a["mse"] + 1e-9
        assert a["pearson"] is None or -1.0 <= a["pearson"] <= 1.0
        if counts is not None:
            assert a["count"] == counts[name], (name, a, counts)


@pytest.mark.slow
def test_train_writes_per_attribute_validation_metrics(trained: dict[str, Any]) -> None:
    run_dir = trained["run"]
    assert json.loads((run_dir / "data_stats.json").read_text())["train"]["kept"] == 40
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [
        (1, "train"), (2, "train"), (2, "validation"), (3, "train"), (4, "train"), (4, "validation")]
    for r in lines:
        assert isinstance(r["loss"], float) and isinstance(r["mse"], float)
    for r in (r for r in lines if r["split"] == "validation"):
        _check_attributes(r["attributes"], NAMES, trained["val_counts"])
        # the overall MSE is the count-weighted mean of the per-attribute ones
        attrs = r["attributes"]
        pooled = sum(a["mse"] * a["count"] for a in attrs.values()) / sum(a["count"] for a in attrs.values())
        assert r["mse"] == pytest.approx(pooled, rel=1e-6)


@pytest.mark.slow
def test_evaluate_json_reports_mse_and_attribute_counts(trained: dict[str, Any]) -> None:
    proc = run("evaluate", "--checkpoint", str(trained["run"]), "--data", str(trained["val"]), "--json",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert isinstance(metrics["mse"], float) and metrics["mse"] >= 0
    _check_attributes(metrics["attributes"], NAMES, trained["val_counts"])
    # same weights and data as the run's last validation line
    last_val = [json.loads(x) for x in (trained["run"] / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_val["split"] == "validation"
    assert metrics["mse"] == pytest.approx(last_val["mse"], rel=1e-5)
    for name in NAMES:
        assert metrics["attributes"][name]["mse"] == pytest.approx(last_val["attributes"][name]["mse"], rel=1e-5)


@pytest.mark.slow
def test_score_writes_weighted_reward_and_attributes(trained: dict[str, Any]) -> None:
    d = trained["dir"]
    texts = d / "texts.jsonl"
    rows = [{"text": "user: tell me about item 3.\nassistant: very good answer 1."},
            {"prompt": "user: tell me about item 4.", "response": "\nassistant: good answer 2."},
            {"text": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "scores.jsonl"
    proc = run("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(out),
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    scores = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(scores) == len(rows)
    for s in scores:
        assert isinstance(s["reward"], float)
        assert list(s["attributes"]) == NAMES
        assert all(isinstance(v, float) for v in s["attributes"].values())
        expected = sum(w * s["attributes"][n] for w, n in zip(WEIGHTS, NAMES))
        assert s["reward"] == pytest.approx(expected, abs=1e-5)
    # not a constant output: different texts, different attribute vectors
    assert len({tuple(s["attributes"].values()) for s in scores}) == len(rows)


GOOD = {"text": "user: hi\nassistant: hello", "label": [1, 2, 3, 4, 0]}


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"text": "x", "label": [1, 2, 3]}, "label has 3 values but there are 5 attributes"),
        ({"text": "x", "label": "helpfulness:3,humor:2"}, "unknown attribute 'humor'"),
        ({"text": "x", "label": {"helpfulness": 3, "wit": 1}}, "unknown attribute 'wit'"),
        ({"text": "x", "label": "helpfulness:3,correctness:high"}, "'high'"),
        ({"text": "x", "label": [1, 2, "three", 4, 0]}, "'three'"),
        ({"text": "x", "label": {"coherence": [2]}}, "is not a finite number"),
    ],
    ids=["wrong-length", "unknown-name-string", "unknown-name-object", "non-numeric-string",
         "non-numeric-list", "non-numeric-object"],
)
def test_train_refuses_bad_labels_with_exit_2(tmp_path: Path, bad: dict[str, Any], fragment: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "run"
    proc = run("train", "regression", "--data", str(data), "--output", str(out), *ATTRS, *TINY)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"{data}:3" in err and fragment in err, err
    assert not out.exists()


@pytest.mark.slow
def test_num_attributes_without_names_trains_and_names_attr_i(tmp_path: Path) -> None:
    names = ["attr_0", "attr_1", "attr_2"]
    rows = []
    for i in range(16):
        vals = [float(i % 5), float((i * 3) % 5), float((i + 1) % 3)]
        if i % 4 == 0:
            label: Any = [vals[0], MASK, vals[2]]
        elif i % 4 == 1:
            label = f"attr_0:{vals[0]:g},attr_1:{vals[1]:g}"
        else:
            label = dict(zip(names, vals))
        rows.append({"text": f"item {i % 6} is {'nice ' * (i % 3)}thing", "label": label})
    data = tmp_path / "k3.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {"attr_0": 16, "attr_1": 16 - 4, "attr_2": 16 - 4}
    out = tmp_path / "run"
    small = [a for a in TINY if not a.startswith("trainer.rm.")] + [
        "trainer.rm.max_steps=2", "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=2"]
    proc = run("train", "regression", "--data", str(data), "--validation-data", str(data), "--output", str(out),
               "--no-progress", "model.regression.num_attributes=3", *small)
    assert proc.returncode == 0, proc.stderr
    ev = run("evaluate", "--checkpoint", str(out), "--data", str(data), "--json", "--no-progress")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    assert isinstance(metrics["mse"], float)
    _check_attributes(metrics["attributes"], names, counts)


@pytest.mark.slow
def test_reweighting_at_score_time_and_shape_changing_override_refused(trained: dict[str, Any]) -> None:
    d = trained["dir"]
    texts = d / "rw.jsonl"
    texts.write_text(json.dumps({"text": "user: tell me about item 3.\nassistant: very good answer 1."}) + "\n")
    out = d / "rw_scores.jsonl"
    weights = [1.0, 0.0, 0.0, 0.0, 0.0]
    proc = run("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(out),
               "--no-progress", f"model.regression.attribute_weights={json.dumps(weights)}")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(out.read_text())
    assert s["reward"] == pytest.approx(s["attributes"][NAMES[0]], abs=1e-6)
    bad = run("score", "--checkpoint", str(trained["run"]), "--data", str(texts), "--output", str(d / "x.jsonl"),
              "--no-progress", "model.regression.num_attributes=3")
    assert bad.returncode == 2, bad.stderr
    assert "model.regression.num_attributes=3" in bad.stderr and "Traceback" not in bad.stderr
    assert not (d / "x.jsonl").exists()
