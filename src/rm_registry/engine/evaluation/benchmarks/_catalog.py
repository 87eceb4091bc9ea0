"""The benchmarks ``--benchmark`` knows, by name."""

from __future__ import annotations

import difflib

from ...._errors import ConfigError
from ._rewardbench import RewardBench
from ._rewardbench2 import RewardBench2
from ._rm_bench import RMBench
from ._spec import Benchmark

__all__ = ["BENCHMARKS", "get_benchmark"]

#: ``--benchmark`` names.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (RewardBench(), RewardBench2(), RMBench())}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; ConfigError with a did-you-mean otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"rewardbench1": "rewardbench", "reward-bench": "rewardbench", "rewardbench-2": "rewardbench2",
               "reward-bench-2": "rewardbench2", "rmbench": "rm-bench"}
    key = aliases.get(key, key)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    close = difflib.get_close_matches(key, list(BENCHMARKS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"--benchmark {name!r}: unknown benchmark{hint} (known: {', '.join(BENCHMARKS)})")
