"""NeMo-Aligner compatibility: its ``training_rm.yaml`` keys and Hydra's override syntax.

NeMo-Aligner (archived in 2025) trained reward models from ``examples/nlp/gpt/conf/training_rm.yaml``
plus Hydra overrides on the command line. This module lets such a config and such a command line
be given to ``rm-registry train`` as they are:

* :data:`NEMO_KEYS` says, for every NeMo-Aligner key that is not also one of ours, what happens to
  it: **mapped** onto our key (said once at start), **ignored** (no meaning on this engine: cluster
  layout, apex and communication options, ``.nemo`` file handling; listed in ONE warning line), or
  **neutral** (accepted only at the value that changes nothing; any other value would change the
  run and cannot be honoured, so it is refused with the reason). Keys that NeMo-Aligner's reward
  model shares with us (``model.micro_batch_size``, ``trainer.rm.max_steps``, ...) are ordinary
  keys of ``defaults.yaml`` and do what they did.
* :func:`parse_hydra_overrides` reads ``key=value``, ``+key=value``, ``++key=value``, ``~key`` and
  ``~key=value`` with Hydra's own grammar (quoting of strings, lists and dicts).

Unknown keys that are not NeMo-Aligner's stay errors (``config.merge_closed`` reports them).
Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..._errors import ConfigError
from .._launch import first_process
from ..data._splits import normalize_prefix
from ._checks import flatten, precision_from

__all__ = ["NEMO_KEYS", "CompatNotes", "HydraOverride", "parse_hydra_overrides", "recompute_options", "register_resolvers",
           "translate", "validate_nemo_keys"]


def register_resolvers() -> None:
    """The ``${multiply:a,b}`` and ``${int_div:a,b}`` resolvers NeMo-Aligner's configs use."""
    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)


# --- what each NeMo-Aligner key becomes ------------------------------------------------------------

_OPTIMIZERS = {"distributed_fused_adam": "adamw", "fused_adam": "adamw", "adamw": "adamw", "adam": "adam"}




def _optimizer(value: Any) -> str:
    if value not in _OPTIMIZERS:
        raise ConfigError(f"model.optim.name={value!r}: expected one of {', '.join(_OPTIMIZERS)}")
    return _OPTIMIZERS[value]


@dataclass(frozen=True)
class _Rule:
    """What happens to one NeMo-Aligner key (a glob pattern over the dotted key)."""

    kind: str  # "map" | "ignore" | "neutral"
    why: str
    target: str | None = None  # map: our key (None: the same key)
    convert: Callable[[Any], Any] | None = None  # map: value conversion
    allowed: tuple[Any, ...] = ()  # neutral: values that change nothing
    also: Callable[[Any], dict[str, Any]] | None = None  # map: further keys a value sets, {key: value}


def _ignore(why: str) -> _Rule:
    return _Rule("ignore", why)


def _neutral(why: str, *allowed: Any) -> _Rule:
    return _Rule("neutral", why, allowed=allowed)


_CLUSTER = "cluster layout: torchrun sets the processes"
_APEX = "apex / distributed-optimizer option with no effect on results"
_NEMO_FILE = ".nemo file handling (not read yet: import Hugging Face weights with --pretrained)"
_UNUSED = "not read by NeMo-Aligner's reward-model training either"

#: NeMo-Aligner keys (glob patterns) that are not rm-registry keys, and what happens to each.
NEMO_KEYS: dict[str, _Rule] = {
    "defaults": _ignore("Hydra defaults list (Transformer Engine tp-comm-overlap settings)"),
    "trainer.num_nodes": _ignore(_CLUSTER),
    "trainer.devices": _ignore(_CLUSTER),
    "trainer.accelerator": _ignore(_CLUSTER),
    "trainer.logger": _ignore("PyTorch Lightning internals ('do not change')"),
    "trainer.enable_checkpointing": _ignore("PyTorch Lightning internals ('do not change')"),
    "trainer.use_distributed_sampler": _ignore("PyTorch Lightning internals ('do not change')"),
    "trainer.max_epochs": _ignore("mirrors trainer.rm.max_epochs, which is what runs"),
    "trainer.max_steps": _ignore("mirrors trainer.rm.max_steps, which is what runs"),
    # NeMo trains megatron models mixed for bf16 / 16 too: our mode names
    "trainer.precision": _Rule("map", "precision", convert=precision_from),
    "exp_manager.exp_dir": _ignore("run naming: the run folder is --output or exp_manager.explicit_log_dir"),
    "exp_manager.name": _ignore("run naming: the run folder is --output or exp_manager.explicit_log_dir"),
    "exp_manager.resume_from_checkpoint": _neutral(
        "resume a run with --resume --output RUN_FOLDER (the latest checkpoint)", None),
    "exp_manager.resume_ignore_no_checkpoint": _ignore("a run without a checkpoint always starts over"),
    "exp_manager.create_checkpoint_callback": _ignore("checkpoints are always written (trainer.rm.save_interval)"),
    "exp_manager.checkpoint_callback_params.always_save_nemo": _ignore(_NEMO_FILE),
    "exp_manager.checkpoint_callback_params.save_nemo_on_train_end": _ignore(_NEMO_FILE),
    "exp_manager.checkpoint_callback_params.filename": _ignore("checkpoint folders are named step_NNNNNNN"),
    "exp_manager.checkpoint_callback_params.model_parallel_size": _ignore(_CLUSTER),
    "exp_manager.checkpoint_callback_params.save_last": _ignore("the latest checkpoint is always kept"),
    "model.mcore_gpt": _neutral("the backbone is always megatron-core's GPTModel", True),
    "model.share_embeddings_and_output_weights": _ignore("a reward model has no vocabulary projection"),
    "model.megatron_amp_O2": _ignore(_APEX),
    "model.forward_micro_batch_size": _ignore("inference batch size: use `rm-registry score --batch-size`"),
    "model.precision": _ignore("mirrors trainer.precision"),
    "model.seed": _Rule("map", "seed", target="seed"),
    "model.regression.load_rm_head_weights": _Rule("map", "the pretrained folder's head",
                                                   target="pretrained_checkpoint.load_rm_head_weights"),
    "model.dist_ckpt_load_strictness": _ignore(_NEMO_FILE),
    "model.overwrite_base_config*": _ignore(_NEMO_FILE),
    "model.ub_tp_comm_overlap*": _ignore(_APEX),
    "model.transformer_engine": _ignore("Transformer Engine is used when installed on a GPU"),
    "model.optim.name": _Rule("map", "optimizer", target="model.optim.name", convert=_optimizer,
                              also=lambda v: {"model.optim.use_distributed_optimizer": True}  # apex's ZeRO-1 Adam
                              if v == "distributed_fused_adam" else {}),
    "model.optim.bucket_cap_mb": _ignore(_APEX),
    "model.optim.overlap_grad_sync": _ignore(_APEX),
    "model.optim.overlap_param_sync": _ignore(_APEX),
    "model.optim.contiguous_grad_buffer": _ignore(_APEX),
    "model.optim.grad_sync_dtype": _ignore(_APEX),
    "model.data.data_impl": _neutral("only JSON Lines data is read", "jsonl"),
    "model.data.splits_string": _neutral(
        "splitting one file into train/validation/test is not supported: give each split its own file", None),
    "model.data.skip_warmup": _ignore("no index warm-up: JSON Lines files are read whole"),
    "model.data.num_workers": _ignore("data is tokenized once, before training"),
    "model.data.index_mapping_dir": _ignore("no index mapping files are written"),
    "model.data.reset_position_ids": _neutral("position ids are never reset inside a sample", False),
    "model.data.reset_attention_mask": _neutral("the attention mask is never reset inside a sample", False),
    "model.data.eod_mask_loss": _neutral("a reward model has no token loss to mask", False),
    "model.data.validation_drop_last": _ignore("validation always covers every sample"),
    "model.data.train_ds*": _ignore(_UNUSED),
    "model.data.validation_ds*": _ignore(_UNUSED),
    "model.data.test_ds*": _ignore(_UNUSED),
    "model.data.shuffle_documents": _ignore(_UNUSED),
}


#: NeMo-Aligner's ``model.regression`` keys: its config carries them for every reward_model_type.
_REGRESSION_KEYS = frozenset(f"model.regression.{k}" for k in (
    "num_attributes", "merge_attributes", "attribute_weights", "loss_mask_val", "loss_func"))


def _rule(key: str) -> _Rule | None:
    if key in NEMO_KEYS:
        return NEMO_KEYS[key]
    for pattern, rule in NEMO_KEYS.items():
        if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(key, pattern):
            return rule
        if key.startswith(pattern + "."):  # a mapping given where NeMo has one (e.g. train_ds.shuffle)
            return rule
    return None


@dataclass
class CompatNotes:
    """What :func:`translate` did, reported once at start by :meth:`report`."""

    ignored: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)  # NeMo key -> what it became (the last layer wins)
    notes: list[str] = field(default_factory=list)  # one line each, said as they are

    def extend(self, other: CompatNotes) -> None:
        self.ignored += [k for k in other.ignored if k not in self.ignored]
        self.mapped.update(other.mapped)
        self.notes += [n for n in other.notes if n not in self.notes]

    def lines(self) -> list[str]:
        out = [f"NeMo-Aligner key {m}" for m in self.mapped.values()] + self.notes
        if self.ignored:
            out.append(
                f"warning: ignoring NeMo-Aligner keys with no effect here ({len(self.ignored)}): "
                + ", ".join(self.ignored) + " (see docs/migrating-from-nemo-aligner.md)"
            )
        return out

    def report(self) -> None:
        """Print :meth:`lines` on stderr (global rank 0 only under torchrun)."""

        if first_process():
            for line in self.lines():
                print(line, file=sys.stderr, flush=True)


def _resolved(view: DictConfig | None, key: str, raw: Any) -> Any:
    """``raw`` with its interpolations resolved against ``view`` (raw if they do not resolve)."""
    if view is None or not (isinstance(raw, str) and "${" in raw):
        return raw
    try:
        return OmegaConf.select(view, key, default=raw, throw_on_resolution_failure=True)
    except OmegaConfBaseException:
        return raw


def _check_pretrained(value: Any, source: str) -> None:
    """``pretrained_checkpoint.restore_from_path`` is ours (a Hugging Face folder, ``engine/hf``); a
    ``.nemo`` file, what NeMo-Aligner took there, gets a clear refusal."""
    if isinstance(value, str) and value.rstrip("/").endswith(".nemo"):
        raise ConfigError(
            f"pretrained_checkpoint.restore_from_path={value} ({source}): .nemo files are not read yet; convert the "
            "model to a Hugging Face folder (NeMo's export scripts) and pass it with --pretrained DIR "
            "(docs/pretrained.md)"
        )


def _check_seq_length(value: Any, view: DictConfig | None, source: str) -> None:
    seq = OmegaConf.select(view, "model.encoder_seq_length", default=None) if view is not None else None
    if value is None or value == "${model.encoder_seq_length}" or value == seq:
        return
    raise ConfigError(
        f"model.data.seq_length={value!r} ({source}) differs from model.encoder_seq_length={seq!r}; rm-registry "
        "reads samples up to model.encoder_seq_length: set that one (and drop model.data.seq_length)"
    )


def _view(base: DictConfig | None, layer: Mapping[str, Any]) -> DictConfig | None:
    if base is None:
        return None
    try:
        view = OmegaConf.merge(OmegaConf.to_container(base, resolve=False), layer)
    except OmegaConfBaseException:
        return None
    return view if isinstance(view, DictConfig) else None


def translate(layer: Mapping[str, Any], source: str, base: DictConfig | None = None) -> tuple[dict[str, Any], CompatNotes]:
    """Turn NeMo-Aligner keys of one config layer into ours.

    Args:
        layer: A plain nested dict (a ``--config`` file or the command-line overrides).
        source: Where it comes from (for messages).
        base: The config this layer is merged over (interpolations such as ``${trainer.precision}``
            are resolved against it with the layer on top).

    Returns:
        ``(layer without NeMo-only keys, with mapped keys moved; notes to report)``.

    Raises:
        ConfigError: a key whose value would change the run and cannot be honoured, naming the
            key, the value and why.
    """

    register_resolvers()
    view = _view(base, layer)
    has_regression = base is not None and OmegaConf.select(base, "model.regression", default=None) is not None
    notes = CompatNotes()
    out = OmegaConf.create({})
    for key, raw in flatten(layer).items():
        if key == "model.data.data_prefix":  # a leaf here: null or NeMo's one-prefix form
            if raw is None:
                continue  # NeMo's default (no data yet); the splits keep theirs
            raise ConfigError(
                f"model.data.data_prefix={raw!r} ({source}): expected a mapping of splits, e.g. "
                "\"model.data.data_prefix={train: [train.jsonl], validation: [val.jsonl]}\" (splitting one "
                "prefix with model.data.splits_string is not supported)"
            )
        if key == "pretrained_checkpoint.restore_from_path":
            _check_pretrained(_resolved(view, key, raw), source)
        if key == "model.data.seq_length":
            _check_seq_length(_resolved(view, key, raw), view, source)
            notes.mapped[key] = "model.data.seq_length -> model.encoder_seq_length (they must agree)"
            continue
        rule = _rule(key)
        if rule is None and key in _REGRESSION_KEYS and base is not None and not has_regression:
            notes.ignored.append(key)  # NeMo's config carries this section for every reward_model_type
            continue
        if rule is None:
            OmegaConf.update(out, key, raw, force_add=True)
            continue
        value = _resolved(view, key, raw)
        if rule.kind == "ignore":
            notes.ignored.append(key)
        elif rule.kind == "neutral":
            if value not in rule.allowed:
                allowed = " or ".join(repr(a) if a is not None else "null" for a in rule.allowed)
                raise ConfigError(f"{key}={value!r} ({source}): {rule.why}; only {allowed} is accepted")
            notes.ignored.append(key)
        else:  # map
            target = rule.target or key
            new = rule.convert(value) if rule.convert else value
            OmegaConf.update(out, target, new, force_add=True)
            if target != key or new != value:
                notes.mapped[key] = f"{key}={value} -> {target}={new}"
            for extra_key, extra in (rule.also(value) if rule.also else {}).items():
                OmegaConf.update(out, extra_key, extra, force_add=True)
                notes.mapped[key] += f", {extra_key}={str(extra).lower() if isinstance(extra, bool) else extra}"
    return OmegaConf.to_container(out, resolve=False), notes  # type: ignore[return-value]


# --- Hydra override syntax -------------------------------------------------------------------------

@dataclass(frozen=True)
class HydraOverride:
    """One parsed command-line override.

    Attributes:
        key: Dotted key (``model.optim.lr``).
        op: ``set`` (``key=value``), ``add`` (``+key=value``), ``force`` (``++key=value``) or
            ``delete`` (``~key`` / ``~key=value``).
        value: The parsed value (Hydra grammar: ``[a,b]`` lists, ``{k: v}`` dicts, quoted strings).
        has_value: Whether ``~key=value`` gave a value to check before deleting.
        text: The override as typed.
    """

    key: str
    op: str
    value: Any
    has_value: bool
    text: str


def parse_hydra_overrides(items: Iterable[str]) -> list[HydraOverride]:
    """Parse overrides with Hydra's grammar.

    Raises:
        ConfigError: an override that does not parse, a sweep (``a=1,2``) or a config group
            (``@package``), naming it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text in items:
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(f"override {text!r} is not of the form key=value (for example trainer.rm.max_steps=300)")
        try:
            (ov,) = parser.parse_overrides([text])
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"override {text!r}: the value is not valid ({first}); Hydra syntax: key=value, +key=value, ++key=value, "
                "~key, lists [a,b], dicts {k: v}, quote values with spaces"
            ) from None
        if ov.is_sweep_override():
            raise ConfigError(f"override {text!r}: sweeps (multirun) are not supported; run once per value")
        if ov.package is not None:
            raise ConfigError(f"override {text!r}: Hydra config-group packages (@...) are not supported")
        op = "delete" if ov.is_delete() else "force" if ov.is_force_add() else "add" if ov.is_add() else "set"
        value = ov.value()
        out.append(HydraOverride(ov.key_or_group, op, value, op == "delete" and value is not None, text))
    return out


# --- the NeMo-Aligner keys that are rm-registry keys too (defaults.yaml) ----------------------------

_GRANULARITIES = ("full", "selective")
_METHODS = ("uniform", "block")


def recompute_options(cfg: DictConfig) -> dict[str, Any]:
    """megatron-core ``TransformerConfig`` recompute arguments from NeMo's activation-checkpoint keys.

    ``full`` recomputes whole layers in the backward pass (``_method`` ``uniform``: chunks of
    ``_num_layers`` layers, only chunk inputs kept; ``block``: the first ``_num_layers`` layers);
    ``selective`` recomputes the core attention only (method and layer count do not apply).

    Raises:
        ConfigError: naming the key and value.
    """
    m = cfg.model
    granularity = OmegaConf.select(m, "activations_checkpoint_granularity", default=None)
    method = OmegaConf.select(m, "activations_checkpoint_method", default=None)
    layers = OmegaConf.select(m, "activations_checkpoint_num_layers", default=None)
    if granularity is None:
        return {}
    if granularity not in _GRANULARITIES:
        raise ConfigError(f"model.activations_checkpoint_granularity={granularity!r}: expected full, selective or null")
    if granularity == "selective":
        return {"recompute_granularity": "selective"}
    if method not in _METHODS:
        raise ConfigError(f"model.activations_checkpoint_method={method!r}: full recomputation needs uniform or block")
    num_layers = int(m.num_layers)
    if layers is None:
        layers = 1
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= num_layers:
        raise ConfigError(
            f"model.activations_checkpoint_num_layers={layers!r}: expected a whole number in 1..model.num_layers={num_layers}"
        )
    return {"recompute_granularity": "full", "recompute_method": method, "recompute_num_layers": layers}


def _limit_val_batches(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"trainer.rm.limit_val_batches={value!r}: expected a whole number of global batches, "
                          "a fraction in (0, 1], or null")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ConfigError(f"trainer.rm.limit_val_batches={value!r}: a fraction must be in (0, 1]")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"trainer.rm.limit_val_batches={value!r}: expected >= 1 global batch")


def validate_nemo_keys(cfg: DictConfig) -> None:
    """Check the keys added for NeMo-Aligner users (recomputation, schedule hold, validation,
    exp_manager); called by ``config.validate_engine_config``.

    Raises:
        ConfigError: naming the key and value.
    """

    recompute_options(cfg)

    def sel(key: str, default: Any = None) -> Any:  # configs saved before these keys existed lack them
        return OmegaConf.select(cfg, key, default=default)

    constant = sel("model.optim.sched.constant_steps", 0)
    if isinstance(constant, bool) or not isinstance(constant, int) or constant < 0:
        raise ConfigError(f"model.optim.sched.constant_steps={constant!r}: expected a whole number >= 0")
    _limit_val_batches(sel("trainer.rm.limit_val_batches"))
    for split, value in (sel("model.data.data_prefix") or {}).items():
        normalize_prefix(str(split), value)
    top_k = sel("exp_manager.checkpoint_callback_params.save_top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1 or top_k == 0):
        raise ConfigError(f"exp_manager.checkpoint_callback_params.save_top_k={top_k!r}: expected k >= 1, -1 or null "
                          "(keep every checkpoint)")
    mode = sel("exp_manager.checkpoint_callback_params.mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"exp_manager.checkpoint_callback_params.mode={mode!r}: expected min or max")
    monitor = sel("exp_manager.checkpoint_callback_params.monitor", "val_loss")
    if not str(monitor).startswith("val_"):
        raise ConfigError(f"exp_manager.checkpoint_callback_params.monitor={monitor!r}: expected val_<metric> "
                          "(a validation metric, e.g. val_loss or val_accuracy)")
    kwargs = sel("exp_manager.wandb_logger_kwargs")
    if kwargs is not None and not isinstance(kwargs, DictConfig):
        raise ConfigError(f"exp_manager.wandb_logger_kwargs={kwargs!r}: expected a mapping (project, name, ...)")
