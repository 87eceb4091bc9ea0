"""Data path of a new user's first run: time to the first optimizer step and peak memory, rm-registry
(token cache cold / warm / off, DP=1 and DP=2) vs. TRL's ``RewardTrainer`` (``datasets``, Arrow).

Needs TRL for the comparison (``pip install trl``; ``--skip-trl`` without it). Run the full benchmark
(issue 21: 50,000 pairs of about 1,500 tokens; several minutes, several GB of disk under ``--work``)::

    python benchmarks/bench_data.py --work /tmp/bench_data --json /tmp/bench_data/results.json

and a quick smoke run with ``--pairs 2000``. What it does:

* writes ``--pairs`` synthetic preference pairs ``{"prompt", "chosen", "rejected"}`` (JSON Lines,
  seeded; about ``--tokens-per-pair`` tokens per pair counting the prompt in both sequences, a
  third of each sequence prompt) and a ``tokenizers`` WordLevel ``tokenizer.json`` folder whose
  words have ids 30,000 and up (32,000+ entries, then ``<unk>``, ``<|endoftext|>``, ``<pad>``);
  both are reused from ``--work`` when present;
* runs each of these in its own fresh process (2 layers, hidden 64, 4 heads, sequence length 2048,
  8 pairs per step of 1 pair per micro-batch, one step, float32 on CPU): ours with the token cache
  cold (cache emptied first), warm (the same command again), off (``model.data.cache=false``);
  ours on a 64-pair file (the engine's own memory, without the data); TRL with a GPT-2 of the same
  shape (its default settings, ``datasets`` cache emptied first); ours at DP=2 with the cache warm
  (``rm-registry launch --nproc-per-node 2 train ...``);
* measures the wall time from process start to the first optimizer step done (ours: the first
  ``train`` line of ``metrics.jsonl``; TRL: a callback after its first step) and to exit, the peak
  RSS (``wait4``'s ``ru_maxrss``; DP=2: the sum of the two ranks' polled peaks), the peak PSS of the
  ranks together (shared pages counted once; psutil, every 0.2 s) and the RSS / PSS of the pages
  mapped from the cache folder;
* prints a Markdown table and the checks of issue 21 (peak RSS per rank <= TRL's, cold run no slower
  than TRL, warm run <= 1/3 of the cold one, DP=2 cache pages shared) and writes them to ``--json``.
  With few pairs the startup (imports, model) dominates every run: the timing checks mean something
  at the full size only. Logs of every run: ``WORK/logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEQ_LENGTH, LAYERS, HIDDEN, HEADS, PAIRS_PER_STEP = 2048, 2, 64, 4, 8
ID_OFFSET, N_WORDS = 30_000, 4_096  # every real word's id is >= 30,000
EOS, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"
GB = 1e9


# --------------------------------------------------------------------------------------- data
def _words() -> list[str]:
    import random

    rng = random.Random(0)
    syll = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < N_WORDS:
        words.add("".join(rng.choices(syll, k=rng.randint(1, 3))))
    return sorted(words)


def write_tokenizer(folder: Path) -> Path:
    """A WordLevel ``tokenizer.json`` (+ ``tokenizer_config.json``) read by rm-registry and transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {f"<unused{i}>": i for i in range(ID_OFFSET)}
    for w in [*_words(), "Question:", "Answer:"]:
        vocab[w] = len(vocab)
    for special in (UNK, EOS, PAD):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([UNK, EOS, PAD])
    tok.save(str(folder / "tokenizer.json"))
    specials = {"eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "tokenizer_class": "PreTrainedTokenizerFast",
                                                              "model_max_length": SEQ_LENGTH}))
    return folder


def write_pairs(path: Path, n: int, tokens_per_pair: int, seed: int) -> None:
    """``n`` pairs; each sequence (prompt + response) about ``tokens_per_pair / 2`` tokens, a third prompt.
    The chosen response draws "good" words (the first 32) more often than the rejected one."""
    import numpy as np

    words = _words()
    rng = np.random.default_rng(seed)
    side = tokens_per_pair / 2 - 1  # EOS
    weights = {}
    for name, good in (("chosen", 0.7), ("rejected", 0.3)):
        p = np.full(N_WORDS, 0.8 / (N_WORDS - 64))
        p[:32], p[32:64] = 0.2 * good / 32, 0.2 * (1 - good) / 32
        weights[name] = p / p.sum()

    def length(mean: float) -> int:  # log-normal, sigma 0.25: median = mean / exp(sigma^2 / 2)
        return int(np.clip(rng.lognormal(np.log(mean) - 0.03125, 0.25), 4, SEQ_LENGTH / 2 - 8))

    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            body = " ".join(words[i] for i in rng.integers(0, N_WORDS, length(side / 3) - 2))
            row = {"prompt": f"Question: {body}\nAnswer:"}
            for name in ("chosen", "rejected"):
                row[name] = " " + " ".join(words[i] for i in rng.choice(N_WORDS, length(2 * side / 3), p=weights[name]))
            fh.write(json.dumps(row) + "\n")
    tmp.rename(path)


def measured_tokens(data: Path, tok_dir: Path, n: int = 200) -> float:
    """Mean tokens per pair (prompt in both sequences, EOS each) of the first ``n`` pairs."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    with data.open(encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(n)]
    texts = [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")]
    return sum(len(e.ids) + 1 for e in tok.encode_batch(texts)) / len(rows)


# ------------------------------------------------------------------------------- measuring
def _cache_state(cache: Path) -> dict[str, str]:
    return {m.parent.name: json.loads(m.read_text()).get("created", "") for m in cache.glob("*/meta.json")}


def measure(name: str, cmd: list[str], *, log: Path, done: Path, env: dict[str, str], cache: Path | None,
            timeout: float, interval: float = 0.2) -> dict[str, Any]:
    """Run ``cmd``; time to ``done`` appearing (a file; ``metrics.jsonl``: its first train line) and to exit;
    peak RSS (wait4), the leaves' (ranks') RSS and PSS peaks, the tree's PSS peak, cache-mapped RSS / PSS."""
    import psutil

    before = _cache_state(cache) if cache else {}
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    root = psutil.Process(proc.pid)
    first = None
    rss: dict[int, int] = {}
    pss_peak = tree_pss_peak = map_rss_peak = map_pss_peak = 0
    map_rss_rank: dict[int, int] = {}
    prefix = str(cache.resolve()) if cache else None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.perf_counter() - t0
        if first is None and done.exists() and (done.suffix != ".jsonl" or '"train"' in done.read_text()):
            first = now
        if pid:
            break
        if now > timeout:
            proc.kill()
        try:  # a sample where a process just ended is skipped; the leaves are the ranks (not a launcher)
            procs = [root, *root.children(recursive=True)]
            parents = {p.ppid() for p in procs}
            infos = [(p, p.memory_full_info()) for p in procs]
            leaves = [(p, m) for p, m in infos if p.pid not in parents]
            maps = {p.pid: [m for m in p.memory_maps(grouped=True) if m.path.startswith(prefix)] if prefix else []
                    for p, _ in leaves}
        except psutil.Error:
            time.sleep(interval)
            continue
        for p, m in leaves:
            rss[p.pid] = max(rss.get(p.pid, 0), m.rss)
            map_rss_rank[p.pid] = max(map_rss_rank.get(p.pid, 0), sum(x.rss for x in maps[p.pid]))
        pss_peak = max(pss_peak, sum(m.pss for _, m in leaves))
        tree_pss_peak = max(tree_pss_peak, sum(m.pss for _, m in infos))
        map_rss_peak = max(map_rss_peak, sum(x.rss for v in maps.values() for x in v))
        map_pss_peak = max(map_pss_peak, sum(x.pss for v in maps.values() for x in v))
        time.sleep(interval)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.exit(f"[{name}] failed (exit {rc}); the end of {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    after = _cache_state(cache) if cache else {}
    ranks = sorted(rss.values(), reverse=True)
    return {"name": name, "first_step_s": first, "exit_s": time.perf_counter() - t0,
            "peak_rss": usage.ru_maxrss * 1024, "rank_rss": ranks, "peak_pss": pss_peak, "tree_pss": tree_pss_peak,
            "cache_rss_peak": map_rss_peak, "cache_rss_per_rank": max(map_rss_rank.values(), default=0),
            "cache_pss_peak": map_pss_peak, "cache_reused": bool(before) and before == after,
            "cache_built": sorted(set(after) - set(before)), "log": str(log)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours_cmd(data: Path, out: Path, tok: Path, cache: Path, extra: list[str], launch: list[str] = ()) -> list[str]:
    exe = Path(sys.executable).with_name("rm-registry")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "rm_registry"]
    return [*base, *launch, "train", "binary_ranking", "--data", str(data), "--output", str(out), "--no-progress",
            f"model.num_layers={LAYERS}", f"model.hidden_size={HIDDEN}", f"model.num_attention_heads={HEADS}",
            f"model.encoder_seq_length={SEQ_LENGTH}", "model.micro_batch_size=1",
            f"model.global_batch_size={PAIRS_PER_STEP}", "trainer.rm.max_steps=1",
            "trainer.rm.val_check_interval=1000", "trainer.rm.save_interval=1000",  # the last step saves anyway
            "model.tokenizer.library=huggingface", f"model.tokenizer.path={tok}", f"model.data.cache_dir={cache}",
            *extra]


# ------------------------------------------------------------------------------------- TRL
def trl_child(data: str, tok_dir: str, out: str, marker: str) -> None:
    from datasets import load_dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(tok_dir) / "tokenizer.json"), eos_token=EOS,
                                  pad_token=PAD, unk_token=UNK)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok), n_positions=SEQ_LENGTH, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, num_labels=1,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    dataset = load_dataset("json", data_files={"train": data})["train"]  # Arrow files in HF_DATASETS_CACHE
    args = RewardConfig(output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=PAIRS_PER_STEP,
                        max_steps=1, logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
                        bf16=False, max_length=SEQ_LENGTH, use_cpu=True, disable_tqdm=True)

    class FirstStep(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            Path(marker).write_text(str(time.time()))

    RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                  callbacks=[FirstStep()]).train()


# ------------------------------------------------------------------------------------ driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=50_000)
    ap.add_argument("--tokens-per-pair", type=int, default=1500, help="chosen + rejected, prompt in both")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_data",
                    help="data, caches, run folders, logs (default: TMPDIR/bench_data)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-dp2", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--_trl-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._trl_child:
        trl_child(*args._trl_child)
        return
    work = args.work.resolve()
    tok = work / "tokenizer"
    data = work / f"pairs-{args.pairs}-{args.tokens_per_pair}-{args.seed}.jsonl"
    small = work / "pairs-64.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    if not (tok / "tokenizer.json").exists():
        write_tokenizer(tok)
    for path, n in ((data, args.pairs), (small, 64)):
        if not path.exists():
            t = time.perf_counter()
            write_pairs(path, n, args.tokens_per_pair, args.seed)
            print(f"wrote {path} ({path.stat().st_size / GB:.2f} GB) in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
    per_pair = measured_tokens(data, tok)
    cache, runs, logs = work / "token-cache", work / "runs", work / "logs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "hf-datasets")}
    env.pop("RM_REGISTRY_CACHE", None)

    def ours(name: str, file: Path, extra: list[str] = (), launch: list[str] = ()) -> dict[str, Any]:
        out = runs / name
        return measure(name, ours_cmd(file, out, tok, cache, list(extra), list(launch)), log=logs / f"{name}.log",
                       done=out / "metrics.jsonl", env=env, cache=cache, timeout=args.timeout)

    shutil.rmtree(cache, ignore_errors=True)
    results = {"cold": ours("cold", data), "warm": ours("warm", data),
               "no-cache": ours("no-cache", data, ["model.data.cache=false"]),
               "baseline-64": ours("baseline-64", small, ["model.data.cache=false"])}
    if not args.skip_trl:
        shutil.rmtree(work / "hf-datasets", ignore_errors=True)
        marker = runs / "trl-first-step"
        cmd = [sys.executable, __file__, "--_trl-child", str(data), str(tok), str(runs / "trl"), str(marker)]
        results["trl"] = measure("trl", cmd, log=logs / "trl.log", done=marker, env=env, cache=None,
                                 timeout=args.timeout)
        results["trl"]["arrow_bytes"] = sum(f.stat().st_size for f in (work / "hf-datasets").rglob("*.arrow"))
    if not args.skip_dp2:
        launch = ["launch", "--nproc-per-node", "2", "--master-port", str(_free_port())]
        results["dp2-warm"] = ours("dp2-warm", data, launch=launch)
        results["dp2-warm"]["peak_rss"] = sum(results["dp2-warm"]["rank_rss"][:2])  # the two ranks' peaks

    base = results["baseline-64"]
    print(f"\n{args.pairs} pairs, {per_pair:.0f} tokens per pair (measured), {data.stat().st_size / GB:.2f} GB JSONL; "
          f"{os.cpu_count()} CPUs\n")
    print("| run | first step s | exit s | peak RSS GB | peak PSS GB | notes |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        notes = []
        if r["name"] not in ("trl", "no-cache", "baseline-64"):
            notes.append("cache reused" if r["cache_reused"] else f"cache built ({len(r['cache_built'])} entries)")
            notes.append(f"cache pages RSS {r['cache_rss_peak'] / 1e6:.1f} MB, PSS {r['cache_pss_peak'] / 1e6:.1f} MB")
        if r["name"] != "baseline-64":
            notes.append(f"RSS over 64-pair run {(r['rank_rss'][0] - base['rank_rss'][0]) / 1e6:+.0f} MB")
        if r["name"] == "dp2-warm":
            notes.append("ranks " + " + ".join(f"{x / GB:.2f}" for x in r["rank_rss"][:2]) + " GB")
        if r["name"] == "trl":
            notes.append(f"Arrow files {r['arrow_bytes'] / GB:.2f} GB")
        first = "-" if r["first_step_s"] is None else f"{r['first_step_s']:.1f}"
        print(f"| {r['name']} | {first} | {r['exit_s']:.1f} | {r['peak_rss'] / GB:.2f} | {r['peak_pss'] / GB:.2f} | "
              f"{'; '.join(notes)} |")

    checks: dict[str, bool] = {}
    cold, warm = results["cold"], results["warm"]
    if "trl" in results:
        trl = results["trl"]
        for name in ("cold", "warm", "no-cache"):
            checks[f"{name}: peak RSS <= TRL's"] = results[name]["peak_rss"] <= trl["peak_rss"]
        if "dp2-warm" in results:
            checks["dp2: each rank's peak RSS <= TRL's"] = results["dp2-warm"]["rank_rss"][0] <= trl["peak_rss"]
        checks["cold: first step no later than TRL's"] = cold["first_step_s"] <= trl["first_step_s"]
    checks["warm: first step <= cold / 3"] = warm["first_step_s"] <= cold["first_step_s"] / 3
    checks["warm: cache reused"] = warm["cache_reused"]
    if "dp2-warm" in results:
        dp2 = results["dp2-warm"]
        checks["dp2: cache reused"] = dp2["cache_reused"]
        checks["dp2: cache pages' PSS, both ranks, < 1.5 x one rank's cache RSS"] = (  # mapped once
            dp2["cache_pss_peak"] < 1.5 * max(dp2["cache_rss_per_rank"], 1))
    print()
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": args.pairs, "tokens_per_pair": per_pair, "jsonl_bytes":
                                         data.stat().st_size, "cpus": os.cpu_count(), "runs": results,
                                         "checks": checks}, indent=1) + "\n")


if __name__ == "__main__":
    main()
