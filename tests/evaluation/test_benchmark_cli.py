"""`rm-registry evaluate --benchmark` end to end on a real tiny checkpoint: the three benchmarks'
figures from their per-example rewards, those rewards against `rm-registry score`, the files, the
HTML page in a real headless browser, --compare, the swap probe on a broken model, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import reference_formulas as ref
from benchmark_data import rewardbench2_rows, rewardbench_rows, rm_bench_rows
from cli_helpers import TINY, run_cli

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOL = 1e-5


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained binary_ranking checkpoint and one data file per benchmark (three file forms)."""
    d = tmp_path_factory.mktemp("bench")
    proc = run_cli("train", "binary_ranking", "--output", str(d / "rm"), "--no-progress", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rb1 = _jsonl(d / "rb1.jsonl", rewardbench_rows(per_subset=2))
    rb2_rows = rewardbench2_rows(per_subset=3, ties_prompts=3)
    for r in rb2_rows:  # Parquet wants one type per column
        r.pop("additional_metadata", None)
        r.pop("models", None)
    pq.write_table(pa.Table.from_pylist(rb2_rows), d / "rb2.parquet")
    datasets.Dataset.from_list(rm_bench_rows(per_domain=3)).save_to_disk(str(d / "rmb"))
    return {"dir": d, "checkpoint": d / "rm", "rewardbench": rb1, "rewardbench2": d / "rb2.parquet",
            "rm-bench": d / "rmb", "rows": {"rewardbench": rewardbench_rows(per_subset=2),
                                            "rewardbench2": rb2_rows, "rm-bench": rm_bench_rows(per_domain=3)}}


def _evaluate(run: dict[str, Any], name: str, out: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["evaluate", "--benchmark", name, "--data", str(run[name]), "--checkpoint", str(run["checkpoint"]),
            "--no-progress", *extra]
    if out is not None:
        args += ["--output", str(out)]
    return run_cli(*args)


@pytest.fixture(scope="module")
def outputs(bench_run: dict[str, Any]) -> dict[str, Path]:
    out = {}
    for name in ("rewardbench", "rewardbench2", "rm-bench"):
        folder = bench_run["dir"] / f"out-{name}"
        proc = _evaluate(bench_run, name, folder)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "section" in proc.stdout and "score" in proc.stdout
        out[name] = folder
    return out


def _per_example(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "per_example.jsonl").read_text().splitlines()]


def test_rewardbench_figures_equal_reward_bench_from_the_same_rewards(outputs: dict[str, Path],
                                                                        bench_run: dict[str, Any]) -> None:
    results = json.loads((outputs["rewardbench"] / "results.json").read_text())
    rows = _per_example(outputs["rewardbench"])
    assert [r["id"] for r in rows] == [str(r["id"]) for r in bench_run["rows"]["rewardbench"]]  # input order
    main = [r for r in rows if r["subset"] != "my-subset"]
    want = ref.rewardbench_v1([r["subset"] for r in main], [r["rewards_chosen"][0] for r in main],
                              [r["rewards_rejected"][0] for r in main])
    assert results["sections"] == pytest.approx(want["sections"], abs=1e-12)
    assert results["score"] == pytest.approx(want["score"], abs=1e-12)
    assert [r["correct"] for r in main] == [float(x) for x in want["results"]]
    assert results["data"]["sha256"] and results["model"]["architecture"] == "binary_ranking"
    assert results["settings"]["formulas"].startswith("allenai/reward-bench")
    assert len({round(r["rewards_chosen"][0], 6) for r in rows}) > 10  # not constant: order would show


def test_rewardbench2_and_rm_bench_figures(outputs: dict[str, Path]) -> None:
    rows = _per_example(outputs["rewardbench2"])
    results = json.loads((outputs["rewardbench2"] / "results.json").read_text())
    want = ref.rewardbench_v2([{"id": r["id"], "subset": r["subset"], "scores": r["rewards_chosen"] + r["rewards_rejected"],
                                "num_correct": r["num_correct"]} for r in rows])
    assert results["sections"] == pytest.approx(want, abs=1e-12)
    rows = _per_example(outputs["rm-bench"])
    results = json.loads((outputs["rm-bench"] / "results.json").read_text())
    want = ref.compute_accuracy([{"domain": r["subset"], "score_chosen": r["rewards_chosen"],
                                  "score_rejected": r["rewards_rejected"]} for r in rows])
    assert results["score"] == pytest.approx(want["total_avg_acc"], abs=1e-12)
    assert results["details"]["hard_acc"] == pytest.approx(want["hard_acc"], abs=1e-12)


def test_per_example_rewards_equal_rm_registry_score(outputs: dict[str, Path], bench_run: dict[str, Any]) -> None:
    records, expected = [], []
    for r, got in zip(bench_run["rows"]["rewardbench2"], _per_example(outputs["rewardbench2"])):
        for response, reward in zip(r["chosen"] + r["rejected"], got["rewards_chosen"] + got["rewards_rejected"]):
            records.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                            "response": [{"role": "assistant", "content": response}]})
            expected.append(reward)
    d = bench_run["dir"]
    proc = run_cli("score", "--checkpoint", str(bench_run["checkpoint"]), "--data", str(_jsonl(d / "texts.jsonl", records)),
                   "--output", str(d / "scores.jsonl"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(x)["reward"] for x in (d / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == len(expected) > 40
    assert max(abs(a - b) for a, b in zip(scored, expected)) <= TOL


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: the report test needs a real headless browser "
                    "(Debian: apt-get install chromium; .ci/run installs it)")
    return found


def _dom(page: Path, tmp: Path) -> str:
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_in_a_headless_browser(outputs: dict[str, Path], tmp_path: Path) -> None:
    import re

    page = outputs["rewardbench"] / "report.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: readable offline
    dom = _dom(page, tmp_path)
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    # the page's own check ran in the browser: every image decoded to a picture of non-zero size
    assert 'data-images="3"' in body.group(1) and 'data-images-rendered="3"' in body.group(1), body.group(1)
    for ident in ("chart-sections", "chart-histogram", "chart-length", "table-subsets"):
        assert f'id="{ident}"' in dom
    assert "Chat Hard" in dom and "alpacaeval-easy" in dom
    shot = tmp_path / "report.png"
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                           "--window-size=1000,1400", f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000, proc.stderr[-2000:]


def test_compare_puts_runs_side_by_side(outputs: dict[str, Path], bench_run: dict[str, Any], tmp_path: Path) -> None:
    second = bench_run["dir"] / "out-rewardbench-again"
    if not second.exists():
        proc = _evaluate(bench_run, "rewardbench", second, "--swap-sample", "0")
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "cmp"
    proc = run_cli("evaluate", "--compare", str(outputs["rewardbench"]), str(second), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out-rewardbench" in proc.stdout and "out-rewardbench-again" in proc.stdout and "Chat Hard" in proc.stdout
    comparison = json.loads((out / "comparison.json").read_text())
    assert [m["score"] for m in comparison["models"]][0] == pytest.approx(comparison["models"][1]["score"])
    dom = _dom(out / "report.html", tmp_path)
    assert 'data-images-rendered="1"' in dom
    proc = run_cli("evaluate", "--compare", str(outputs["rewardbench"]), str(outputs["rm-bench"]))
    assert proc.returncode == 2 and "different benchmarks" in proc.stderr
    proc = run_cli("evaluate", "--compare", str(outputs["rewardbench"]), "--swap-sample", "3")
    assert proc.returncode == 2 and "leave out --swap-sample" in proc.stderr


def test_json_output_and_probes(bench_run: dict[str, Any]) -> None:
    proc = _evaluate(bench_run, "rm-bench", None, "--json", "--swap-sample", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    swap = results["probes"]["swap"]
    assert swap["rows"] == 5 and swap["pairs"] == 15 and not swap["flagged"]
    assert swap["swapped_accuracy"] == pytest.approx(swap["expected"], abs=0.02)
    assert swap["relative_reward_change"] < 1e-4
    assert set(results["probes"]["rewards"]["all"]) >= {"mean", "std", "q05", "q50", "q95"}
    assert results["probes"]["length_bias"]["chosen_shorter"]["n"] >= 0


def test_swap_probe_flags_a_model_that_scores_everything_the_same(bench_run: dict[str, Any]) -> None:
    import torch

    from rm_registry.engine import load_reward_model

    model = load_reward_model(bench_run["checkpoint"])
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if name.startswith("head"):
                p.zero_()  # a head that ignores its input: every response gets the same reward
    run = model.benchmark("rewardbench", bench_run["rewardbench"], swap_sample=20)
    swap = run.results["probes"]["swap"]
    assert swap["flagged"] and swap["ties"] == 1.0 and "same either way" in swap["reasons"][0]
    assert run.results["score"] == 0.0  # ties are wrong, as in reward-bench
    off = model.benchmark("rewardbench", bench_run["rewardbench"], swap_sample=0).results["probes"]["swap"]
    assert off["flagged"] and off["ties_all_pairs"] == 1.0 and off["rows"] == 0  # counted over the file anyway
    from rm_registry.engine.evaluation.benchmarks import format_table

    assert "WARNING (swap probe)" in format_table(run.results)


def test_refusals_are_one_line(bench_run: dict[str, Any], tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    cases = [
        (_evaluate(bench_run, "rewardbench", busy), "exists and is not an empty folder"),
        (run_cli("evaluate", "--benchmark", "rewardbnch", "--data", str(bench_run["rewardbench"]), "--checkpoint",
                 str(bench_run["checkpoint"])), "did you mean 'rewardbench'"),
        (run_cli("evaluate", "--checkpoint", str(bench_run["checkpoint"]), "--data", str(bench_run["rewardbench"]),
                 "--output", str(tmp_path / "o")), "--output go with --benchmark"),
        (run_cli("evaluate", "--benchmark", "rewardbench", "--data", str(bench_run["rewardbench"])), "needs --checkpoint"),
        (run_cli("evaluate", "--benchmark", "rewardbench", "--data", str(bench_run["rewardbench2"]), "--checkpoint",
                 str(bench_run["checkpoint"])), "holds a list of 1 where rewardbench takes one string"),
    ]
    for proc, text in cases:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert text in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # nothing half-written


def test_an_hf_folder_with_a_chat_template(tmp_path: Path, bench_run: dict[str, Any]) -> None:
    pytest.importorskip("transformers")
    from hf_models import save_tiny

    folder = save_tiny(tmp_path / "qwen", "qwen2")
    proc = run_cli("evaluate", "--benchmark", "rewardbench", "--data", str(bench_run["rewardbench"]), "--checkpoint",
                   str(folder), "--output", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model"]["chat_template"] is True
    rows = _per_example(tmp_path / "out")[:6]
    records = [{"prompt": [{"role": "user", "content": r["prompt"]}], "response": [{"role": "assistant", "content": c}]}
               for r in bench_run["rows"]["rewardbench"][:6] for c in (r["chosen"], r["rejected"])]
    proc = run_cli("score", "--checkpoint", str(folder), "--data", str(_jsonl(tmp_path / "t.jsonl", records)),
                   "--output", str(tmp_path / "s.jsonl"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(x)["reward"] for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    expected = [v for r in rows for v in (r["rewards_chosen"][0], r["rewards_rejected"][0])]
    assert max(abs(a - b) for a, b in zip(scored, expected)) <= TOL
    # the text scored is the chat template's rendering, as reward-bench builds it
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    from rm_registry.engine import load_reward_model
    from rm_registry.engine.data import encode_text
    from rm_registry.engine.evaluation.benchmarks import render_response

    model = load_reward_model(folder)
    first = bench_run["rows"]["rewardbench"][0]
    text = render_response(first["prompt"], first["chosen"], path="x", row=1, key="chosen")
    conv = [{"role": "user", "content": first["prompt"]}, {"role": "assistant", "content": first["chosen"]}]
    assert encode_text(model.tokenizer, text) == list(tok.apply_chat_template(conv, tokenize=True, return_dict=False))
