"""Benchmark: cold ``rm-registry list`` against the floor, with many installed distributions.

The floor is a bare interpreter that only reads the ``reward_models`` entry points through
``importlib.metadata`` and prints them: no registry can list plugins faster than that without
a cache. ``rm-registry list`` should stay within 1.3 times the floor.

To make the scan realistic, ``--dists`` (default 2,000) extra distributions are created as
fake ``*.dist-info`` folders in a temporary directory put on ``PYTHONPATH`` for both commands;
``--plugins`` of them (default 5) declare a ``reward_models`` entry point, about a third
declare other entry points (console scripts), the rest none. Nothing is imported from them:
listing must not import plugins.

Both commands are run alternately (floor, list, floor, list, ...) after one warm-up each, so
that drifting machine load hits both alike. Each run is a new process ("cold" interpreter;
the OS file cache and Python's bytecode caches are warm for both, as after a pip install;
``--no-bytecode-cache`` keeps ``PYTHONDONTWRITEBYTECODE`` if the environment sets it).

    .venv/bin/python benchmarks/bench_list.py              # 15 rounds each
    .venv/bin/python benchmarks/bench_list.py --rounds 30 --dists 5000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.3
GROUP = "reward_models"

FLOOR_CODE = (
    "from importlib.metadata import entry_points\n"
    f"for ep in entry_points(group={GROUP!r}):\n"
    "    print(ep.name, ep.value)\n"
)


def make_fake_site(root: Path, dists: int, plugins: int) -> None:
    """Write ``dists`` minimal dist-info folders under ``root``; ``plugins`` of them are reward models."""
    for i in range(dists):
        name = f"bench_fake_dist_{i:05d}"
        info = root / f"{name}-1.0.{i}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0.{i}\n", encoding="utf-8"
        )
        (info / "RECORD").write_text("", encoding="utf-8")
        if i < plugins:
            (info / "entry_points.txt").write_text(
                f"[{GROUP}]\nbench_rm_{i} = {name}:plugin\n", encoding="utf-8"
            )
        elif i % 3 == 0:
            (info / "entry_points.txt").write_text(
                f"[console_scripts]\n{name.replace('_', '-')} = {name}.cli:main\n", encoding="utf-8"
            )


def list_command(python: str) -> list[str]:
    """The installed ``rm-registry`` script beside ``python``, else ``python -m rm_registry``."""
    script = Path(python).with_name("rm-registry")
    if script.exists():
        return [str(script), "list"]
    return [python, "-m", "rm_registry", "list"]


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run in seconds; fails loudly if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cold `rm-registry list` vs. reading entry points only.")
    parser.add_argument("--rounds", type=int, default=15, help="runs of each command (default 15)")
    parser.add_argument("--dists", type=int, default=2000, help="extra fake distributions (default 2000)")
    parser.add_argument("--plugins", type=int, default=5, help="of which declare reward_models (default 5)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment to measure")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep PYTHONDONTWRITEBYTECODE from the environment (measures compiling our modules too)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="rm-bench-list-"))
    try:
        make_fake_site(tmp, args.dists, args.plugins)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH", "")) if p)
        env.pop("RM_REGISTRY_DISABLE", None)
        if not args.no_bytecode_cache:
            # A pip install compiles .pyc files; an editable checkout with PYTHONDONTWRITEBYTECODE=1
            # would recompile rm_registry's modules on every run (about 15 ms), which no installed
            # user pays. The warm-up runs below write the caches.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        floor_cmd = [args.python, "-c", FLOOR_CODE]
        list_cmd = list_command(args.python)

        # Sanity: both see the fake plugins (so both really scanned the 2,000 folders).
        out = subprocess.run(list_cmd, env=env, capture_output=True, text=True, check=True).stdout
        missing = [f"bench_rm_{i}" for i in range(args.plugins) if f"bench_rm_{i}" not in out]
        if missing:
            raise SystemExit(f"`{' '.join(list_cmd)}` did not list {missing}; output:\n{out}")

        run_once(floor_cmd, env)  # warm-up: file cache, bytecode caches
        run_once(list_cmd, env)
        floor: list[float] = []
        listing: list[float] = []
        for _ in range(args.rounds):
            floor.append(run_once(floor_cmd, env))
            listing.append(run_once(list_cmd, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    f_med, l_med = statistics.median(floor), statistics.median(listing)
    ratio = l_med / f_med
    print(f"environment: {args.python} + {args.dists} fake distributions ({args.plugins} reward models)")
    print(f"rounds: {args.rounds} each, alternating; bytecode cache: "
          f"{'as the environment says' if args.no_bytecode_cache else 'on'}")
    for label, times in (("floor (entry_points only)", floor), (" ".join(list_cmd), listing)):
        print(f"{label}: median {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"ratio list/floor: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
