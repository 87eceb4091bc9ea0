"""The benchmarks' figures equal those of their own scoring code (vendored in reference_formulas.py)
from the same per-example rewards, and bad rows are refused naming file, row and column."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

import reference_formulas as ref
from benchmark_data import rewardbench2_rows, rewardbench_rows, rm_bench_rows
from rm_registry import ConfigError, DataError
from rm_registry.engine.evaluation.benchmarks import get_benchmark
from rm_registry.engine.evaluation.benchmarks._probes import distribution, length_bias, swap_result


def _records(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, r) for i, r in enumerate(rows, 1)]


def _rewards(examples: Any, seed: int) -> tuple[list[list[float]], list[list[float]]]:
    """Random rewards on a coarse grid, so that ties (which count as wrong) occur."""
    rng = random.Random(seed)
    chosen = [[round(rng.gauss(0.3, 1), 1) for _ in ex.chosen] for ex in examples]
    rejected = [[round(rng.gauss(0, 1), 1) for _ in ex.rejected] for ex in examples]
    return chosen, rejected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rewardbench_matches_reward_bench(seed: int) -> None:
    bench = get_benchmark("rewardbench")
    examples = bench.read("rb.jsonl", _records(rewardbench_rows(per_subset=5, seed=seed, extra_subset=False)))
    chosen, rejected = _rewards(examples, seed)
    assert any(c[0] == r[0] for c, r in zip(chosen, rejected))  # ties occur
    fig = bench.figures(examples, chosen, rejected)
    want = ref.rewardbench_v1([e.subset for e in examples], [c[0] for c in chosen], [r[0] for r in rejected])
    assert fig.correct == [float(x) for x in want["results"]]
    assert fig.extra["subset_accuracy"] == pytest.approx(want["subsets"], abs=1e-12)
    assert fig.sections == pytest.approx(want["sections"], abs=1e-12)
    assert fig.score == pytest.approx(want["score"], abs=1e-12)


def test_rewardbench_reports_other_subsets_apart_and_no_score_without_a_section() -> None:
    bench = get_benchmark("rewardbench")
    rows = [r for r in rewardbench_rows(per_subset=2) if r["subset"] not in ref.SUBSET_MAPPING["Safety"]]
    examples = bench.read("rb.jsonl", _records(rows))
    chosen, rejected = _rewards(examples, 0)
    fig = bench.figures(examples, chosen, rejected)
    assert fig.sections["Safety"] is None and fig.score is None
    assert any("Safety" in n for n in fig.notes) and any("my-subset" in n for n in fig.notes)
    assert [r for r in fig.rows if r["subset"] == "my-subset"][0]["section"] == "(outside the sections)"
    present = [v for v in fig.sections.values() if v is not None]
    assert fig.extra["mean_of_present_sections"] == pytest.approx(sum(present) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_rewardbench2_matches_reward_bench(seed: int) -> None:
    bench = get_benchmark("rewardbench2")
    rows = rewardbench2_rows(per_subset=6, ties_prompts=5, seed=seed)
    examples = bench.read("rb2.jsonl", _records(rows))
    chosen, rejected = _rewards(examples, seed)
    fig = bench.figures(examples, chosen, rejected)
    want = ref.rewardbench_v2([{"id": e.id, "subset": e.subset, "num_correct": e.num_correct, "scores": [*c, *r]}
                               for e, c, r in zip(examples, chosen, rejected)])
    assert fig.sections == pytest.approx(want, abs=1e-12)
    assert fig.score == pytest.approx(sum(want.values()) / len(want), abs=1e-12)
    for e, c, r, ok in zip(examples, chosen, rejected, fig.correct):
        if e.subset == "Ties":
            assert ok is None
        else:
            assert ok == pytest.approx(float(ref.v2_row_result([*c, *r])))


def test_rewardbench2_best_of_n_credit_for_ties() -> None:
    bench = get_benchmark("rewardbench2")
    examples = bench.read("rb2.jsonl", _records(rewardbench2_rows(per_subset=1, ties_prompts=0)))
    n = len(examples)
    chosen = [[1.0]] * n
    rejected = [[1.0, 0.0, 1.0]] + [[0.5, 0.5, 2.0]] + [[0.0, 0.0, 0.0]] * (n - 2)
    fig = bench.figures(examples, chosen, rejected)
    assert fig.correct[:3] == [pytest.approx(1 / 3), 0.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rm_bench_matches_rm_bench(seed: int) -> None:
    bench = get_benchmark("rm-bench")
    examples = bench.read("rmb.jsonl", _records(rm_bench_rows(per_domain=6, seed=seed)))
    chosen, rejected = _rewards(examples, seed)
    fig = bench.figures(examples, chosen, rejected)
    want = ref.compute_accuracy([{"domain": e.subset, "score_chosen": c, "score_rejected": r}
                                 for e, c, r in zip(examples, chosen, rejected)])
    for d in ("chat", "math", "code", "safety"):
        assert fig.sections[d] == pytest.approx(want[d], abs=1e-12)
        for key in ("hard_acc", "normal_acc", "easy_acc"):
            assert fig.extra["domains"][d][key] == pytest.approx(want["_per_domain"][d][key], abs=1e-12)
    for key in ("hard_acc", "normal_acc", "easy_acc"):
        assert fig.extra[key] == pytest.approx(want[key], abs=1e-12)
    assert fig.score == pytest.approx(want["total_avg_acc"], abs=1e-12)


# ----------------------------------------------------------------------------------------- bad rows

def _refused(name: str, rows: list[dict[str, Any]]) -> str:
    with pytest.raises(DataError) as info:
        get_benchmark(name).read("data.jsonl", _records(rows))
    return str(info.value)


def test_missing_columns_name_the_row_and_the_layout() -> None:
    rows = rewardbench_rows(per_subset=1)
    del rows[2]["subset"]
    msg = _refused("rewardbench", rows)
    assert "data.jsonl" in msg and "3" in msg and "'subset'" in msg and "model.data.columns" in msg


def test_a_list_where_a_string_belongs_points_at_the_other_benchmarks() -> None:
    rows = rewardbench_rows(per_subset=1)
    rows[1]["chosen"] = ["a", "b"]
    msg = _refused("rewardbench", rows)
    assert "line 2" in msg or ":2" in msg, msg
    assert "'chosen'" in msg and "list of 2" in msg and "rewardbench2" in msg


def test_a_string_where_a_list_belongs() -> None:
    rows = rewardbench2_rows(per_subset=1, ties_prompts=0)
    rows[0]["rejected"] = "just one"
    msg = _refused("rewardbench2", rows)
    assert "'rejected'" in msg and "--benchmark rewardbench" in msg


def test_num_correct_larger_than_the_list() -> None:
    rows = rewardbench2_rows(per_subset=1, ties_prompts=1)
    rows[-1]["num_correct"] = len(rows[-1]["chosen"]) + 2
    msg = _refused("rewardbench2", rows)
    assert "num_correct" in msg and f"holds {len(rows[-1]['chosen'])}" in msg


def test_total_completions_and_ties_ids_are_checked() -> None:
    rows = rewardbench2_rows(per_subset=1, ties_prompts=1)
    rows[0]["total_completions"] = 9
    assert "total_completions" in _refused("rewardbench2", rows)
    rows = rewardbench2_rows(per_subset=1, ties_prompts=1)
    rows[-1]["id"] = "tied-0"
    assert "ref:N or tied:N" in _refused("rewardbench2", rows)


def test_counts_that_are_nan_or_fractions_are_refused() -> None:
    rows = rewardbench2_rows(per_subset=1, ties_prompts=0)
    rows[0]["num_correct"] = float("nan")
    assert "'num_correct' must be a whole number" in _refused("rewardbench2", rows)
    rows[0]["num_correct"] = 1.5
    assert "'num_correct' must be a whole number" in _refused("rewardbench2", rows)


def test_ties_num_correct_decides_what_is_correct() -> None:
    """A Ties row whose 'chosen' lists more responses than num_correct: the extra ones count as incorrect."""
    bench = get_benchmark("rewardbench2")
    rows = [{"id": "ref:0", "prompt": "p", "chosen": ["a"], "rejected": ["b"], "num_correct": 1, "subset": "Ties"},
            {"id": "tied:0", "prompt": "p", "chosen": ["c", "d", "e"], "rejected": ["f"], "num_correct": 2,
             "subset": "Ties"}]
    examples = bench.read("x", _records(rows))
    chosen, rejected = [[1.0], [1.0, 0.9, 2.0]], [[0.0], [0.5]]  # 'e' (incorrect) outscores the correct ones
    fig = bench.figures(examples, chosen, rejected)
    want = ref.rewardbench_v2([{"id": e.id, "subset": e.subset, "num_correct": e.num_correct, "scores": [*c, *r]}
                               for e, c, r in zip(examples, chosen, rejected)])
    assert fig.sections["Ties"] == pytest.approx(want["Ties"], abs=1e-12)
    assert fig.extra["ties"]["tied_accuracy"] == 0.0 and fig.extra["ties"]["ref_accuracy"] == 1.0
    assert bench.pairs(examples[1]) == [(0, 0), (1, 0)]


def test_a_json_array_file_is_read(tmp_path: Path) -> None:
    from rm_registry.engine.data import read_jsonl

    rows = rm_bench_rows(per_domain=1)
    (tmp_path / "total_dataset.json").write_text(json.dumps(rows, indent=2))
    got = get_benchmark("rm-bench").read("t", list(read_jsonl(str(tmp_path / "total_dataset.json"))))
    assert [e.id for e in got] == [r["id"] for r in rows]
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], 3]))
    with pytest.raises(DataError, match="element 2 of the JSON array is a int"):
        list(read_jsonl(str(tmp_path / "bad.json")))


def test_lowercase_ties_is_ordered_and_not_reported_missing() -> None:
    bench = get_benchmark("rewardbench2")
    rows = [dict(r, subset=r["subset"].lower()) for r in rewardbench2_rows(per_subset=1, ties_prompts=1)]
    examples = bench.read("x", _records(rows))
    chosen, rejected = _rewards(examples, 0)
    fig = bench.figures(examples, chosen, rejected)
    assert [r["subset"] for r in fig.rows] == [s.lower() for s in ("Factuality", "Precise IF", "Math", "Safety",
                                                                   "Focus", "Ties")]
    assert not fig.notes


def test_swap_flags_rewards_that_change_between_passes() -> None:
    good = [(float(i), float(i) - 0.5) for i in range(10)]
    swapped = [(r, c) for c, r in good]
    out = swap_result(good, swapped, [(c, c * 1.01) for c, _ in good])
    assert out["flagged"] and "depend on the batch" in out["reasons"][0]


def test_rm_bench_needs_three_responses() -> None:
    rows = rm_bench_rows(per_domain=1)
    rows[0]["chosen"] = rows[0]["chosen"][:2]
    assert "exactly 3" in _refused("rm-bench", rows)


def test_unknown_benchmark_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean 'rewardbench2'"):
        get_benchmark("rewardbnch2")
    with pytest.raises(ConfigError, match="known: rewardbench, rewardbench2, rm-bench"):
        get_benchmark("mmlu")
    assert get_benchmark("RM_Bench").name == "rm-bench" and get_benchmark("reward-bench").name == "rewardbench"


# ----------------------------------------------------------------------------------------- probes

def test_swap_probe_flags_a_model_that_scores_both_the_same() -> None:
    same = [(1.0, 1.0)] * 10
    out = swap_result(same, same, [(1.0, 1.0)] * 20)
    assert out["flagged"] and "same either way" in out["reasons"][0]
    good = [(float(i), float(i) - 0.5) for i in range(10)]
    swapped = [(r, c) for c, r in good]
    assert not swap_result(good, swapped, [(c, c) for c, _ in good])["flagged"]
    # a pipeline reading one column twice: the swapped rows still prefer the old chosen
    out = swap_result(good, good, [(c, c) for c, _ in good])
    assert out["flagged"] and "depend on the column" in out["reasons"][0]


def test_length_bias_and_distribution() -> None:
    rewards = [1.0, 2.0, 3.0, 4.0]
    lengths = [10, 20, 30, 40]
    out = length_bias(rewards, lengths, [(4.0, 1.0, 40, 10), (2.0, 3.0, 20, 30), (3.0, 2.0, 30, 20)])
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert out["chosen_shorter"] == {"n": 1, "accuracy": 0.0} and out["chosen_longer"] == {"n": 2, "accuracy": 1.0}
    d = distribution([0.0, 1.0, 2.0, 3.0, 4.0])
    assert d["mean"] == 2.0 and d["q50"] == 2.0 and d["std"] == pytest.approx(math.sqrt(2.0))
    ties = length_bias([1.0, 1.0, 2.0], [5, 5, 7], [])
    assert ties["spearman"] == pytest.approx(1.0)


def test_rows_read_from_parquet_and_save_to_disk(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from rm_registry.engine.data import read_jsonl

    rows = rewardbench2_rows(per_subset=2, ties_prompts=1)
    for r in rows:
        r.pop("additional_metadata", None)
        r.pop("models", None)
        r.setdefault("num_incorrect", len(r["rejected"]))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "rb2.parquet")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "rb2_ds"))
    bench = get_benchmark("rewardbench2")
    want = bench.read("x", _records(rows))
    for path in (tmp_path / "rb2.parquet", tmp_path / "rb2_ds"):
        got = bench.read(path, list(read_jsonl(str(path))))
        assert [(e.id, e.chosen, e.rejected, e.num_correct) for e in got] == \
            [(e.id, e.chosen, e.rejected, e.num_correct) for e in want]
    json.dumps([e.__dict__ for e in want])
