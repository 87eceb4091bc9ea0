"""Reward serving throughput: `rm-registry serve` with dynamic batching, against the same server with
batching off (one forward pass per request, as OpenRLHF's server does) and against offline
`rm-registry score` of the same texts.

64 concurrent clients each send single-text requests (OpenRLHF and verl send one sample per
request) until every text is scored; the figures are texts/s and the request latency (p50, p99).
Offline scoring is timed in its own process from the loaded model to the written file (the
server's figures also exclude start-up). Every path's rewards are checked to agree.

The two servers and the offline process are started once and stay loaded; the three measurements
then alternate for --rounds rounds and the median of each is reported, so that a machine whose load
changes during the run (shared CI runners) skews all three alike. Every process runs torch with
--threads intra-op threads. With --pin the load generator runs on a CPU of its own and every
server and the offline process on the others (in a deployment the RLHF clients run elsewhere).

It also times the model's forward passes alone (no HTTP, no files) with one text per pass and with
the batching server's mean number of texts per pass: their ratio is the most that batching across
requests can gain on this machine, whatever the server does.

    python benchmarks/bench_serve.py [--checkpoint RUN] [--texts 512] [--clients 64] [--rounds 3]

Without --checkpoint a small binary_ranking model (2 layers, hidden 64) is trained for one step
in a temporary folder (weights do not matter for speed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
         "model.encoder_seq_length=256", "model.micro_batch_size=8", "model.global_batch_size=8",
         "trainer.rm.max_steps=1", "trainer.rm.save_interval=1", "trainer.rm.val_check_interval=1"]
_BANNER = re.compile(r"on http://127\.0\.0\.1:(\d+) ")


def _texts(n: int, seed: int = 0) -> list[str]:
    """Prompt + response texts of varied length (about 40 to 250 bytes-tokens)."""
    rng = random.Random(seed)
    words = "the a reward model scores answers helpful honest harmless clear short long because".split()
    return [f"User: question {i}?\nAssistant: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 35)))
            for i in range(n)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rm_registry", *args]


class Offline:
    """A process that loads the model once, then times `score_file` (what `rm-registry score` runs)
    each time it is asked, or the model alone (:meth:`model_alone`)."""

    CODE = (
        "import json, sys, time\n"
        "from rm_registry.engine.api import load_reward_model, read_score_records, score_file\n"
        "m = load_reward_model(sys.argv[1])\n"
        "ids = [m.encode(texts[0])[0] for _, texts in read_score_records(sys.argv[2], None)]\n"
        "for line in sys.stdin:\n"
        "    if line.startswith('model'):\n"
        "        size = int(line.split()[1])\n"
        "        t = time.perf_counter()\n"
        "        for x in ids: m.rewards([x])\n"
        "        one = time.perf_counter() - t\n"
        "        t = time.perf_counter()\n"
        "        for i in range(0, len(ids), size): m.rewards(ids[i : i + size], batch_size=size)\n"
        "        print(json.dumps([one, time.perf_counter() - t]), flush=True)\n"
        "        continue\n"
        "    t = time.perf_counter()\n"
        "    score_file(m, sys.argv[2], sys.argv[3], progress=False)\n"
        "    print(time.perf_counter() - t, flush=True)\n"
    )

    def __init__(self, checkpoint: str, data: Path, out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, checkpoint, str(data), str(out)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def run(self) -> tuple[float, list[float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        seconds = float(self.proc.stdout.readline())
        return seconds, [json.loads(line)["reward"] for line in self.out.read_text().splitlines()]

    def model_alone(self, size: int) -> tuple[float, float]:
        """Seconds of the model's forward passes alone (no HTTP, no file) over every text: one text per
        pass, and ``size`` texts per pass (the clients' order, each pass length-sorted): the most
        batching can gain over one pass per request on this machine."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"model {size}\n")
        self.proc.stdin.flush()
        one, batched = json.loads(self.proc.stdout.readline())
        return one, batched

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _start(checkpoint: str, extra: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(_cli("serve", "--checkpoint", checkpoint, "--port", "0", *extra), text=True,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        m = _BANNER.search(line)
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def _load(url: str, texts: list[str], clients: int) -> tuple[float, list[float], list[float]]:
    """Every text once, one per request, from ``clients`` concurrent clients (threads, each with its own
    keep-alive connection; the standard library's client costs little CPU, so that on a small machine
    the load generator is not what limits the server): seconds, latencies, rewards."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    where = urlsplit(url)
    rewards: list[float] = [0.0] * len(texts)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(todo: Any) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                break
            started = time.perf_counter()
            conn.request("POST", "/get_reward", body=json.dumps({"query": [texts[i]]}), headers=headers)
            response = conn.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            rewards[i] = json.loads(body)["rewards"][0]
        conn.close()

    def run(todo: Any) -> float:
        threads = [threading.Thread(target=client, args=(todo,)) for _ in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started

    run(iter(range(min(clients, len(texts)))))  # warm-up
    latencies.clear()
    seconds = run(iter(range(len(texts))))
    return seconds, latencies, rewards


def _serve(url: str, texts: list[str], clients: int) -> dict[str, Any]:
    seconds, latencies, rewards = _load(url, texts, clients)
    q = statistics.quantiles(latencies, n=100)
    return {"texts_per_s": len(texts) / seconds, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
            "rewards": rewards}


def _mean_batch(url: str) -> float:
    """Mean texts per forward pass so far, from the server's Prometheus metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
        text = response.read().decode()
    found = dict(re.findall(r"^rm_registry_batch_texts_(sum|count) (\S+)$", text, re.M))
    return float(found["sum"]) / max(1.0, float(found["count"]))


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in runs) for key in ("texts_per_s", "p50_ms", "p99_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a run or checkpoint folder (default: train a small model)")
    parser.add_argument("--texts", type=int, default=512, help="texts scored by each path in each round")
    parser.add_argument("--clients", type=int, default=64, help="concurrent single-text clients")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every process")
    parser.add_argument("--serve-args", default="", help="extra flags of the batching server, e.g. "
                                                         "\"--max-padding-tokens 256\"")
    parser.add_argument("--pin", action="store_true",
                        help="run the load generator on the last CPU and the servers and offline scoring on the "
                             "others (as in a deployment, where the RLHF clients run elsewhere); default: all "
                             "processes share every CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    client_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least two CPUs")
        client_cpus = {cpus[-1]}
        os.sched_setaffinity(0, cpus[:-1])  # inherited by the servers and the offline process started below
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[dict[str, Any]]] = {"batched": [], "unbatched": []}
    offline_times: list[float] = []
    model_runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = str(d / "rm")
            subprocess.run(_cli("train", "binary_ranking", "--output", checkpoint, "--no-progress", *SMALL),
                           check=True, capture_output=True, env=env)
        texts = _texts(args.texts)
        data = d / "texts.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        offline_proc = Offline(checkpoint, data, d / "scores.jsonl", env)
        servers = {"batched": _start(checkpoint, args.serve_args.split(), env), "unbatched": _start(checkpoint, ["--no-batching"], env)}
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)  # the client threads, started later, inherit it
        try:
            for _ in range(args.rounds):
                seconds, offline_rewards = offline_proc.run()
                offline_times.append(seconds)
                for name, (_, url) in servers.items():
                    run = _serve(url, texts, args.clients)
                    worst = max(abs(a - b) for a, b in zip(run.pop("rewards"), offline_rewards))
                    assert worst <= 1e-5, f"{name} serve differs from offline score by {worst:.2e}"
                    runs[name].append(run)
                mean_batch = _mean_batch(servers["batched"][1])
                one, batched_s = offline_proc.model_alone(max(1, round(mean_batch)))
                model_runs.append({"one_per_pass": len(texts) / one, "batched": len(texts) / batched_s,
                                   "batch": mean_batch})
        finally:
            offline_proc.close()
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
    batched, unbatched = _median(runs["batched"]), _median(runs["unbatched"])
    offline = len(texts) / statistics.median(offline_times)
    model = {key: statistics.median(r[key] for r in model_runs) for key in model_runs[0]}
    result = {"texts": len(texts), "clients": args.clients, "rounds": args.rounds, "threads": args.threads,
              "serve_args": args.serve_args, "pinned": args.pin,
              "serve": batched, "serve_no_batching": unbatched,
              "offline_score_texts_per_s": offline,
              "model_alone_texts_per_s": model,
              "model_alone_batching_speedup": model["batched"] / model["one_per_pass"],
              "batching_speedup": batched["texts_per_s"] / unbatched["texts_per_s"],
              "serve_vs_offline": batched["texts_per_s"] / offline}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(texts)} texts, {args.clients} concurrent single-text clients, median of {args.rounds} rounds, "
          f"{args.threads} torch thread(s) per process (rewards agree to 1e-5)"
          + ("; load generator pinned to its own CPU" if args.pin else ""))
    print(f"{'':<26}{'texts/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, run in (("serve (batching)", batched), ("serve --no-batching", unbatched)):
        print(f"{name:<26}{run['texts_per_s']:>10.1f}{run['p50_ms']:>10.1f}{run['p99_ms']:>10.1f}")
    print(f"{'offline rm-registry score':<26}{offline:>10.1f}")
    print(f"{'model alone, 1 per pass':<26}{model['one_per_pass']:>10.1f}")
    print(f"{'model alone, batched':<26}{model['batched']:>10.1f}   ({model['batch']:.1f} texts per pass: the "
          "batching server's mean)")
    print(f"batching speed-up {result['batching_speedup']:.2f}x (goal >= 4x); "
          f"serve / offline {result['serve_vs_offline']:.2f}x (goal >= 0.8x); the model alone gains "
          f"{result['model_alone_batching_speedup']:.2f}x from the same batching (the most the server can)")


if __name__ == "__main__":
    main()
