"""Training: the loop shared by every architecture.

In: a plugin, a built config (:func:`~rm_registry.engine.config.build_config`) and a run folder.
Out: the run folder (checkpoints, metrics) and a :class:`TrainResult`.

:func:`train` reads as its stages, each a function below::

    _resume_point   which checkpoint to continue from (or none), before anything is written
    _read_data      tokenizer, then each split's dataset (data/: file -> dataset)
    _set_up         parallel state, sampler, model (+ --pretrained weights), optimizer, schedule,
                    the resumed state, the run's files and logs
    _loop           per step: _train_step (batch -> model -> loss -> gradients -> optimizer),
                    _log_step, _validate, _save (checkpoint/), the time limit; at the end _test

One optimizer step consumes ``model.global_batch_size`` samples: they are split evenly across
the data-parallel ranks, and each rank runs micro-batches of at most ``model.micro_batch_size``
samples (and at most ``model.max_tokens_per_micro_batch`` padded tokens) with gradient
accumulation, each weighted by its share of the rank's samples. Steps hold samples of similar
length (``trainer.rm.group_by_length``, see :mod:`..data._batching`). The order of samples depends
only on the seed and the epoch, so the same seed and global batch give the same steps whatever the
parallel layout (the basis of the torchrun equivalence tests).

Files written by the main rank into the run folder::

    config.yaml           the resolved config
    data_stats.json       per split: read / kept / truncated / dropped samples
    metrics.jsonl         one JSON object per line: step, split (train|validation|test), loss, ...
    checkpoints/step_0000100/   dist_checkpointing weights + config + tokenizer + state
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ... import _signals
from ..._errors import ConfigError, TrainingError
from .. import _contract, parallel
from .. import checkpoint as ckpt
from ..checkpoint import _provenance
from ..checkpoint._fs import atomic_write_text
from ..checkpoint._run import checkpoint_files, resume_point, step_folder
from ..checkpoint._safe_pickle import check_contained
from ..checkpoint._topk import keep_top_k
from ..config import load_saved_config, max_time_seconds, to_yaml, validate_engine_config
from ..config._checks import precision_mode
from ..data._batching import (
    SampleCosts,
    StepSampler,
    epoch_order,
    group_by_length,
    length_group_batches,
    max_tokens_per_micro_batch,
    micro_batches,
    sample_costs,
)
from .._launch import first_process
from ..data._splits import build_split_datasets, normalize_prefix
from ..evaluation import evaluate_dataset, finite_for_json
from ..progress import progress_bar, say
from ..parallel._pipeline import from_last_stage, is_last_stage, run_schedule
from ..tokenizer import load_tokenizer
from ._loggers import MetricsLog, attach_loggers, check_loggers
from ._metrics import MetricMeans
from ._optim import (LossScaler, allreduce_grads, allreduce_tensor_parallel_replicas, build_optimizer,
                     build_scheduler, clip_grad_norm, is_sharded, layout_free_state, load_layout_free_state,
                     load_optimizer_state, optimizer_state, sharded_moments, state_bytes)

if TYPE_CHECKING:  # pragma: no cover
    from ..._protocol import RewardModelPlugin, Tokenizer
    from ..parallel import ParallelInfo

#: Batch key (removed before the plugin's loss sees the batch): the micro-batch's number of samples.
_SAMPLES = "_rm_registry_samples"

__all__ = ["TrainResult", "build_optimizer", "build_scheduler", "checkpoint_files", "evaluate_dataset", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    output_dir: Path
    last_checkpoint: Path | None
    steps: int
    validation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    data_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    #: Stopped by ``exp_manager.max_time_per_run`` after ``steps`` steps (checkpoint saved).
    time_limit_reached: bool = False
    #: The Hugging Face folder written at the end (``trainer.rm.save_hf``), else ``None``.
    hf_folder: Path | None = None


@dataclass
class _Data:
    """The run's tokenizer and datasets (:func:`_read_data`)."""

    tokenizer: Tokenizer
    train: Sequence[Any]
    test: Sequence[Any] | None
    validation: dict[str, Sequence[Any]]  # the non-empty validation sets, "validation" first
    stats: dict[str, dict[str, int]]
    paths: Mapping[str, Any]
    notes: Mapping[str, str | None] = field(default_factory=dict)  # how each split was read (the token cache)


@dataclass
class _Run:
    """Everything the loop works on (:func:`_set_up`)."""

    plugin: RewardModelPlugin
    cfg: DictConfig
    info: ParallelInfo
    data: _Data
    output_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: StepSampler
    costs: SampleCosts
    total: int  # steps of the whole run
    start_step: int  # steps already done (a resumed run)
    files: dict[str, bytes | str]  # what every checkpoint carries beside the weights
    log: Any  # metrics.jsonl (and the configured loggers)
    progress: bool
    scaler: LossScaler | None = None  # trainer.precision=16-mixed


def train(
    plugin: RewardModelPlugin,
    cfg: DictConfig,
    output_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train ``plugin``'s architecture as configured by ``cfg`` (see :func:`~.config.build_config`).

    Data and config problems raise before anything is written to ``output_dir``.

    Args:
        resume: Continue the run in ``output_dir`` from its newest intact checkpoint (a damaged
            newer one is skipped with a warning).
        resume_from: Continue from this checkpoint folder of the run (``OUTPUT/checkpoints/step_...``).

    Raises:
        ConfigError: bad config, a non-empty ``output_dir`` without ``resume``, too little data.
        DataError: a bad data file (names the file and line).
        StorageError: a file of the run cannot be written (disk full, no permission).
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    save_hf = bool(OmegaConf.select(cfg, "trainer.rm.save_hf", default=False))
    if save_hf:
        from ..hf._export import check_exportable

        check_exportable(cfg.model, key="trainer.rm.save_hf=true")  # refused now, not after the training
    _check_pipeline_model(plugin, cfg)
    checkpoint = _resume_point(plugin, cfg, output_dir, resume, resume_from)
    data = _read_data(plugin, cfg, progress=progress)
    run = _set_up(plugin, cfg, output_dir, data, checkpoint, progress)
    result = _loop(run, started, checkpoint)
    if save_hf and result.last_checkpoint is not None:
        result.hf_folder = _save_hf(result.last_checkpoint, output_dir / "hf", run.info)
    return result


def _check_pipeline_model(plugin: RewardModelPlugin, cfg: DictConfig) -> None:
    """Pipeline parallelism needs a model that can be one stage: refused before anything is read."""
    pp = int(cfg.model.pipeline_model_parallel_size)
    if pp > 1 and not callable(getattr(plugin.model_class, "set_input_tensor", None)):
        raise ConfigError(
            f"model.pipeline_model_parallel_size={pp}: plugin {plugin.name!r}: its model class "
            f"{plugin.model_class.__name__} has no set_input_tensor() (how a pipeline stage receives the previous "
            "stage's hidden states); build it on rm_registry.engine.RewardModel, or train with "
            "model.pipeline_model_parallel_size=1")


def _save_hf(checkpoint: Path, folder: Path, info: ParallelInfo) -> Path:
    """``rm-registry export`` of ``checkpoint`` into ``folder`` (replacing an older export), by the
    main rank in a process of its own (export runs with tensor parallelism 1, whatever this run's);
    the other ranks wait."""
    import os
    import shutil
    import subprocess
    import sys

    error: Exception | None = None
    if info.is_main:
        say(f"writing the Hugging Face folder {folder} (trainer.rm.save_hf)")
        fresh = folder.with_name(f".{folder.name}.{os.getpid()}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                                "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "ROLE_RANK",
                                                                "TORCHELASTIC_RUN_ID")}
        proc = subprocess.run([sys.executable, "-m", "rm_registry", "export", "--checkpoint", str(checkpoint),
                               "--output", str(fresh)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            shutil.rmtree(fresh, ignore_errors=True)
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("rm-registry: error: ")
            error = TrainingError(f"trained (checkpoint {checkpoint}), but trainer.rm.save_hf could not write "
                                  f"{folder}: {why}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(fresh, folder)
    if info.world_size > 1:
        torch.distributed.barrier()
    if error is not None:
        raise error
    return folder


def _resume_point(plugin: RewardModelPlugin, cfg: DictConfig, output_dir: Path, resume: bool,
                  resume_from: str | Path | None) -> Path | None:
    """The checkpoint to continue from (``None``: a fresh run), checked against ``cfg``."""
    checkpoint = resume_point(output_dir, resume, None if resume_from is None else Path(resume_from))
    if checkpoint is not None:
        check_contained(checkpoint)
        saved = load_saved_config((checkpoint / "config.yaml").read_text(encoding="utf-8"),
                                  str(checkpoint / "config.yaml"))
        _contract.resolve_config(plugin, saved)  # runs saved before the plugin resolved its defaults
        _same_model(saved, cfg, str(checkpoint))
        _provenance.warn_if_other_version(checkpoint, plugin)
    return checkpoint


def _read_data(plugin: RewardModelPlugin, cfg: DictConfig, *, progress: bool = False) -> _Data:
    """The tokenizer and every split's dataset (through the token cache where the plugin describes
    its samples); too little training data is refused."""
    tokenizer = load_tokenizer(cfg)
    if not normalize_prefix("train", cfg.model.data.data_prefix.get("train")):
        raise ConfigError("no training data: pass --data FILE or set model.data.data_prefix.train")
    check_loggers(cfg)
    datasets, paths = build_split_datasets(plugin, cfg.model.data.data_prefix, tokenizer, cfg,
                                           progress=progress and first_process())
    train_ds = datasets["train"]
    gbs = int(cfg.model.global_batch_size)
    if len(train_ds) < gbs:
        raise ConfigError(
            f"{paths['train']}: {len(train_ds)} usable training samples, fewer than model.global_batch_size={gbs}"
        )
    return _Data(tokenizer=tokenizer, train=train_ds, test=datasets.get("test"), validation=_validation_sets(datasets),
                 stats={split: _stats_dict(ds) for split, ds in datasets.items()}, paths=paths,
                 notes={split: getattr(ds, "cache_note", None) for split, ds in datasets.items()})


def _set_up(plugin: RewardModelPlugin, cfg: DictConfig, output_dir: Path, data: _Data, checkpoint: Path | None,
            progress: bool) -> _Run:
    """Parallel state, sampler, model, optimizer and schedule, the resumed state, the run's files."""
    info = parallel.initialize(
        tensor_model_parallel_size=int(cfg.model.tensor_model_parallel_size),
        pipeline_model_parallel_size=int(cfg.model.pipeline_model_parallel_size),
        seed=int(cfg.seed),
    )
    validate_engine_config(cfg, world_size=info.world_size)
    costs = sample_costs(plugin, data.train, data.tokenizer.pad_id)
    sampler = StepSampler(costs, int(cfg.model.global_batch_size), int(cfg.seed),
                          shuffle=bool(cfg.trainer.rm.train_random_sampler), group_batches=length_group_batches(cfg))
    rm = cfg.trainer.rm
    total = sampler.steps_per_epoch * int(rm.max_epochs)
    if int(rm.max_steps) != -1:
        total = min(total, int(rm.max_steps))

    parallel.manual_seed(int(cfg.seed))  # the same weights whatever ran before in this process
    model = plugin.model_class.from_config(cfg, vocab_size=data.tokenizer.vocab_size).to(info.device)
    pretrained = OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None)
    if pretrained and checkpoint is None:
        from ..hf import load_hf_weights

        load_hf_weights(model, pretrained, cfg,
                        load_head=OmegaConf.select(cfg, "pretrained_checkpoint.load_rm_head_weights", default=None),
                        missing_head="pretrained_checkpoint.load_rm_head_weights=true asks for its head: set it to "
                        "false or null to start a new one", progress=progress and info.is_main)
    from ..model import compile_backbone

    compile_backbone(model, cfg, info.device)  # model.compile: in place, parameter names unchanged
    optimizer = build_optimizer(model, cfg, info)
    scheduler = build_scheduler(optimizer, cfg, total)
    scaler = LossScaler() if precision_mode(cfg) == "16-mixed" else None
    start_step = 0 if checkpoint is None else _restore(checkpoint, model, optimizer, scheduler, scaler, info)

    _report_memory(model, optimizer, cfg, info)
    if info.is_main:
        atomic_write_text(output_dir / "config.yaml", to_yaml(cfg))
        atomic_write_text(output_dir / "data_stats.json", json.dumps(data.stats, indent=2) + "\n")
        _report_data(data.stats, data.paths, data.notes)
    # A resumed run keeps the log up to its checkpoint; a run started over drops the old lines.
    log = MetricsLog(output_dir / "metrics.jsonl", enabled=info.is_main, keep_until_step=start_step)
    log = attach_loggers(log, cfg, output_dir, enabled=info.is_main)
    _schedule_note(cfg, total)
    return _Run(plugin=plugin, cfg=cfg, info=info, data=data, output_dir=output_dir, model=model,
                optimizer=optimizer, scheduler=scheduler, sampler=sampler, costs=costs, total=total,
                start_step=start_step, files=checkpoint_files(cfg, data.tokenizer, plugin), log=log,
                progress=progress, scaler=scaler)


def _restore(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: LossScaler | None, info: ParallelInfo) -> int:
    """Load the weights and the trainer state of ``checkpoint``; the number of steps it had done."""
    saved = ckpt.checkpoint_info(checkpoint)
    layout_free = (checkpoint / ckpt.OPTIMIZER).is_dir()  # the Adam moments reshard like the weights
    for key, have in (("tensor_model_parallel_size", info.tp), ("pipeline_model_parallel_size", info.pp)):
        was = int(saved.get(key, 1 if key.startswith("pipeline") else have))
        if was != have and not layout_free:
            # The weights reshard, but this checkpoint's optimizer state is per rank (a sharded
            # optimizer, or an older checkpoint): resuming it under another layout would be wrong.
            raise ConfigError(
                f"--resume: {checkpoint} was saved with model.{key}={was}, this run uses {have}; resume with "
                f"model.{key}={was} (the number of data-parallel processes may change): its optimizer state is per "
                "rank (saved with model.optim.use_distributed_optimizer=true, or by an older rm-registry, without an "
                "optimizer/ folder). Evaluating and scoring work under any layout.")
    state = ckpt.load_checkpoint(checkpoint, model)
    missing = [k for k in ("optimizer", "scheduler", "rng", "step") if k not in state]
    if missing:
        raise ConfigError(f"--resume: {checkpoint} holds no trainer state ({', '.join(missing)} missing): "
                          "it can be evaluated and scored, not resumed")
    saved_shards = int(state.get("optimizer_shards", 1))
    shards = info.dp if is_sharded(optimizer) else 1
    if saved_shards != shards or (shards > 1 and state.get("layout_changed")):
        def said(n: int) -> str:
            return f"sharded over {n} data-parallel ranks" if n > 1 else "not sharded"

        raise ConfigError(
            f"--resume: {checkpoint} holds the optimizer state {said(saved_shards)} "
            f"(model.optim.use_distributed_optimizer), this run's is {said(shards)}: resume with "
            + (f"{saved_shards} data-parallel processes and model.optim.use_distributed_optimizer=true"
               if saved_shards > 1 else "model.optim.use_distributed_optimizer=false")
            + " (evaluating and scoring work under any layout)")
    if state["optimizer"].get("layout_free"):
        load_layout_free_state(model, optimizer, state["optimizer"],
                               lambda template: ckpt.load_optimizer_tensors(checkpoint, template))
    else:
        load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if scaler is not None and "loss_scale" in state:  # a run saved in float32 starts at the initial scale
        scaler.load_state_dict(state["loss_scale"])
    step = int(state["step"])
    say(f"resuming from step {step} (checkpoint {checkpoint})")
    return step


def _loop(run: _Run, started: float, last_checkpoint: Path | None) -> TrainResult:
    """The steps from ``run.start_step`` to ``run.total``, with logging, validation, checkpoints
    and the time limit; then the test set."""
    rm, info = run.cfg.trainer.rm, run.info
    log_every, val_every, save_every = int(rm.log_every_n_steps), int(rm.val_check_interval), int(rm.save_interval)
    max_time = max_time_seconds(run.cfg)
    bar = progress_bar(run.total, f"train {run.plugin.name}", enabled=run.progress and info.is_main,
                       initial=run.start_step)
    validation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    run.model.train()
    done = _signals.current_step = run.start_step  # a stop signal reports the steps done
    try:
        for step in range(run.start_step, run.total):
            t0 = time.perf_counter()
            means, lr, grad_norm = _train_step(run, step)
            done = _signals.current_step = step + 1
            # NeMo-Aligner's run timer: the step that reaches the limit is logged, validated and saved.
            out_of_time = max_time is not None and _time_is_up(started, max_time, info)
            last = done == run.total or out_of_time
            if done % log_every == 0 or last:
                _log_step(run, done, means, lr=lr, grad_norm=grad_norm, seconds=time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
            if run.data.validation and (done % val_every == 0 or last):
                validation = _validate(run, done)
            if done % save_every == 0 or last:
                last_checkpoint = _save(run, done)
                keep_top_k(run.output_dir, last_checkpoint, validation, run.cfg, enabled=info.is_main)
            if out_of_time and done < run.total:
                say(f"rm-registry: time limit exp_manager.max_time_per_run={run.cfg.exp_manager.max_time_per_run} "
                    f"reached at step {done} of {run.total}; checkpoint saved, continue with --resume")
                break
        if done >= run.total:  # done < total: stopped by the time limit
            test = _test(run)
    finally:
        bar.close()
        run.log.close()
    return TrainResult(output_dir=run.output_dir, last_checkpoint=last_checkpoint, steps=done, validation=validation,
                       test=test, data_stats=run.data.stats, seconds=time.perf_counter() - started,
                       time_limit_reached=done < run.total)


def _train_step(run: _Run, step: int) -> tuple[dict[str, float], float, float]:
    """One optimizer step over step ``step``'s samples (this rank's share, in micro-batches).

    Without pipeline parallelism each micro-batch runs forward and backward in turn here; with it,
    megatron-core's 1F1B schedule runs them through the stages (``parallel._pipeline``) and the
    plugin's ``loss`` runs on the last stage; the gradients are then reduced the same way.

    Returns:
        The step's metric means over every rank (``loss``, the plugin's metrics, ``tokens``,
        ``padded_tokens``), the learning rate it used and the gradient norm before clipping.
    """
    cfg, info, plugin, dataset = run.cfg, run.info, run.plugin, run.data.train
    per_rank = int(cfg.model.global_batch_size) // info.dp
    max_tokens = max_tokens_per_micro_batch(cfg)
    micros = micro_batches(run.sampler.batch(step), run.costs, dp=info.dp, dp_rank=info.dp_rank,
                           micro_batch_size=int(cfg.model.micro_batch_size), max_tokens=max_tokens,
                           sort=group_by_length(cfg))
    run.optimizer.zero_grad(set_to_none=True)
    sums = MetricMeans(f"step {step + 1}")
    tokens = padded = 0
    batches = []
    for micro in micros:
        batch = _contract.batch_to(plugin.collate([dataset[i] for i in micro], run.data.tokenizer.pad_id), info.device)
        batch[_SAMPLES] = len(micro)
        batches.append(batch)
        tokens += int(batch["lengths"].sum())
        padded += int(batch["tokens"].numel())

    failures: list[str] = []  # under pipeline parallelism: raised on every stage after the schedule

    def micro_loss(rewards: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The gradient-carrying loss of one micro-batch (its metrics go into ``sums``)."""
        samples = batch.pop(_SAMPLES)
        weight = samples / per_rank  # loss and metrics stay means over the step's samples
        loss, metrics = plugin.loss(rewards, batch, cfg)
        try:
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"step {step + 1}: the training loss is {float(loss)}; lower model.optim.lr or "
                    "set trainer.rm.gradient_clip_val"
                )
            sums.add({"loss": float(loss.detach()), **metrics},
                     _contract.metric_weight(plugin, batch, cfg, default=float(samples)))
        except TrainingError as exc:
            if info.pp == 1:
                raise
            failures.append(str(exc))  # the earlier stages wait on this one: stop all of them together
        scaled = loss * weight
        return scaled if run.scaler is None else run.scaler.scale(scaled)

    if info.pp > 1:  # megatron's 1F1B schedule; the losses and metrics are on the last stage
        run_schedule(run.model, batches, micro_loss)
        failure = from_last_stage(failures[0] if failures else None)
        if failure is not None:
            raise TrainingError(failure)
    else:
        for batch in batches:
            rewards = _contract.batch_rewards(run.model, batch, max_tokens)
            micro_loss(rewards, batch).backward()
    allreduce_grads(run.model, info)
    allreduce_tensor_parallel_replicas(run.model, info)
    scale = None
    if run.scaler is not None:
        scale = run.scaler.value
        run.scaler.unscale([p.grad for p in run.model.parameters() if p.grad is not None])
    clip = cfg.trainer.rm.gradient_clip_val
    grad_norm = clip_grad_norm(run.model, float(clip) if clip else None, info)  # the same on every rank
    lr = run.optimizer.param_groups[0]["lr"]
    if run.scaler is None or run.scaler.update(grad_norm):  # 16-mixed: an overflowing step is skipped
        run.optimizer.step()
    run.scheduler.step()
    means = None
    if is_last_stage():  # every stage but the last has no losses: it gets the last stage's means
        means = sums.reduce(info, totals={"tokens": float(tokens), "padded_tokens": float(padded)})
    means = from_last_stage(means)
    if scale is not None:
        means["loss_scale"] = scale
    return means, lr, grad_norm


def _log_step(run: _Run, step: int, means: Mapping[str, float], *, lr: float, grad_norm: float,
              seconds: float) -> None:
    """One ``train`` line of ``metrics.jsonl`` for the step just done."""
    record: dict[str, Any] = {"step": step, "split": "train",
                              **{k: v for k, v in means.items() if k not in ("tokens", "padded_tokens")}}
    record.update(lr=lr, grad_norm=grad_norm, tokens=int(round(means["tokens"])),
                  padded_tokens=int(round(means["padded_tokens"])), seconds=seconds)
    run.log.write(finite_for_json(record))


def _validate(run: _Run, step: int) -> dict[str, Any]:
    """Evaluate every validation set, log each under its split name; the main set's metrics."""
    results = {}
    for name, dataset in run.data.validation.items():
        metrics = evaluate_dataset(run.plugin, run.model, _val_view(dataset, run.cfg), run.cfg, run.data.tokenizer,
                                   run.info)
        run.log.write(finite_for_json({"step": step, "split": name, **metrics}))
        if run.progress:
            say(_summary_line(step, name, metrics))
        results[name] = metrics
    return results.get("validation") or next(iter(results.values()))


def _save(run: _Run, step: int) -> Path:
    """The checkpoint of ``step``: weights, the trainer state to resume, the run's files."""
    # Unsharded: the Adam moments go beside the weights (they reshard to another TP / PP / DP layout),
    # the rest per rank. Sharded (ZeRO): each rank's shard per rank.
    moments = sharded_moments(run.model, run.optimizer)
    state = {"step": step, "scheduler": run.scheduler.state_dict(), "rng": torch.get_rng_state(),
             "optimizer": optimizer_state(run.optimizer) if moments is None else layout_free_state(run.optimizer),
             "optimizer_shards": run.info.dp if is_sharded(run.optimizer) else 1}
    if run.scaler is not None:
        state["loss_scale"] = run.scaler.state_dict()
    return ckpt.save_checkpoint(step_folder(run.output_dir, step), run.model, extra_files=run.files, state=state,
                                optimizer_tensors=moments)


def _test(run: _Run) -> dict[str, Any] | None:
    """The test set's metrics after the last step (``None`` without a test set)."""
    if run.data.test is None or not len(run.data.test):
        return None
    test = evaluate_dataset(run.plugin, run.model, run.data.test, run.cfg, run.data.tokenizer, run.info)
    run.log.write(finite_for_json({"step": run.total, "split": "test", **test}))
    if run.progress:
        say(_summary_line(run.total, "test", test))
    return test


def _same_model(saved: DictConfig, cfg: DictConfig, source: str) -> None:
    ignore = {"data", "micro_batch_size", "tensor_model_parallel_size", "pipeline_model_parallel_size",
              "attention_backend", "max_tokens_per_micro_batch"}  # how it is computed, not what
    a = {k: v for k, v in OmegaConf.to_container(saved.model, resolve=True).items() if k not in ignore}
    b = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ignore}
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        raise ConfigError(
            f"--resume: model settings differ from the run in {source}: "
            + ", ".join(f"model.{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed)
        )


def _time_is_up(started: float, limit: float, info: ParallelInfo) -> bool:
    """Whether ``limit`` seconds have passed since ``started``, by global rank 0's clock (every
    rank gets the same answer, so all stop after the same step)."""
    up = torch.tensor([float(time.perf_counter() - started >= limit)], device=info.device)
    if info.world_size > 1:
        torch.distributed.broadcast(up, src=0)
    return bool(up.item())


def _validation_sets(datasets: Mapping[str, Any]) -> dict[str, Any]:
    """The non-empty validation sets: ``validation`` first, then NeMo's extra ``validation_<name>`` sets."""
    names = sorted((k for k in datasets if k == "validation" or k.startswith("validation_")), key=lambda k: (k != "validation", k))
    return {k: datasets[k] for k in names if len(datasets[k])}


def _val_view(dataset: Sequence[Any], cfg: DictConfig) -> Sequence[Any]:
    """The part of a validation set that is evaluated (NeMo's ``limit_val_batches``, ``val_random_sampler``).

    ``limit_val_batches``: null or 1.0 every sample; an integer N the first N global batches
    (``N * model.global_batch_size`` samples); a fraction f the first ``f * len`` samples. With
    ``val_random_sampler`` the samples are taken in a seeded random order instead.
    """
    rm, n = cfg.trainer.rm, len(dataset)
    limit = rm.limit_val_batches
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        keep = n
    elif isinstance(limit, float):
        keep = max(1, int(n * limit))
    else:
        keep = min(n, int(limit) * int(cfg.model.global_batch_size))
    if keep == n and not rm.get("val_random_sampler", False):
        return dataset
    order = epoch_order(n, 0, int(cfg.seed), bool(rm.get("val_random_sampler", False)))[:keep]
    return [dataset[i] for i in order]


def _schedule_note(cfg: DictConfig, total: int) -> None:
    sched = cfg.model.optim.sched
    constant = int(OmegaConf.select(sched, "constant_steps", default=0) or 0)
    if sched.name == "CosineAnnealing" and constant and constant >= total - int(sched.warmup_steps):
        say(f"model.optim.sched.constant_steps={constant} leaves no decay steps in this {total}-step run: the learning "
             f"rate holds at min_lr={sched.min_lr} after warmup (as in NeMo-Aligner)")


def _stats_dict(ds: Any) -> dict[str, int]:
    stats = getattr(ds, "stats", None)
    if stats is None:
        return {"kept": len(ds)}
    return dict(stats.as_dict() if hasattr(stats, "as_dict") else stats)


def _report_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig,
                   info: ParallelInfo) -> None:
    """One line: what this rank holds for weights, gradients and Adam state (before activations)."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = state_bytes(optimizer)
    count = sum(p.numel() for p in params)
    stage = ""
    if info.pp > 1:  # the most loaded stage (what a GPU must hold), not rank 0's
        from megatron.core import parallel_state

        most = torch.tensor([count, weights, moments], dtype=torch.float64, device=info.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX,
                                     group=parallel_state.get_pipeline_model_parallel_group())
        count, weights, moments = (int(v) for v in most.tolist())
        stage = " (the largest pipeline stage)"

    def size(n: int) -> str:
        return f"{n / 1024**3:.3g} GiB" if n >= 1024**3 else f"{n / 1024**2:.3g} MiB"

    dtype = str(params[0].dtype).replace("torch.", "") if params else "float32"
    mode = precision_mode(cfg)
    compute = f", {mode} compute" if mode != "32" else ""
    sharded = f"sharded over {info.dp} data-parallel ranks" if is_sharded(optimizer) else "replicated"
    sp = " with sequence parallelism" if getattr(getattr(model, "config", None), "sequence_parallel", False) else ""
    say(f"memory per rank{stage}: {count:,} parameters, weights {size(weights)} ({dtype}{compute}), gradients {size(weights)}, "
        f"Adam state {size(moments)} ({sharded}); layout TP={info.tp} x PP={info.pp} x DP={info.dp}{sp}, "
        "before activations")


def _report_data(stats: Mapping[str, Mapping[str, int]], paths: Mapping[str, Any],
                 notes: Mapping[str, str | None] | None = None) -> None:
    for split, s in stats.items():
        note = f" ({notes[split]})" if notes and notes.get(split) else ""
        if s.get("dropped") or s.get("truncated"):
            note += f" ({s.get('dropped', 0)} dropped, {s.get('truncated', 0)} truncated as too long; " \
                   "see model.data.overlong_policy)"
        say(f"{split}: {s.get('kept', 0)} samples from {paths.get(split)}{note}")


def _summary_line(step: int, split: str, metrics: Mapping[str, Any]) -> str:
    """``step 100 validation: accuracy=0.81, loss=0.43`` (the numbers of ``metrics``)."""
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None)
    return f"step {step} {split}: {shown}"
