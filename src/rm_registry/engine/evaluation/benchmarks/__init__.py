"""Benchmarks as papers report them, on local files: RewardBench, RewardBench 2, RM-Bench.

``rm-registry evaluate --benchmark NAME --data FILE --checkpoint DIR [--output DIR]`` and
:meth:`rm_registry.engine.LoadedRewardModel.benchmark`. Data flow::

    file (JSON Lines, Parquet, Arrow, save_to_disk folder, hf://; the benchmark's own columns)
      -> Example rows, checked (_spec; one module per benchmark: _rewardbench, _rewardbench2, _rm_bench;
         _catalog names them)
      -> each response rendered as [user: prompt, assistant: response] (the chat template where there is one)
      -> LoadedRewardModel.rewards: batched, length-sorted, across DP ranks -> [T, K]
      -> plugin.scalar_rewards (default: score_outputs' reward) -> [T]
      -> the benchmark's figures, the probes (_probes: swap, length bias, distribution)
      -> table, results.json, per_example.jsonl, report.html (_report); --compare side by side
"""

from __future__ import annotations

from ._catalog import BENCHMARKS, get_benchmark
from ._report import compare_results, format_comparison, format_table
from ._run import DEFAULT_SWAP_SAMPLE, read_benchmark, render_response, run_benchmark
from ._spec import Benchmark, BenchmarkRun, Example, Figures

__all__ = [
    "BENCHMARKS",
    "DEFAULT_SWAP_SAMPLE",
    "Benchmark",
    "BenchmarkRun",
    "Example",
    "Figures",
    "compare_results",
    "format_comparison",
    "format_table",
    "get_benchmark",
    "read_benchmark",
    "render_response",
    "run_benchmark",
]
