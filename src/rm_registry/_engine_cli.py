"""The engine's subcommands of ``rm-registry``: ``train``, ``evaluate``, ``score``, ``export`` (and
``serve``, from :mod:`rm_registry.serve`).

Importing this module is cheap (no torch): the engine is imported inside the handlers.
Handlers return the exit code; our errors are turned into one-line messages by ``_cli.main``
(exit 2 for bad input or config).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .engine._launch import first_process, quiet_unless_first_rank
from .engine._load_keys import load_overrides_text

__all__ = ["add_subcommands"]

_OVERRIDES_HELP = (
    "config overrides in Hydra syntax (key=value, +key=value, ++key=value, ~key), e.g. trainer.rm.max_steps=300 "
    "model.optim.lr=1e-4 \"model.regression.attribute_names=[a,b]\"; `rm-registry info NAME --config` lists the keys"
)


_DATA_FORMS = ("JSON Lines, Parquet, Arrow, a datasets save_to_disk folder, or hf://ORG/NAME[/CONFIG][:SPLIT] "
               "from the local Hugging Face cache; model.data.columns renames columns (docs/data.md)")

_LOAD_HELP = "settings of the loaded model that may be changed: " + load_overrides_text()

_CHECKPOINT_HELP = ("a run folder (its latest checkpoint), one checkpoint folder, or a Hugging Face "
                    "*ForSequenceClassification folder (see docs/pretrained.md)")


def add_subcommands(subparsers: Any) -> None:
    """Add ``train``, ``evaluate``, ``score``, ``export`` and ``cache`` (and ``serve``, ``launch``) to the
    ``rm-registry`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train a reward model",
        description="Train a reward model of architecture NAME on JSON Lines data. With no --data, trains on "
        "the sample data shipped with the plugin (a quick demonstration on CPU). Works under "
        "`torchrun -m rm_registry train ...` for data and tensor parallelism. SIGTERM or Ctrl-C stops the run "
        "at once (exit 143 / 130) naming the last step; the same command with --resume continues from the newest "
        "checkpoint (trainer.rm.save_interval sets how often one is saved).",
        epilog="example: rm-registry train binary_ranking --data prefs.jsonl --validation-data val.jsonl "
        "--output runs/rm1 trainer.rm.max_steps=300 model.optim.lr=1e-4",
    )
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="architecture (see `rm-registry list`); default: model.reward_model_type of --config, "
                        "else binary_ranking")
    p.add_argument("--config", metavar="YAML", help="a YAML config file; `rm-registry info NAME --config` prints the full "
                   "default one; NeMo-Aligner's training_rm.yaml is accepted as it is (docs/migrating-from-nemo-aligner.md)")
    p.add_argument("--data", metavar="FILE", help="training data (default: the plugin's sample data): " + _DATA_FORMS)
    p.add_argument("--validation-data", metavar="FILE", help="validation data (the same forms)")
    p.add_argument("--output", metavar="DIR",
                   help="run folder for config, metrics.jsonl and checkpoints (default: exp_manager.explicit_log_dir, "
                        "else runs/NAME-YYYYmmdd-HHMMSS)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its newest intact checkpoint (a damaged newer one is "
                        "skipped with a warning), or start it over if it never reached one")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue the run from this checkpoint folder of it, e.g. runs/rm1/checkpoints/step_0000100 "
                        "(implies --resume; --output defaults to its run folder)")
    p.add_argument("--distribution", metavar="DIST",
                   help="which installed distribution provides NAME, when two do (see `rm-registry list`)")
    p.add_argument("--test-data", metavar="FILE", help="test data, evaluated once at the end (split 'test')")
    p.add_argument("--pretrained", metavar="DIR",
                   help="start from a Hugging Face model folder (config.json + safetensors; Llama, Mistral, Qwen2, "
                        "Qwen3, GPT-2): its architecture, weights, tokenizer and chat template; the same as "
                        "pretrained_checkpoint.restore_from_path=DIR (see docs/pretrained.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on labelled data, or on RewardBench / RewardBench 2 / RM-Bench",
        description="Compute the architecture's metrics (loss, accuracy, per-attribute errors, ...) of a "
        "checkpoint on a labelled file in one of its training formats; or, with --benchmark, a benchmark's figures "
        "as its paper reports them (rewardbench: RewardBench v1's sections and score; rewardbench2: best-of-N per "
        "subset, Ties, the leaderboard mean; rm-bench: the 3x3 style matrix, hard/normal/easy) from a local file in "
        "the benchmark's own columns, plus probes (swap test, length bias, reward distribution). --output writes "
        "results.json, per_example.jsonl and report.html; --compare puts several such folders side by side. "
        "See docs/evaluation.md.",
        epilog="examples: rm-registry evaluate --checkpoint runs/rm1 --data val.jsonl --json; "
        "rm-registry evaluate --benchmark rewardbench --data filtered.parquet --checkpoint runs/rm1 --output eval/rm1; "
        "rm-registry evaluate --compare eval/rm1 eval/rm2 --output eval/compare",
    )
    p.add_argument("--checkpoint", metavar="DIR", help=_CHECKPOINT_HELP)
    p.add_argument("--data", metavar="FILE",
                   help="labelled data, or the benchmark's file: " + _DATA_FORMS + " (default without --benchmark: the "
                        "run's own validation data)")
    p.add_argument("--benchmark", metavar="NAME",
                   help="rewardbench, rewardbench2 or rm-bench: score --data in that benchmark's layout")
    p.add_argument("--output", metavar="DIR",
                   help="with --benchmark or --compare: a new folder for results.json, per_example.jsonl and report.html")
    p.add_argument("--compare", nargs="+", metavar="RESULTS_DIR",
                   help="results folders of evaluate --benchmark ... --output, shown side by side (no model is loaded)")
    p.add_argument("--swap-sample", type=int, default=None, metavar="N",
                   help="with --benchmark: rows scored again with chosen and rejected exchanged (default 500; 0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--distribution", metavar="DIST",
                   help="which installed distribution provides the checkpoint's architecture, when two do")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_LOAD_HELP)
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "score",
        help="score texts with a checkpoint",
        description="Score JSON Lines texts ({\"text\": ...} or {\"prompt\": ..., \"response\": ...} per line, "
        "or what the architecture reads, e.g. a prompt with several responses) and write one JSON object per "
        "input line, in order, with a float `reward` (and what the architecture adds, e.g. `attributes`, "
        "or its own per-record output).",
        epilog="example: rm-registry score --checkpoint runs/rm1 --data texts.jsonl --output scores.jsonl",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help=_CHECKPOINT_HELP)
    p.add_argument("--data", required=True, metavar="FILE", help="texts to score: " + _DATA_FORMS)
    p.add_argument("--output", required=True, metavar="JSONL",
                   help="where to write the scores (written atomically); - for standard output")
    p.add_argument("--distribution", metavar="DIST",
                   help="which installed distribution provides the checkpoint's architecture, when two do")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="texts per forward pass (default: model.micro_batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_LOAD_HELP)
    p.set_defaults(func=_score)

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint as a Hugging Face reward model",
        description="Write a checkpoint of any architecture as a Hugging Face *ForSequenceClassification folder "
        "(model.safetensors, config.json with num_labels/id2label/problem_type/pad_token_id, tokenizer files "
        "with the chat template), loadable by transformers' AutoModelForSequenceClassification, TRL, "
        "OpenRLHF, vLLM and RewardBench. Runs in one process; a checkpoint of any tensor-parallel layout "
        "exports to the same folder. See docs/pretrained.md.",
        epilog="example: rm-registry export --checkpoint runs/rm1 --output exported/rm1",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a run folder (its latest checkpoint) or one checkpoint folder")
    p.add_argument("--output", required=True, metavar="DIR", help="a new (or empty) folder to write")
    p.add_argument("--distribution", metavar="DIST",
                   help="which installed distribution provides the checkpoint's architecture, when two do")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "cache",
        help="see or remove the token cache",
        description="Data files are tokenized once into the token cache (flat arrays every rank maps read-only), "
        "keyed by the file's content, the tokenizer and the config keys that change tokenization; later runs, "
        "evaluate and --resume reuse it. Where: model.data.cache_dir, else $RM_REGISTRY_CACHE, else "
        "~/.cache/rm-registry/tokens. See docs/data.md.",
        epilog="examples: rm-registry cache info; rm-registry cache clear; rm-registry cache clear 3fa2 --cache-dir /scratch/tok",
    )
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", title="actions", required=True)
    pi = csub.add_parser("info", help="list the cache's entries (source, samples, tokens, size, last use)",
                         description="List the token cache's entries.")
    pc = csub.add_parser("clear", help="remove entries (all of them, or those whose key starts with KEY)",
                         description="Remove token cache entries: all of them, or those whose key starts with a KEY "
                         "given (see `rm-registry cache info`). Running jobs keep the files they mapped.")
    pc.add_argument("keys", nargs="*", metavar="KEY", help="key or key prefix of an entry (default: every entry)")
    for q in (pi, pc):
        q.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $RM_REGISTRY_CACHE, else "
                       "~/.cache/rm-registry/tokens)")
        q.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cache)

    from .serve._cli import add_serve_subcommand

    add_serve_subcommand(subparsers)

    from ._launcher import add_launch

    add_launch(subparsers)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _cache(args: argparse.Namespace) -> int:
    from ._errors import ConfigError
    from .engine.data._cache import clear_entries, default_root, list_entries

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_root()
    if args.cache_command == "info":
        entries = list_entries(root)
        if args.json:
            print(json.dumps({"cache_dir": str(root), "entries": entries}, indent=2))
            return 0
        total = sum(int(e["bytes"] or 0) for e in entries)
        print(f"token cache {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_human(total)}")
        for e in entries:
            if not e["ok"]:
                print(f"  {e['key']}  {_human(e['bytes'])}  {e.get('note') or 'damaged (rebuilt when next used)'}")
                continue
            print(f"  {e['key'][:12]}  {e['plugin']}  {e['samples']} samples, {e['tokens']} tokens, "
                  f"{_human(e['bytes'])}  last used {e['last_used']}  {e['source']}")
        return 0
    try:
        removed, size = clear_entries(root, list(args.keys) or None)
    except KeyError as exc:
        raise ConfigError(f"no token cache entry in {root} has a key starting with {exc.args[0]!r} "
                          "(see `rm-registry cache info`)") from None
    if args.json:
        print(json.dumps({"cache_dir": str(root), "removed": removed, "bytes": size}))
    else:
        print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({_human(size)}) from {root}")
    return 0


def _stderr(message: str) -> None:
    """A note on stderr, from global rank 0 only under torchrun."""
    if first_process():
        print(message, file=sys.stderr, flush=True)


def _plugin_name(args: argparse.Namespace) -> str:
    if args.name:
        return str(args.name)
    from .engine.config import override_type

    set_on_command_line = override_type(args.overrides)
    if set_on_command_line:
        return set_on_command_line
    if args.config:
        from omegaconf import OmegaConf

        from ._errors import ConfigError

        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path}: " + ("is a folder, expected a YAML file" if path.is_dir()
                                                        else "no such file"))
        try:
            name = OmegaConf.select(OmegaConf.load(path), "model.reward_model_type")
        except Exception as exc:
            raise ConfigError(f"{path}: not a valid YAML config: {exc}") from None
        if name:
            return str(name)
    return "binary_ranking"  # NeMo-Aligner's default reward_model_type


def _check_input_file(path: str | None, option: str) -> None:
    from ._errors import DataError

    if path is None or path.startswith("hf://"):
        return
    p = Path(path)
    if p.is_dir():
        if not ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            raise DataError(p, None, f"is a folder, but not a datasets save_to_disk folder (no state.json); {option} "
                                     "takes a JSON Lines, Parquet or Arrow file, or such a folder")
        return
    if not p.is_file():
        raise DataError(p, None, f"no such file ({option})")


def _train(args: argparse.Namespace) -> int:
    quiet_unless_first_rank()
    from ._errors import ConfigError
    from ._registry import get_reward_model

    if args.name and "=" in args.name:  # `train --config c.yaml key=value`: no NAME given
        args.overrides = [args.name, *args.overrides]
        args.name = None
    if args.pretrained:
        if any(o.startswith("pretrained_checkpoint.restore_from_path=") for o in args.overrides):
            raise ConfigError("give either --pretrained or pretrained_checkpoint.restore_from_path=, not both")
        args.overrides = [*args.overrides, f"pretrained_checkpoint.restore_from_path={args.pretrained}"]
    name = _plugin_name(args)
    plugin = get_reward_model(name, distribution=args.distribution)
    _check_input_file(args.data, "--data")
    _check_input_file(args.validation_data, "--validation-data")
    _check_input_file(args.test_data, "--test-data")

    from .engine.config import build_config
    from .engine.trainer import train

    cfg = build_config(plugin, config_file=args.config, overrides=args.overrides, report=True,
                       data_paths={"train": args.data, "validation": args.validation_data, "test": args.test_data})
    if cfg.model.data.data_prefix.train is None:
        sample = dict(plugin.sample_data())
        if "train" not in sample:
            raise ConfigError(f"no training data: pass --data FILE ({name} ships no sample data)")
        cfg.model.data.data_prefix.train = str(sample["train"])
        if cfg.model.data.data_prefix.validation is None and sample.get("validation"):
            cfg.model.data.data_prefix.validation = str(sample["validation"])
        _stderr(f"no --data: training on the sample data shipped with {name} ({sample['train']})")
    output, resume = _output_and_resume(args, cfg, name)
    result = train(plugin, cfg, output, resume=resume, progress=not args.no_progress, resume_from=args.resume_from)
    if first_process():
        summary: dict[str, Any] = {"output": str(result.output_dir), "checkpoint": str(result.last_checkpoint),
                                   "steps": result.steps, "seconds": round(result.seconds, 1)}
        if result.validation is not None:
            summary["validation"] = result.validation
        if result.test is not None:
            summary["test"] = result.test
        if result.time_limit_reached:
            summary["time_limit_reached"] = True
        if result.hf_folder is not None:
            summary["hf_folder"] = str(result.hf_folder)
        print(json.dumps(summary, indent=2))
    return 0


def _output_and_resume(args: argparse.Namespace, cfg: Any, name: str) -> tuple[Path, bool]:
    """The run folder (--output, else the run of --resume-from, else NeMo's exp_manager.explicit_log_dir,
    else runs/NAME-time) and whether to resume (--resume or --resume-from, or exp_manager.resume_if_exists
    as in NeMo-Aligner)."""
    explicit = cfg.exp_manager.explicit_log_dir
    if args.output:
        output = Path(args.output)
    elif args.resume_from:
        from .engine.checkpoint._run import run_folder_of

        output = run_folder_of(args.resume_from)
    elif explicit:
        output = Path(str(explicit))
        _stderr(f"run folder: {output} (exp_manager.explicit_log_dir)")
    else:
        output = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return output, bool(args.resume or args.resume_from or cfg.exp_manager.resume_if_exists)


def _evaluate(args: argparse.Namespace) -> int:
    quiet_unless_first_rank()
    from ._errors import ConfigError
    from .engine.evaluation import finite_for_json

    if args.compare:
        given = [o for o, v in (("--checkpoint", args.checkpoint), ("--data", args.data), ("--benchmark", args.benchmark),
                                ("--swap-sample", args.swap_sample), ("KEY=VALUE overrides", args.overrides or None))
                 if v is not None]
        if given:
            raise ConfigError(f"--compare reads results folders only (no model is loaded); leave out {', '.join(given)}")
        from .engine.evaluation.benchmarks import compare_results, format_comparison

        comparison = compare_results(args.compare, args.output)
        if args.json:
            print(json.dumps(finite_for_json(comparison)))
        else:
            print(format_comparison(comparison))
        if args.output:
            _stderr(f"wrote the comparison to {args.output} (report.html, comparison.json)")
        return 0
    missing = [o for o, v in (("--checkpoint", args.checkpoint), ("--data", args.data or args.benchmark is None))
               if not v]
    if missing:
        raise ConfigError(f"evaluate needs {' and '.join(missing)} (or --compare RESULTS_DIR...)")
    _check_input_file(args.data, "--data")
    if args.benchmark is None:
        extra = [o for o, v in (("--output", args.output), ("--swap-sample", args.swap_sample)) if v is not None]
        if extra:
            raise ConfigError(f"{', '.join(extra)} go with --benchmark NAME (rewardbench, rewardbench2, rm-bench)")
    else:
        from omegaconf import OmegaConf

        from .engine.config import parse_overrides
        from .engine.evaluation.benchmarks import get_benchmark, read_benchmark
        from .engine.evaluation.benchmarks._report import check_results_dir

        get_benchmark(args.benchmark)  # an unknown name is refused before the model is built
        if args.swap_sample is not None and args.swap_sample < 0:
            raise ConfigError(f"--swap-sample={args.swap_sample}: expected a number of rows >= 0")
        if args.output:
            check_results_dir(Path(args.output))
        # the rows are checked before the model is loaded (a file of another layout is the usual mistake)
        columns = OmegaConf.select(parse_overrides(args.overrides), "model.data.columns") if args.overrides else None
        read_benchmark(args.benchmark, args.data, OmegaConf.to_container(columns) if columns is not None else None)
    from .engine.api import load_reward_model

    model = load_reward_model(args.checkpoint, overrides=args.overrides, distribution=args.distribution)
    if args.benchmark is not None:
        from .engine.evaluation.benchmarks import format_table

        run = model.benchmark(args.benchmark, args.data, output=args.output, swap_sample=args.swap_sample,
                              progress=not args.no_progress)
        if first_process():
            if args.json:
                print(json.dumps(finite_for_json(run.results), allow_nan=False))
            else:
                print(format_table(run.results), flush=True)
            if args.output:
                _stderr(f"wrote results.json, per_example.jsonl and report.html to {args.output}")
        return 0
    if args.data is None:  # the run's own validation split(s), as TRL's trainer.evaluate()
        results = model.evaluate_validation(progress=not args.no_progress)
        if first_process():
            for split, files in model.validation_splits().items():
                _stderr(f"no --data: evaluating the run's {split} data ({files})")
        metrics = finite_for_json(results[next(iter(results))] if len(results) == 1 else results)
    else:
        metrics = finite_for_json(model.evaluate(args.data, progress=not args.no_progress))
    if first_process():
        if args.json:
            print(json.dumps(metrics, allow_nan=False))
        else:
            _print_table(metrics)
    return 0


def _print_table(metrics: dict[str, Any], indent: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_table(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key:<24} {value:.6g}")
        else:
            print(f"{indent}{key:<24} {value}")


def _score(args: argparse.Namespace) -> int:
    quiet_unless_first_rank()
    from ._errors import ConfigError
    from .engine.checkpoint._fs import check_output_file
    from .engine.api import checkpoint_plugin, load_reward_model, read_score_records, score_file

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size}: expected a positive number")
    _check_input_file(args.data, "--data")
    # Refuse bad input before building the model; the plugin decides what a line holds.
    try:
        plugin = checkpoint_plugin(args.checkpoint, distribution=args.distribution)
    except ConfigError:  # no checkpoint there: report the input's own problems first, then that
        read_score_records(args.data, None)
        raise
    read_score_records(args.data, plugin)
    if args.output != "-":
        check_output_file(Path(args.output))
    model = load_reward_model(args.checkpoint, overrides=args.overrides, distribution=args.distribution)
    count = score_file(model, args.data, args.output, batch_size=args.batch_size, progress=not args.no_progress)
    if first_process():
        _stderr(f"wrote {count} scores to {'standard output' if args.output == '-' else args.output}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .engine.hf import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.output, distribution=args.distribution)
    _stderr(f"wrote a Hugging Face reward model to {out}")
    return 0
