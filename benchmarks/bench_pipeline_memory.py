"""Peak memory per rank with pipeline parallelism: a 16-layer, hidden-1024 reward model (about 200M
parameters: float32 weights, gradients and Adam moments take 16 bytes a parameter) trained for a
few steps in one process, then as two pipeline stages under ``torchrun`` (gloo, CPU).

Each run is ``rm-registry train`` in a process of its own; the peak resident memory of its largest
process is read with ``getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process (the wrapper waits
for torchrun, which waits for its workers, so the maximum covers every rank). The losses of the two
runs are printed too: the same steps.

    python benchmarks/bench_pipeline_memory.py                 # figures in docs/scaling.md
    python benchmarks/bench_pipeline_memory.py --steps 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = ["model.num_layers=16", "model.hidden_size=1024", "model.num_attention_heads=16",
         "model.encoder_seq_length=256", "model.data.overlong_policy=truncate", "model.micro_batch_size=2",
         "model.global_batch_size=8", "trainer.rm.val_check_interval=1000", "trainer.rm.save_interval=1000000",
         "seed=1"]

_WRAPPER = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stderr": proc.stderr[-3000:]}))
"""


def run(layout: str, steps: int, out: Path) -> dict[str, object]:
    train = ["-m", "rm_registry", "train", "regression", "--no-progress", "--output", str(out / layout), *MODEL,
             f"trainer.rm.max_steps={steps}"]
    if layout == "PP=2":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *train,
               "model.pipeline_model_parallel_size=2"]
    else:
        cmd = [sys.executable, *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if layout == "PP=2" else "2"}
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{layout} failed:\n{result['stderr']}")
    lines = [json.loads(x) for x in (out / layout / "metrics.jsonl").read_text().splitlines()]
    memory_line = next((x for x in str(result["stderr"]).splitlines() if x.startswith("memory per rank")), "")
    return {"layout": layout, "peak_mib": round(int(result["peak_kib"]) / 1024),
            "losses": [round(r["loss"], 6) for r in lines if r["split"] == "train"], "memory_line": memory_line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(layout, args.steps, Path(tmp)) for layout in ("1 process", "PP=2")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| layout | peak resident memory of the largest process | train losses |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['peak_mib']:,} MiB | {', '.join(str(x) for x in r['losses'])} |")
    for r in results:
        print(f"{r['layout']}: {r['memory_line']}")


if __name__ == "__main__":
    main()
