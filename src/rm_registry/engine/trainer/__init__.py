"""The training loop shared by every architecture.

One optimizer step consumes ``model.global_batch_size`` samples: they are split evenly across
the data-parallel ranks, and each rank runs micro-batches of at most ``model.micro_batch_size``
samples (and at most ``model.max_tokens_per_micro_batch`` padded tokens) with gradient
accumulation, each weighted by its share of the rank's samples. Steps hold samples of similar
length (``trainer.rm.group_by_length``, see :mod:`._batching`). The order of samples depends only
on the seed and the epoch, so the same seed and global batch give the same steps whatever the
parallel layout (the basis of the torchrun equivalence tests).

Files written by the main rank into the run folder::

    config.yaml           the resolved config
    data_stats.json       per split: read / kept / truncated / dropped samples
    metrics.jsonl         one JSON object per line: step, split (train|validation|test), loss, ...
    checkpoints/step_0000100/   dist_checkpointing weights + config + tokenizer + state
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..._errors import ConfigError, DataError, TrainingError
from ... import _signals
from .. import _contract, parallel
from ..checkpoint import _provenance
from .. import checkpoint as ckpt
from ._metrics import MetricMeans
from ..data._batching import StepSampler, epoch_order, eval_batches, forward_in_chunks, micro_batches, sample_costs
from ..checkpoint._fs import atomic_write_text, check_output_dir, writing
from .._launch import first_process
from ._loggers import attach_loggers, check_loggers
from ..checkpoint._safe_pickle import check_contained
from ..data._splits import build_split_datasets, normalize_prefix
from ..checkpoint._topk import keep_top_k
from ..config import learning_rate, load_saved_config, max_time_seconds, to_yaml, validate_engine_config
from ..progress import progress_bar as _progress
from ..tokenizer import load_tokenizer, tokenizer_to_dir

if TYPE_CHECKING:  # pragma: no cover
    from ..._protocol import RewardModelPlugin, Tokenizer

__all__ = ["TrainResult", "train", "evaluate_dataset", "build_optimizer", "build_scheduler", "checkpoint_files", "finite_for_json"]


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


_to_device = _contract.batch_to  # every tensor of the batch, whatever its first dimension


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2), torch's (fused): Megatron's optimizer needs CUDA in 0.16.1.

    ``model.optim.weight_decay`` applies to weight matrices, not to biases and norms.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    o = cfg.model.optim
    groups = [
        {"params": decay, "weight_decay": float(o.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": learning_rate(cfg), "betas": tuple(float(b) for b in o.betas), "eps": float(o.eps),
              # One fused kernel per parameter (CPU and CUDA): the same update, several times faster
              # on CPU than torch's default per-element loop there.
              "fused": all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)}
    if o.name == "adam":  # weight decay as an L2 term in the gradient (torch.optim.Adam semantics)
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to ``model.optim.lr``, then cosine decay to ``sched.min_lr`` (or constant).

    With ``sched.constant_steps`` (NeMo-Aligner's CosineAnnealing), the decay ends that many steps
    before the last step and ``min_lr`` holds for the rest; when it leaves no decay steps, the
    rate drops to ``min_lr`` right after warmup, as in NeMo.
    """
    sched = cfg.model.optim.sched
    lr, min_lr, warmup = learning_rate(cfg), float(sched.min_lr), int(sched.warmup_steps)

    # NeMo's CosineAnnealing hold phase: the last `constant_steps` steps stay at min_lr.
    constant = int(OmegaConf.select(sched, "constant_steps", default=0) or 0)
    decay = total_steps - warmup - constant

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if sched.name == "constant":
            return 1.0
        if constant and step >= warmup + max(0, decay):
            return min_lr / lr
        progress = min(1.0, (step - warmup) / max(1, decay))
        return (min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def max_tokens_per_micro_batch(cfg: DictConfig) -> int | None:
    """``model.max_tokens_per_micro_batch`` (padded tokens per forward pass), or ``None``: no cap."""
    value = OmegaConf.select(cfg, "model.max_tokens_per_micro_batch", default=None)
    return None if value is None else int(value)


def _group_by_length(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "trainer.rm.group_by_length", default=True))


def _dp_group() -> Any:
    """megatron-core's data-parallel process group."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def _allreduce_grads(model: torch.nn.Module, info: parallel.ParallelInfo, group: Any = None) -> None:
    """Average gradients over the data-parallel group (one flat buffer).

    ``group``: the process group of the ``info.dp`` data-parallel ranks; default :func:`_dp_group`.
    """
    if info.dp == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat, group=_dp_group() if group is None else group)
    flat /= info.dp
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def _clip_grad_norm(model: torch.nn.Module, max_norm: float | None, info: parallel.ParallelInfo) -> float:
    """Global gradient norm across tensor-parallel shards (replicated parameters counted once); clips in place.

    Accumulated in float64 in one pass per tensor (no float64 copy of the gradients).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    counted = [p.grad.detach() for p in params if info.tp_rank == 0 or getattr(p, "tensor_model_parallel", False)]
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    if counted:
        total += torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in counted]).pow(2).sum()
    if info.tp > 1:
        from megatron.core import parallel_state

        torch.distributed.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
    norm = float(total.sqrt())
    if max_norm and math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_([p.grad for p in params], max_norm / (norm + 1e-6))
    return norm




@torch.no_grad()
def evaluate_dataset(
    plugin: RewardModelPlugin,
    model: torch.nn.Module,
    dataset: Sequence[Any],
    cfg: DictConfig,
    tokenizer: Tokenizer,
    info: parallel.ParallelInfo,
    *,
    limit_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The plugin's evaluation metrics over ``dataset``; batches are split across data-parallel ranks.

    The batch goes to the model's device (:func:`~._contract.batch_to`, as in training); what
    ``evaluation_metrics`` reads (:func:`~._contract.evaluation_batch`: the rewards and the batch
    without ``tokens``, or the plugin's ``evaluation_batch_keys``) is kept on the CPU and, under data
    parallelism, gathered from the other ranks. Batches hold samples of similar length (with
    ``trainer.rm.group_by_length``) and respect ``model.max_tokens_per_micro_batch``. Every rank
    returns the same metrics.
    """
    was_training = model.training
    model.eval()
    max_tokens = max_tokens_per_micro_batch(cfg)
    all_batches = eval_batches(sample_costs(plugin, dataset, tokenizer.pad_id),
                               micro_batch_size=int(cfg.model.micro_batch_size), max_tokens=max_tokens,
                               sort=_group_by_length(cfg), limit_batches=limit_batches)
    mine = all_batches[info.dp_rank :: info.dp]
    outputs: list[tuple[int, torch.Tensor, dict[str, Any]]] = []
    bar = _progress(len(mine), "evaluate", enabled=progress and info.is_main)
    for number, idx in zip(range(info.dp_rank, len(all_batches), info.dp), mine):
        batch = _to_device(plugin.collate([dataset[i] for i in idx], tokenizer.pad_id), info.device)
        rewards = forward_in_chunks(model, batch["tokens"], batch["lengths"], max_tokens)
        outputs.append((number, rewards.float().cpu(), _contract.evaluation_batch(plugin, batch)))
        bar.update(1)
    bar.close()
    if info.dp > 1:
        from megatron.core import parallel_state

        gathered: list[Any] = [None] * info.dp
        torch.distributed.all_gather_object(gathered, outputs, group=parallel_state.get_data_parallel_group())
        outputs = [item for part in gathered for item in part]
    outputs.sort(key=lambda item: item[0])
    metrics = plugin.evaluation_metrics([(r, b) for _, r, b in outputs], cfg)
    model.train(was_training)
    return metrics


class _MetricsLog:
    """``metrics.jsonl`` writer (main rank only). On resume, lines after the checkpoint's step are dropped.

    The kept lines are rewritten atomically. A torn last line (the process died or the disk filled
    while it was written) is dropped with a warning; a bad line before it is a :class:`DataError`.
    """

    def __init__(self, path: Path, *, enabled: bool, keep_until_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if keep_until_step is not None and path.exists():
            kept = [line for line, record in _read_metrics(path) if record.get("step", 0) <= keep_until_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        with writing(path):
            self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with writing(self.path):
                self._fh.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
                self._fh.flush()

    def close(self) -> None:
        if self.enabled:
            try:
                self._fh.close()
            except OSError:  # the data that failed to flush was reported by write()
                pass


def _read_metrics(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` of each line of ``metrics.jsonl``; a torn last line is dropped with a warning."""
    with writing(path, "read"):
        lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8",
                                                                             errors="replace").splitlines(), 1)
                 if line.strip()]
    out = []
    for number, line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number != lines[-1][0]:
                raise DataError(path, number, f"not a JSON object ({exc}); repair or delete the line to resume") \
                    from None
            warnings.warn(f"{path}:{number}: dropped a torn last line (a write was interrupted)", RuntimeWarning,
                          stacklevel=3)
            continue
        out.append((line, record))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_for_json(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN/inf become null so that every line stays valid JSON."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in metrics.items()}


def checkpoint_files(cfg: DictConfig, tokenizer: Tokenizer, plugin: RewardModelPlugin | None = None) -> dict[str, bytes | str]:
    """What a checkpoint folder carries beside the weights: the config, the tokenizer and (given
    ``plugin``) ``plugin.json``, the plugin's distribution and version."""
    import tempfile

    files: dict[str, bytes | str] = {"config.yaml": to_yaml(cfg)}
    if plugin is not None:
        files[_provenance.PLUGIN_FILE] = json.dumps(_provenance.plugin_record(plugin), indent=2) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_to_dir(tokenizer, Path(tmp))
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                files[f"tokenizer/{f.relative_to(tmp).as_posix()}"] = f.read_bytes()
    return files


def _check_output_dir(output_dir: Path, resume: bool, resume_from: Path | None = None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run. Refuses to mix runs; writes nothing.

    With ``resume``, a run folder that never reached a complete checkpoint (interrupted early)
    starts over; a folder that is not one of our runs is refused. ``resume_from`` names one
    checkpoint folder of the run instead of its newest intact one.
    """
    check_output_dir(output_dir)
    if resume_from is not None:
        return _resume_checkpoint(output_dir, resume_from)
    if resume:
        try:
            return ckpt.find_latest(output_dir)
        except ckpt.CheckpointDamagedError:
            raise  # never start over a run whose checkpoints exist but are damaged
        except (ConfigError, FileNotFoundError) as exc:
            if (output_dir / "config.yaml").is_file() or not output_dir.exists() or not any(output_dir.iterdir()):
                _say(f"--resume: no complete checkpoint in {output_dir}; starting the run over")
                return None
            raise ConfigError(f"--resume: nothing to resume in {output_dir}: {exc}") from None
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(
            f"--output {output_dir} is not empty; pass --resume to continue the run in it (a run stopped "
            "before its first checkpoint starts over), or choose a new folder"
        )
    return None


def _resume_checkpoint(output_dir: Path, checkpoint: Path) -> Path:
    """``checkpoint`` if it is an intact checkpoint folder of the run in ``output_dir``."""
    checkpoint = Path(checkpoint)
    if not ckpt.is_complete(checkpoint):
        raise ckpt.CheckpointNotFoundError(
            f"--resume-from {checkpoint}: not a complete checkpoint folder (expected "
            f"{output_dir / 'checkpoints' / 'step_XXXXXXX'})"
        )
    if checkpoint.resolve().parent != (output_dir / "checkpoints").resolve():
        raise ConfigError(f"--resume-from {checkpoint}: not a checkpoint of the run in {output_dir} "
                          f"(expected one of {output_dir / 'checkpoints'}/step_XXXXXXX)")
    ckpt.verify_checkpoint(checkpoint)
    return checkpoint


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint folder ``RUN/checkpoints/step_XXXXXXX`` (for ``--resume-from``)."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != "checkpoints":
        raise ConfigError(f"--resume-from {checkpoint}: expected a checkpoint folder RUN/checkpoints/step_XXXXXXX; "
                          "give --output RUN too")
    return checkpoint.parent.parent


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
    resume_from = _check_output_dir(output_dir, resume, None if resume_from is None else Path(resume_from))
    if resume_from is not None:
        check_contained(resume_from)
        saved = load_saved_config((resume_from / "config.yaml").read_text(encoding="utf-8"),
                                  str(resume_from / "config.yaml"))
        _contract.resolve_config(plugin, saved)  # runs saved before the plugin resolved its defaults
        _same_model(saved, cfg, str(resume_from))
        _provenance.warn_if_other_version(resume_from, plugin)

    tokenizer = load_tokenizer(cfg)
    if not normalize_prefix("train", cfg.model.data.data_prefix.get("train")):
        raise ConfigError("no training data: pass --data FILE or set model.data.data_prefix.train")
    check_loggers(cfg)
    datasets, paths = build_split_datasets(plugin, cfg.model.data.data_prefix, tokenizer, cfg)
    train_ds, test_ds = datasets["train"], datasets.get("test")
    val_sets = _validation_sets(datasets)
    stats = {split: _stats_dict(ds) for split, ds in datasets.items()}
    gbs, mbs = int(cfg.model.global_batch_size), int(cfg.model.micro_batch_size)
    if len(train_ds) < gbs:
        raise ConfigError(
            f"{paths['train']}: {len(train_ds)} usable training samples, fewer than model.global_batch_size={gbs}"
        )

    info = parallel.initialize(
        tensor_model_parallel_size=int(cfg.model.tensor_model_parallel_size),
        pipeline_model_parallel_size=int(cfg.model.pipeline_model_parallel_size),
        seed=int(cfg.seed),
    )
    validate_engine_config(cfg, world_size=info.world_size)
    per_rank = gbs // info.dp
    seed, shuffle = int(cfg.seed), bool(cfg.trainer.rm.train_random_sampler)
    costs = sample_costs(plugin, train_ds, tokenizer.pad_id)
    sampler = StepSampler(costs, gbs, seed, shuffle=shuffle,
                          group_batches=int(OmegaConf.select(cfg, "trainer.rm.length_group_batches", default=50))
                          if _group_by_length(cfg) else 0)
    max_tokens = max_tokens_per_micro_batch(cfg)
    steps_per_epoch = sampler.steps_per_epoch
    rm = cfg.trainer.rm
    total = steps_per_epoch * int(rm.max_epochs)
    if int(rm.max_steps) != -1:
        total = min(total, int(rm.max_steps))

    parallel.manual_seed(int(cfg.seed))  # the same weights whatever ran before in this process
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size).to(info.device)
    pretrained = OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None)
    if pretrained and resume_from is None:
        from ..hf import load_hf_weights

        load_hf_weights(model, pretrained, cfg,
                        load_head=OmegaConf.select(cfg, "pretrained_checkpoint.load_rm_head_weights", default=None),
                        missing_head="pretrained_checkpoint.load_rm_head_weights=true asks for its head: set it to "
                        "false or null to start a new one", progress=progress and info.is_main)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    start_step = 0
    if resume_from is not None:
        saved_tp = int(ckpt.checkpoint_info(resume_from).get("tensor_model_parallel_size", info.tp))
        if saved_tp != info.tp:
            # The weights reshard, but the optimizer state is per shard (torch.optim, not Megatron's
            # distributed optimizer): resuming it under another TP layout would fail or be wrong.
            raise ConfigError(
                f"--resume: {resume_from} was saved with model.tensor_model_parallel_size={saved_tp}, this run "
                f"uses {info.tp}; resume with model.tensor_model_parallel_size={saved_tp} (the number of "
                "data-parallel processes may change). Evaluating and scoring work under any layout."
            )
        state = ckpt.load_checkpoint(resume_from, model)
        missing = [k for k in ("optimizer", "scheduler", "rng", "step") if k not in state]
        if missing:
            raise ConfigError(f"--resume: {resume_from} holds no trainer state ({', '.join(missing)} missing): "
                              "it can be evaluated and scored, not resumed")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_step = int(state["step"])
        _say(f"resuming from step {start_step} (checkpoint {resume_from})")

    if info.is_main:
        atomic_write_text(output_dir / "config.yaml", to_yaml(cfg))
        atomic_write_text(output_dir / "data_stats.json", json.dumps(stats, indent=2) + "\n")
        _report_data(stats, paths)
    # A resumed run keeps the log up to its checkpoint; a run started over drops the old lines.
    log = _MetricsLog(output_dir / "metrics.jsonl", enabled=info.is_main, keep_until_step=start_step)
    log = attach_loggers(log, cfg, output_dir, enabled=info.is_main)
    _schedule_note(cfg, total)
    files = checkpoint_files(cfg, tokenizer, plugin)
    clip = float(rm.gradient_clip_val) if rm.gradient_clip_val else None
    log_every, val_every, save_every = int(rm.log_every_n_steps), int(rm.val_check_interval), int(rm.save_interval)
    max_time = max_time_seconds(cfg)

    bar = _progress(total, f"train {plugin.name}", enabled=progress and info.is_main, initial=start_step)
    last_ckpt: Path | None = resume_from
    validation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    model.train()
    done = _signals.current_step = start_step  # a stop signal reports the steps done
    try:
        for step in range(start_step, total):
            t0 = time.perf_counter()
            micros = micro_batches(sampler.batch(step), costs, dp=info.dp, dp_rank=info.dp_rank,
                                   micro_batch_size=mbs, max_tokens=max_tokens, sort=_group_by_length(cfg))
            optimizer.zero_grad(set_to_none=True)
            sums = MetricMeans(f"step {step + 1}")
            tokens = padded = 0
            for micro in micros:
                weight = len(micro) / per_rank  # loss and metrics stay means over the step's samples
                batch = _to_device(plugin.collate([train_ds[i] for i in micro], tokenizer.pad_id), info.device)
                rewards = forward_in_chunks(model, batch["tokens"], batch["lengths"], max_tokens)
                loss, metrics = plugin.loss(rewards, batch, cfg)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"step {step + 1}: the training loss is {float(loss)}; lower model.optim.lr or "
                        "set trainer.rm.gradient_clip_val"
                    )
                (loss * weight).backward()
                sums.add({"loss": float(loss.detach()), **metrics},
                         _contract.metric_weight(plugin, batch, cfg, default=float(len(micro))))
                tokens += int(batch["lengths"].sum())
                padded += int(batch["tokens"].numel())
            _allreduce_grads(model, info)
            grad_norm = _clip_grad_norm(model, clip, info)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            means = sums.reduce(info, totals={"tokens": float(tokens), "padded_tokens": float(padded)})
            done = _signals.current_step = step + 1
            # NeMo-Aligner's run timer: the step that reaches the limit is logged, validated and saved.
            out_of_time = max_time is not None and _time_is_up(started, max_time, info)
            if done % log_every == 0 or done == total or out_of_time:
                seconds = time.perf_counter() - t0
                record = {"step": done, "split": "train", **{k: v for k, v in means.items()
                                                              if k not in ("tokens", "padded_tokens")}}
                record.update(lr=lr, grad_norm=grad_norm, tokens=int(round(means["tokens"])),
                              padded_tokens=int(round(means["padded_tokens"])), seconds=seconds)
                log.write(finite_for_json(record))
            bar.update(1)
            bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
            if val_sets and (done % val_every == 0 or done == total or out_of_time):
                validation = _validate(plugin, model, val_sets, cfg, tokenizer, info, log, done, progress)
            if done % save_every == 0 or done == total or out_of_time:
                last_ckpt = _save(output_dir, done, model, optimizer, scheduler, files, info)
                keep_top_k(output_dir, last_ckpt, validation, cfg, enabled=info.is_main)
            if out_of_time and done < total:
                _say(f"rm-registry: time limit exp_manager.max_time_per_run={cfg.exp_manager.max_time_per_run} "
                     f"reached at step {done} of {total}; checkpoint saved, continue with --resume")
                break
        if done >= total and test_ds is not None and len(test_ds):  # done < total: stopped by the time limit
            test = evaluate_dataset(plugin, model, test_ds, cfg, tokenizer, info)
            log.write(finite_for_json({"step": total, "split": "test", **test}))
            if info.is_main and progress:
                _say(_summary_line(total, test).replace("validation", "test"))
    finally:
        bar.close()
        log.close()
    return TrainResult(output_dir=output_dir, last_checkpoint=last_ckpt, steps=done, validation=validation,
                       test=test, data_stats=stats, seconds=time.perf_counter() - started,
                       time_limit_reached=done < total)


def _time_is_up(started: float, limit: float, info: parallel.ParallelInfo) -> bool:
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


def _validate(plugin: RewardModelPlugin, model: torch.nn.Module, val_sets: Mapping[str, Any], cfg: DictConfig,
              tokenizer: Tokenizer, info: parallel.ParallelInfo, log: Any, step: int, progress: bool) -> dict[str, Any]:
    """Evaluate every validation set, log each under its split name; the main set's metrics."""
    results = {}
    for name, dataset in val_sets.items():
        metrics = evaluate_dataset(plugin, model, _val_view(dataset, cfg), cfg, tokenizer, info)
        log.write(finite_for_json({"step": step, "split": name, **metrics}))
        if info.is_main and progress:
            _say(_summary_line(step, metrics).replace("validation", name))
        results[name] = metrics
    return results.get("validation") or next(iter(results.values()))


def _schedule_note(cfg: DictConfig, total: int) -> None:
    sched = cfg.model.optim.sched
    constant = int(OmegaConf.select(sched, "constant_steps", default=0) or 0)
    if sched.name == "CosineAnnealing" and constant and constant >= total - int(sched.warmup_steps):
        _say(f"model.optim.sched.constant_steps={constant} leaves no decay steps in this {total}-step run: the learning "
             f"rate holds at min_lr={sched.min_lr} after warmup (as in NeMo-Aligner)")


def _save(output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: Any, files: dict[str, bytes | str], info: parallel.ParallelInfo) -> Path:
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state()}
    return ckpt.save_checkpoint(output_dir / "checkpoints" / f"step_{step:07d}", model,
                                extra_files=files, state=state)


def _stats_dict(ds: Any) -> dict[str, int]:
    stats = getattr(ds, "stats", None)
    if stats is None:
        return {"kept": len(ds)}
    return dict(stats.as_dict() if hasattr(stats, "as_dict") else stats)


def _report_data(stats: Mapping[str, Mapping[str, int]], paths: Mapping[str, Any]) -> None:
    for split, s in stats.items():
        note = ""
        if s.get("dropped") or s.get("truncated"):
            note = f" ({s.get('dropped', 0)} dropped, {s.get('truncated', 0)} truncated as too long; " \
                   "see model.data.overlong_policy)"
        _say(f"{split}: {s.get('kept', 0)} samples from {paths.get(split)}{note}")


def _say(message: str) -> None:
    """One line on stderr that does not break a running progress bar; global rank 0 only."""
    if not first_process():
        return
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _summary_line(step: int, metrics: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None)
    return f"step {step} validation: {shown}"
