"""Run a benchmark: rows -> rendered texts -> the engine's batched scoring -> figures and probes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from ...._errors import ConfigError, DataError
from ... import _contract
from ...data import encode_text, join_prompt_response, read_jsonl
from ...data._sources import content_hash, with_columns
from ._probes import distribution, length_bias, swap_result
from ._catalog import get_benchmark
from ._report import check_results_dir, write_results
from ._spec import Benchmark, BenchmarkRun, Example

#: What the functions here take as ``model``: a :class:`rm_registry.engine.LoadedRewardModel`
#: (not imported: the API module imports this one).
LoadedRewardModel = Any

__all__ = ["DEFAULT_SWAP_SAMPLE", "read_benchmark", "render_response", "run_benchmark"]

#: Rows scored again with chosen and rejected exchanged (``--swap-sample``).
DEFAULT_SWAP_SAMPLE = 500


def render_response(prompt: Any, response: str, *, path: str | Path, row: int, key: str) -> str:
    """The text scored for one response: the conversation ``[user: prompt, assistant: response]``
    (a message-list prompt is used as it is), which the model's chat template renders when it has
    one, as ``reward-bench`` does; otherwise the ``role: content`` lines that ``score`` makes of
    ``{"prompt": [user message], "response": [assistant message]}``."""
    user = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return join_prompt_response(user, [{"role": "assistant", "content": response}], path=path, line=row,
                                response_key=key)


def _score(model: LoadedRewardModel, examples: Sequence[Example], *, path: str | Path, progress: bool
           ) -> tuple[list[list[float]], list[list[float]], int, int]:
    """Rewards of every example's chosen and rejected responses; identical texts are scored once.

    Returns ``(chosen, rejected, texts scored, texts cut to encoder_seq_length)``.
    """
    index: dict[tuple[str, str], int] = {}
    ids: list[list[int]] = []
    positions: list[list[int]] = []  # token-level plugins: where each text's head is read
    token_level = _contract.is_token_level(model.plugin)
    refs: list[tuple[list[int], list[int]]] = []
    policy = "error" if model.cfg.model.data.overlong_policy == "error" else "truncate"
    cut = 0
    for ex in examples:
        prompt_key = ("s:" + ex.prompt) if isinstance(ex.prompt, str) else ("m:" + json.dumps(ex.prompt, sort_keys=True))
        sides: list[list[int]] = []
        for side, responses in (("chosen", ex.chosen), ("rejected", ex.rejected)):
            mine = []
            for k, response in enumerate(responses):
                key = (prompt_key, response)
                if key not in index:
                    name = side if len(responses) == 1 else f"{side}[{k}]"
                    text = render_response(ex.prompt, response, path=path, row=ex.row, key=name)
                    index[key] = len(ids)
                    if token_level:  # the plugin's steps of the response (the prompt is not one)
                        record = {"text": str(text),
                                  "prompt": str(render_response(ex.prompt, "", path=path, row=ex.row, key=name))}
                        (fitted, where), *_ = _contract.score_sequences(model.plugin, record, model.tokenizer,
                                                                        model.cfg, path=path, line=ex.row)
                        positions.append(where)
                    else:
                        fitted, was_cut = model._fit(encode_text(model.tokenizer, text), policy, path=path,
                                                     line=ex.row, key=name)
                        cut += was_cut
                    ids.append(fitted)
                mine.append(index[key])
            sides.append(mine)
        refs.append((sides[0], sides[1]))
    if token_level:  # one reward per text: score's aggregate of its step rewards
        rows = model.rewards(ids, progress=progress, positions=positions)  # [P, K]
        records = _contract.score_records(model.plugin, rows, [len(p) for p in positions], model.cfg)
        scalar = [float(r["reward"]) for r in records]
    else:
        rewards = model.rewards(ids, progress=progress)  # [T, K], sorted by length, split across DP ranks
        scalar = _contract.scalar_rewards(model.plugin, rewards, model.cfg).tolist()  # [T]
    bad = [i for i, v in enumerate(scalar) if not math.isfinite(v)]
    if bad:
        row = next(ex.row for ex, (c, r) in zip(examples, refs) if bad[0] in c or bad[0] in r)
        raise ConfigError(f"{model.checkpoint}: the model gives NaN or inf rewards for {len(bad)} of {len(scalar)} "
                          f"texts (the first of row {row} of {path}); the checkpoint is damaged or its training "
                          "diverged (see its metrics.jsonl)")
    chosen = [[scalar[i] for i in c] for c, _ in refs]
    rejected = [[scalar[i] for i in r] for _, r in refs]
    return chosen, rejected, len(ids), cut


def _sample(n: int, m: int) -> list[int]:
    """``m`` row indices spread evenly over ``n`` (all of them when ``m >= n``)."""
    if m >= n:
        return list(range(n))
    return sorted({(i * n) // m for i in range(m)})


def _swap_probe(model: LoadedRewardModel, bench: Benchmark, examples: Sequence[Example],
                chosen: Sequence[Sequence[float]], rejected: Sequence[Sequence[float]], sample: int, *,
                path: str | Path, every: Sequence[tuple[float, float, int, int]]) -> dict[str, Any]:
    """``every``: all pairs of the file, ``(chosen, rejected, ...)`` rewards first (their ties are counted)."""
    ties_all = sum(p[0] == p[1] for p in every) / len(every) if every else 0.0
    picked = _sample(len(examples), sample)
    if not picked:
        out = swap_result([], [], [], ties_all=ties_all, pairs_all=len(every))
        out.update(rows=0, skipped="--swap-sample 0: not scored again")
        return out
    swapped = [examples[i].swapped() for i in picked]
    s_chosen, s_rejected, _, _ = _score(model, swapped, path=path, progress=False)
    original, after, again = [], [], []
    for n, i in enumerate(picked):
        for a, b in bench.pairs(examples[i]):
            original.append((chosen[i][a], rejected[i][b]))
            after.append((s_chosen[n][b], s_rejected[n][a]))
        again += list(zip(chosen[i], s_rejected[n])) + list(zip(rejected[i], s_chosen[n]))
    out = swap_result(original, after, again, ties_all=ties_all, pairs_all=len(every))
    out["rows"] = len(picked)
    return out


def read_benchmark(benchmark: str, data: str | Path, columns: Any = None) -> list[Example]:
    """The rows of ``data`` as the benchmark's examples, checked (no model needed).

    ``columns``: ``model.data.columns``, the benchmark's column name -> the file's.

    Raises:
        ConfigError: an unknown benchmark; DataError: a row that does not fit its layout.
    """
    bench = get_benchmark(benchmark)
    records = list(read_jsonl(with_columns(str(data), columns)))
    if not records:
        raise DataError(data, None, "holds no rows")
    return bench.read(data, records)


def run_benchmark(model: LoadedRewardModel, benchmark: str, data: str | Path, *, output: str | Path | None = None,
                  swap_sample: int = DEFAULT_SWAP_SAMPLE, progress: bool = False) -> BenchmarkRun:
    """Score the benchmark file ``data`` with ``model`` and compute the benchmark's figures and the probes.

    With ``output``, writes ``results.json``, ``per_example.jsonl`` and ``report.html`` into that new
    (or empty) folder, all at once (a hidden temporary folder renamed into place). Under torchrun
    the texts are split across data-parallel ranks; every rank returns the same figures and only
    the first writes.

    Raises:
        ConfigError: an unknown benchmark (with a did-you-mean) or an unusable ``output``.
        DataError: a row that does not fit the benchmark's layout, naming the file, row and column.
    """
    bench = get_benchmark(benchmark)
    if swap_sample < 0:
        raise ConfigError(f"--swap-sample={swap_sample}: expected a number of rows >= 0")
    out_dir = Path(output) if output is not None else None
    if out_dir is not None:
        check_results_dir(out_dir)
    started = time.perf_counter()
    examples = read_benchmark(bench.name, data, model.cfg.model.data.get("columns"))
    chosen, rejected, texts, cut = _score(model, examples, path=data, progress=progress)
    fig = bench.figures(examples, chosen, rejected)
    scoring_seconds = time.perf_counter() - started

    lengths_c = [[len(t) for t in ex.chosen] for ex in examples]
    lengths_r = [[len(t) for t in ex.rejected] for ex in examples]
    all_rewards = [v for row in chosen for v in row] + [v for row in rejected for v in row]
    all_lengths = [v for row in lengths_c for v in row] + [v for row in lengths_r for v in row]
    pairs = [(chosen[i][a], rejected[i][b], lengths_c[i][a], lengths_r[i][b])
             for i, ex in enumerate(examples) for a, b in bench.pairs(ex)]
    swap = _swap_probe(model, bench, examples, chosen, rejected, swap_sample, path=data, every=pairs)
    probes = {
        "swap": swap,
        "length_bias": length_bias(all_rewards, all_lengths, pairs),
        "rewards": {"all": distribution(all_rewards), "chosen": distribution([v for r in chosen for v in r]),
                    "rejected": distribution([v for r in rejected for v in r])},
    }
    per_example = [{"row": ex.row, "id": ex.id, "subset": ex.subset, "rewards_chosen": c, "rewards_rejected": r,
                    "correct": ok, **({"num_correct": ex.num_correct} if ex.num_correct is not None else {})}
                   for ex, c, r, ok in zip(examples, chosen, rejected, fig.correct)]
    results = {
        "benchmark": bench.name,
        "score": fig.score,
        "score_name": fig.score_name,
        "sections": fig.sections,
        "table": fig.rows,
        "notes": fig.notes,
        "details": fig.extra,
        "probes": probes,
        "model": _model_record(model),
        "data": {"path": str(data), "sha256": content_hash(data), "rows": len(examples), "texts_scored": texts,
                 "texts_cut_to_encoder_seq_length": cut},
        "settings": {"swap_sample": swap_sample, "micro_batch_size": int(model.cfg.model.micro_batch_size),
                     "max_tokens_per_micro_batch": model.cfg.model.get("max_tokens_per_micro_batch"),
                     "encoder_seq_length": int(model.cfg.model.encoder_seq_length),
                     "data_parallel_size": model.info.dp, "tensor_model_parallel_size": model.info.tp,
                     "formulas": bench.source},
        "timing": {"scoring_seconds": round(scoring_seconds, 3), "texts_per_second": round(texts / scoring_seconds, 1)
                   if scoring_seconds > 0 else None},
    }
    run = BenchmarkRun(results=results, per_example=per_example, output=out_dir,
                       lengths={"chosen": lengths_c, "rejected": lengths_r})
    if out_dir is not None and model.info.is_main:
        write_results(run, out_dir)
    return run


def _model_record(model: LoadedRewardModel) -> dict[str, Any]:
    import datetime

    from ...._version import __version__

    plugin = model.plugin
    head = int(getattr(model.model, "num_outputs", 0) or 0) or None
    return {
        "checkpoint": str(model.checkpoint),
        "architecture": plugin.name,
        "plugin": _contract.plugin_record(plugin),
        "outputs": head,
        "scalar": "the 'reward' of score_records() over the response's steps (what `rm-registry score` writes)"
        if _contract.is_token_level(plugin)
        else "the plugin's scalar_rewards()" if getattr(plugin, "scalar_rewards", None) is not None
        else "the 'reward' of score_outputs() (what `rm-registry score` writes)",
        "chat_template": bool(getattr(model.tokenizer, "chat_template", None)
                              and getattr(model.tokenizer, "hf_rules", False)),
        "rm_registry": __version__,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
