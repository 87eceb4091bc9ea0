"""The run configuration: one OmegaConf tree, NeMo-Aligner key names where they exist.

In: the plugin, a YAML file and ``key=value`` overrides (NeMo-Aligner's spellings too).
Out: one validated ``DictConfig`` that every later stage reads (and that each checkpoint saves).

Modules: this one (defaults, merging, validation, saved configs); ``defaults.yaml``; ``_checks``
(the torch-free checks of the model's shape and layout, and the enums, shared with the model
builder and the parallel state); ``_nemo_compat`` (NeMo-Aligner key translation and its notes);
``_memory`` (the bytes a rank holds for a model and a layout, from the config alone).

Layers, each merged over the previous one:

1. the engine defaults (``defaults.yaml`` beside this file);
2. the plugin's :meth:`~rm_registry.RewardModelPlugin.default_config`;
3. an optional YAML file (``--config``);
4. ``key=value`` overrides from the command line (OmegaConf dot-list syntax).

From layer 3 on, the tree is closed: a key that layers 1-2 do not define is a
:class:`~rm_registry.ConfigError` naming the key (NeMo-Aligner silently ignored misplaced keys;
we refuse them). A value whose type differs from the default's (a string where a number is
expected, ...) is refused too.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..._errors import ConfigError, PluginLoadError
from .. import _contract
from ._checks import (
    ATTENTION_BACKENDS,
    DTYPES,
    OPTIMIZERS,
    SCHEDULERS,
    TOKENIZER_LIBRARIES,
    check_parallel_sizes,
    choice,
    flatten,
    model_shape,
    positive,
    type_name,
    type_ok,
)
from ._nemo_compat import CompatNotes, translate, validate_nemo_keys
from ..data import OVERLONG_POLICIES

if TYPE_CHECKING:  # pragma: no cover
    from ..._protocol import RewardModelPlugin

__all__ = [
    "ATTENTION_BACKENDS",
    "DEFAULTS_PATH",
    "ENGINE_NULL_TYPES",
    "build_config",
    "engine_defaults",
    "flatten",
    "learning_rate",
    "drop_moved_keys",
    "load_saved_config",
    "max_time_seconds",
    "merge_closed",
    "parse_overrides",
    "to_yaml",
    "validate_engine_config",
]

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")

def engine_defaults() -> DictConfig:
    """The engine's default tree (a fresh copy)."""
    return OmegaConf.load(DEFAULTS_PATH)  # type: ignore[return-value]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _sections(known: dict[str, Any]) -> set[str]:
    """Every inner node of the tree (``model``, ``model.optim``, ...), given its flattened leaves."""
    return {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}


#: Types of the engine's keys whose default is null (plugins declare theirs with ``config_types()``).
ENGINE_NULL_TYPES: dict[str, Any] = {
    "model.ffn_hidden_size": int,
    "model.max_position_embeddings": int,
    "model.force_head_dtype": str,
    "model.tokenizer.path": str,
    # a path, a list of paths or a NeMo-Aligner blend [weight, path, ...]
    "model.data.data_prefix.train": (str, list),
    "model.data.data_prefix.validation": (str, list),
    "model.data.data_prefix.test": (str, list),
    "model.data.cache_dir": str,
    "model.data.columns": dict,  # {our key: the file's column}
    "trainer.rm.limit_val_batches": int,
    "trainer.precision": (str, int),  # NeMo / Lightning spell it 32, 16, bf16, bf16-mixed, ...
    "trainer.max_time": (str, dict),
    "exp_manager.max_time_per_run": (str, dict),  # its default is ${trainer.max_time}
}

def _check_types(defaults: dict[str, Any], layer: dict[str, Any], source: str,
                 types: Mapping[str, Any] | None = None) -> None:
    """Refuse a layer value whose kind differs from the default's, or from the declared type of a
    null default (``types``: :data:`ENGINE_NULL_TYPES` plus the plugin's ``config_types()``); other
    null defaults accept anything."""
    types = {**ENGINE_NULL_TYPES, **(types or {})}
    sections = _sections(defaults)
    for key, value in flatten(layer).items():
        if key in sections and not isinstance(value, Mapping):
            children = sorted(k[len(key) + 1 :] for k in defaults if k.startswith(key + ".") and "." not in k[len(key) + 1 :])
            raise ConfigError(
                f"{key}={value!r} ({source}): {key} is a section, not a value; set its keys instead "
                f"({', '.join(f'{key}.{c}' for c in children)})"
            )
        if key not in defaults:
            continue  # unknown keys are reported by _unknown_keys
        default = defaults[key]
        if value is None:
            continue
        if default is None or (isinstance(default, str) and "${" in default):  # null, or following another key
            if isinstance(value, str) and "${" in value:
                continue  # an interpolation (NeMo-Aligner's files use them): checked once resolved
            if key in types and not type_ok(value, types[key]):
                raise ConfigError(f"{key}={value!r} ({source}): expected a {type_name(types[key])}, got a {_kind(value)}")
            continue
        want, got = _kind(default), _kind(value)
        if want != got and not (want == "mapping" and got == "mapping"):
            raise ConfigError(
                f"{key}={value!r} ({source}): expected a {want} like the default {default!r}, got a {got}"
            )
        if want == "number" and isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}={value!r} ({source}): expected a whole number (default {default!r})")


def _unknown_keys(known: dict[str, Any], layer: dict[str, Any]) -> list[str]:
    """Full keys of ``layer`` that the tree does not define (a key under a known leaf counts too)."""
    sections = _sections(known)
    unknown = []
    for key in flatten(layer):
        if key in known or key in sections:
            continue
        parts = key.split(".")
        # A key below a known *leaf* (e.g. a mapping given where a null default is) is accepted.
        if any(".".join(parts[:i]) in known for i in range(1, len(parts))):
            continue
        unknown.append(key)
    return unknown


_EXTRA_VALIDATION = re.compile(r"^validation_[A-Za-z0-9_]+$")


def _add_validation_sets(base: DictConfig, layer: Any) -> None:
    """Make room in ``base`` for NeMo-Aligner's extra validation sets ``data_prefix.validation_<name>``."""
    prefix = OmegaConf.select(OmegaConf.create(layer), "model.data.data_prefix", default=None)
    if not isinstance(prefix, DictConfig):
        return
    for name in prefix:
        if _EXTRA_VALIDATION.match(str(name)) and name not in base.model.data.data_prefix:
            OmegaConf.set_struct(base, False)
            base.model.data.data_prefix[name] = None


def merge_closed(base: DictConfig, layer: DictConfig, source: str, types: Mapping[str, Any] | None = None) -> DictConfig:
    """Merge ``layer`` over ``base``, refusing unknown keys and values of the wrong type (naming them).

    ``types``: declared types of keys whose default is null (a plugin's ``config_types()``).
    """
    plain = OmegaConf.to_container(layer, resolve=False)
    _add_validation_sets(base, plain)
    defaults = flatten(OmegaConf.to_container(base, resolve=False))
    unknown = _unknown_keys(defaults, plain)  # type: ignore[arg-type]
    if unknown:
        hints = []
        from ..._habits import key_hint

        given = flatten(plain) if isinstance(plain, dict) else {}
        for key in unknown:
            trl = key_hint(key, given.get(key))  # learning_rate=1e-5, as in TRL
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.75)
            hints.append(f"{key!r}" + (f" ({trl})" if trl else f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(hints)} ({source}); "
            "`rm-registry info NAME --config` lists the keys this architecture accepts"
        )
    _check_types(defaults, plain, source, types)  # type: ignore[arg-type]
    OmegaConf.set_struct(base, True)
    try:
        merged = OmegaConf.merge(base, layer)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{exc.full_key or ''} ({source}): {exc.msg}") from None
    assert isinstance(merged, DictConfig)
    return merged


def parse_overrides(overrides: Iterable[str], *, defaults: DictConfig | None = None,
                    written: Iterable[str] = ()) -> DictConfig:
    """One config layer from command-line overrides in Hydra's syntax.

    ``key=value`` and ``++key=value`` set a key; ``+key=value`` too, but refuses a key already
    written by the ``--config`` file or an earlier override (``written``), as Hydra does; ``~key``
    (or ``~key=value``) puts the key back to its default (``defaults``: the engine and plugin
    tree), the closed-tree meaning of Hydra's delete. Values follow Hydra's grammar: ``[a,b]``,
    ``{k: v}``, quoted strings.

    Raises:
        ConfigError: naming the override that does not parse or cannot apply.
    """
    from ._nemo_compat import NEMO_KEYS, parse_hydra_overrides

    seen = set(written)
    layer = OmegaConf.create({})
    for ov in parse_hydra_overrides(overrides):
        if ov.op == "add" and ov.key in seen:
            raise ConfigError(f"override {ov.text!r}: {ov.key} is already set (Hydra's '+' only adds a key); "
                              f"use {ov.key}=... or ++{ov.key}=... to change it")
        seen.add(ov.key)
        if ov.op != "delete":
            OmegaConf.update(layer, ov.key, ov.value, merge=False, force_add=True)
            continue
        if defaults is None:
            raise ConfigError(f"override {ov.text!r}: '~' (reset to default) is only accepted by train")
        if OmegaConf.select(defaults, ov.key, default="<missing>") == "<missing>":
            if ov.key in NEMO_KEYS or ov.key.startswith("model.data.data_prefix."):
                continue  # deleting a NeMo-only key (or an extra validation set) leaves nothing to do
            raise ConfigError(f"override {ov.text!r}: unknown config key {ov.key!r}")
        OmegaConf.update(layer, ov.key, OmegaConf.select(defaults, ov.key), merge=False, force_add=True)
    return layer


def build_config(
    plugin: RewardModelPlugin,
    *,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    data_paths: Mapping[str, str | Path | None] | None = None,
    report: bool = False,
) -> DictConfig:
    """Merge the layers for ``plugin``, validate the result and resolve the plugin's open values.

    Validation is complete: the engine's keys (:func:`validate_engine_config`), then
    ``plugin.validate_config(cfg)``, then the optional ``plugin.resolve_config(cfg)``; callers need
    not call ``validate_config`` again. Keys with a null default are type-checked against
    :data:`ENGINE_NULL_TYPES` and the plugin's optional ``config_types()``.

    Args:
        plugin: The architecture; its name becomes ``model.reward_model_type``.
        config_file: Optional YAML file in the same shape as ``defaults.yaml``.
        overrides: ``key=value`` strings (``trainer.rm.max_steps=300``).
        data_paths: ``{"train": ..., "validation": ..., "test": ...}`` from the command line;
            they take precedence over ``model.data.data_prefix``.
        report: Print once (stderr, rank 0) which NeMo-Aligner keys were mapped and ignored.

    Raises:
        ConfigError: naming the key (and the file) that is unknown or invalid.
    """
    cfg = engine_defaults()
    try:
        defaults = plugin.default_config()
    except Exception as exc:  # the plugin's own code failed: name it, no traceback
        raise PluginLoadError(
            f"plugin {plugin.name!r}: default_config() raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        plugin_layer = OmegaConf.create(defaults)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"plugin {plugin.name!r}: default_config() is not a valid config tree: {exc}") from None
    cfg = OmegaConf.merge(cfg, plugin_layer)  # open: the plugin adds its own section
    assert isinstance(cfg, DictConfig)
    types = _contract.config_types(plugin)
    defaults_tree = cfg.copy()
    notes = CompatNotes()
    written: list[str] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {path}: " + ("is a folder, expected a YAML file" if path.is_dir()
                                                        else "no such file"))
        try:
            layer = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and OmegaConf errors
            raise ConfigError(f"{path}: not a valid YAML config: {exc}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        file_type = OmegaConf.select(layer, "model.reward_model_type")
        if file_type is not None and file_type != plugin.name and override_type(overrides) != plugin.name:
            raise ConfigError(
                f"{path}: model.reward_model_type={file_type!r} but the architecture is {plugin.name!r}"
            )
        written = list(flatten(OmegaConf.to_container(layer, resolve=False)))
        cfg, user_set = _merge_nemo(cfg, layer, str(path), notes, types)
    else:
        user_set = []
    if overrides:
        override_layer = parse_overrides(overrides, defaults=defaults_tree, written=written)
        cfg, more = _merge_nemo(cfg, override_layer, "command line", notes, types)
        user_set += more
    if override_type(overrides) not in (None, plugin.name):
        raise ConfigError(f"model.reward_model_type={override_type(overrides)!r} (command line) but the "
                          f"architecture is {plugin.name!r}")
    if OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None):
        from ..hf import apply_pretrained  # architecture, tokenizer and head from the folder's config.json

        user_keys = {key: OmegaConf.select(cfg, key, default=None) for key in user_set}
        cfg = apply_pretrained(cfg, user_keys)
    elif OmegaConf.select(cfg, "pretrained_checkpoint.load_rm_head_weights", default=None) is True:
        notes.notes.append("note: pretrained_checkpoint.load_rm_head_weights=true has no effect without --pretrained "
                           "(pretrained_checkpoint.restore_from_path): the head starts from scratch")
    cfg.model.reward_model_type = plugin.name
    for split, value in (data_paths or {}).items():
        if value is not None:
            cfg.model.data.data_prefix[split] = str(value)
    OmegaConf.set_struct(cfg, True)
    _resolve_learning_rate(cfg)
    validate_engine_config(cfg)
    plugin.validate_config(cfg)
    _contract.resolve_config(plugin, cfg)
    if report:
        notes.report()
    return cfg


def override_type(overrides: Iterable[str]) -> str | None:
    """``model.reward_model_type`` as set on the command line (any Hydra prefix), else None."""
    from ._nemo_compat import parse_hydra_overrides

    items = [o for o in overrides if "model.reward_model_type" in o]
    found = [ov.value for ov in parse_hydra_overrides(items) if ov.key == "model.reward_model_type" and ov.op != "delete"]
    return str(found[-1]) if found else None


def _merge_nemo(cfg: DictConfig, layer: DictConfig, source: str, notes: CompatNotes,
                types: Mapping[str, Any] | None = None) -> tuple[DictConfig, list[str]]:
    """Translate NeMo-Aligner keys of ``layer`` (see ``_nemo_compat``), then :func:`merge_closed`.

    Returns:
        The merged config and the (translated) keys the layer set.
    """
    plain, layer_notes = translate(OmegaConf.to_container(layer, resolve=False), source, cfg)  # type: ignore[arg-type]
    notes.extend(layer_notes)
    return merge_closed(cfg, OmegaConf.create(plain), source, types), list(flatten(plain))


def _resolve_learning_rate(cfg: DictConfig) -> None:
    """Replace a null ``model.optim.lr`` by the width-scaled value (so the saved config shows it);
    its ``sched.min_lr`` is lowered to a tenth of it when it would be above it (very wide models)."""
    if OmegaConf.select(cfg, "model.optim.lr") is not None or not isinstance(cfg.model.hidden_size, int):
        return
    lr = learning_rate(cfg)
    cfg.model.optim.lr = lr
    if float(cfg.model.optim.sched.min_lr) > lr:
        cfg.model.optim.sched.min_lr = lr / 10


#: ``model.optim.lr: null`` is ``REFERENCE_LR * REFERENCE_WIDTH / model.hidden_size``. Adam moves every
#: weight by about the learning rate whatever the width, so a wider model needs a smaller one: at
#: hidden 256, 1e-3 collapsed every reward to one constant within 10 steps and 2.5e-4 still lost
#: most of its gradient, while 1e-4 (TRL's default) learned (docs/performance.md).
REFERENCE_LR, REFERENCE_WIDTH = 1e-4, 256


def learning_rate(cfg: DictConfig) -> float:
    """The peak learning rate: ``model.optim.lr``, or when null the width-scaled default
    (4e-4 at the default hidden size 64, 1e-4 at 256, 2.5e-5 at 1024); :func:`build_config`
    writes it into the config.

    Raises:
        ConfigError: a value that is not a positive number.
    """
    value = OmegaConf.select(cfg, "model.optim.lr")
    if value is None:
        return REFERENCE_LR * REFERENCE_WIDTH / int(cfg.model.hidden_size)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"model.optim.lr={value!r}: expected a positive learning rate (or null: "
                          f"{REFERENCE_LR:g} x {REFERENCE_WIDTH} / model.hidden_size)")
    return float(value)


_TIME_UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def max_time_seconds(cfg: DictConfig) -> float | None:
    """``exp_manager.max_time_per_run`` in seconds (None: no limit).

    NeMo-Aligner's (and PyTorch Lightning's ``trainer.max_time``) forms: ``"DD:HH:MM:SS"`` or a
    mapping of ``days``, ``hours``, ``minutes``, ``seconds``.

    Raises:
        ConfigError: another form, a negative or zero duration, naming the value.
    """
    key = "exp_manager.max_time_per_run"
    raw = OmegaConf.to_container(cfg.exp_manager, resolve=False).get("max_time_per_run") if "exp_manager" in cfg else None
    followed = raw[2:-1] if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") else None
    try:
        value = OmegaConf.select(cfg, "exp_manager.max_time_per_run", default=None, throw_on_resolution_failure=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"exp_manager.max_time_per_run={raw!r}: {' '.join(str(exc).split())}") from None
    if value is None:
        return None
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value)
    # name the key the user set (the default and NeMo's stock yaml follow ${trainer.max_time})
    said = f"{followed}={value!r} (exp_manager.max_time_per_run follows it)" if followed else f"{key}={value!r}"
    how = 'expected "DD:HH:MM:SS" (for example "00:03:55:00") or {days: .., hours: .., minutes: .., seconds: ..}'
    if isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"{said}: {how}")
        seconds = sum(int(p) * unit for p, unit in zip(parts, _TIME_UNITS.values()))
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(_TIME_UNITS))
        if unknown or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                              for v in value.values()):
            raise ConfigError(f"{said}: {how}")
        seconds = sum(float(v) * _TIME_UNITS[k] for k, v in value.items())
    else:
        raise ConfigError(f"{said}: {how}")
    if seconds <= 0:
        raise ConfigError(f"{said}: the limit must be longer than zero (null: no limit)")
    return float(seconds)


def validate_engine_config(cfg: DictConfig, *, world_size: int = 1) -> None:
    """Check the engine's keys (the plugin checks its own section).

    Raises:
        ConfigError: naming the key and the value.
    """
    m = cfg.model
    shape = model_shape(cfg)  # the model's keys, as the model builder reads them
    positive(cfg, "model.micro_batch_size")
    positive(cfg, "model.global_batch_size")
    if m.global_batch_size % m.micro_batch_size:
        raise ConfigError(
            f"model.global_batch_size={m.global_batch_size} is not a multiple of "
            f"model.micro_batch_size={m.micro_batch_size}"
        )
    head = OmegaConf.select(cfg, "pretrained_checkpoint.load_rm_head_weights", default=None)
    if head is not None and not isinstance(head, bool):
        raise ConfigError(f"pretrained_checkpoint.load_rm_head_weights={head!r} (NeMo-Aligner's "
                          "model.regression.load_rm_head_weights sets it too): expected true (the --pretrained "
                          "folder's score head is required), false (a new head) or null (the folder's head if any)")
    # a saved or written config holds the canonical names (the model builder also reads bf16, 16, ...)
    choice(cfg, "model.params_dtype", DTYPES)
    if m.force_head_dtype is not None:
        choice(cfg, "model.force_head_dtype", DTYPES)
    _check_batching(cfg)
    choice(cfg, "model.tokenizer.library", TOKENIZER_LIBRARIES)
    if m.tokenizer.library == "huggingface" and not m.tokenizer.path:
        raise ConfigError("model.tokenizer.library=huggingface needs model.tokenizer.path (a local tokenizer.json)")
    choice(cfg, "model.data.overlong_policy", OVERLONG_POLICIES)
    choice(cfg, "model.optim.name", OPTIMIZERS)
    choice(cfg, "model.optim.sched.name", SCHEDULERS)
    lr = learning_rate(cfg)
    if float(m.optim.sched.min_lr) > lr:
        raise ConfigError(f"model.optim.sched.min_lr={m.optim.sched.min_lr} is larger than model.optim.lr={m.optim.lr}")
    if not isinstance(m.optim.betas, ListConfig) or len(m.optim.betas) != 2:
        raise ConfigError(f"model.optim.betas={m.optim.betas!r}: expected two numbers [beta1, beta2]")
    if int(m.optim.sched.warmup_steps) < 0:
        raise ConfigError(f"model.optim.sched.warmup_steps={m.optim.sched.warmup_steps}: expected >= 0")
    rm = cfg.trainer.rm
    positive(cfg, "trainer.rm.max_steps", allow_minus_one=True)
    positive(cfg, "trainer.rm.max_epochs")
    positive(cfg, "trainer.rm.val_check_interval")
    positive(cfg, "trainer.rm.save_interval")
    positive(cfg, "trainer.rm.log_every_n_steps")
    validate_nemo_keys(cfg)
    max_time_seconds(cfg)
    if rm.gradient_clip_val is not None and float(rm.gradient_clip_val) < 0:
        raise ConfigError(f"trainer.rm.gradient_clip_val={rm.gradient_clip_val}: expected >= 0 (0 or null: no clipping)")
    if world_size > 1:
        check_parallel_sizes(shape.tensor_parallel, shape.pipeline_parallel, world_size)
        dp = world_size // (shape.tensor_parallel * shape.pipeline_parallel)
        if m.global_batch_size % (m.micro_batch_size * dp):
            raise ConfigError(
                f"model.global_batch_size={m.global_batch_size} is not a multiple of model.micro_batch_size="
                f"{m.micro_batch_size} x data-parallel size {dp}"
            )


def _check_batching(cfg: DictConfig) -> None:
    """``model.max_tokens_per_micro_batch``, ``trainer.rm.length_group_batches`` (configs saved
    before these keys existed lack them: their defaults apply)."""
    if OmegaConf.select(cfg, "model.max_tokens_per_micro_batch") is not None:
        budget = positive(cfg, "model.max_tokens_per_micro_batch")
        if budget < cfg.model.encoder_seq_length:
            raise ConfigError(
                f"model.max_tokens_per_micro_batch={budget} is smaller than model.encoder_seq_length="
                f"{cfg.model.encoder_seq_length}: one sequence must fit in a forward pass; raise it or set null"
            )
    if OmegaConf.select(cfg, "trainer.rm.length_group_batches") is not None:
        positive(cfg, "trainer.rm.length_group_batches")


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (stored beside checkpoints)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def drop_moved_keys(cfg: Any) -> None:
    """Remove, in place, keys that saved configs (runs, exported ``config.json``) may hold but
    that live elsewhere now. ``cfg``: a config or a plain dict, from the root.

    ``model.regression.load_rm_head_weights``: the regression plugin's copy of NeMo-Aligner's flag
    is the engine's ``pretrained_checkpoint.load_rm_head_weights`` now; it only acts when a run
    starts from a Hugging Face folder, which a saved model has done already.
    """
    model = cfg.get("model") if isinstance(cfg, (dict, DictConfig)) else None
    regression = model.get("regression") if isinstance(model, (dict, DictConfig)) else None
    if isinstance(regression, (dict, DictConfig)):
        regression.pop("load_rm_head_weights", None)


def load_saved_config(text: str, source: str) -> DictConfig:
    """Read a config stored by :func:`to_yaml` (from a checkpoint folder), as data only.

    OmegaConf parses YAML with a safe loader (no ``!!python/...`` tags, alias bombs refused).
    Interpolations (``${oc.env:SECRET}``) are refused: :func:`to_yaml` stores resolved values, so
    a saved config never has one, and resolving one would read the environment of the loader.
    """
    try:
        cfg = OmegaConf.create(text)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: unreadable config: {' '.join(str(exc).split())}") from None
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=False)).items():  # before anything resolves
        if "${" in str(value):
            raise ConfigError(f"{source}: {key}={value!r} is an interpolation; a saved config holds resolved "
                              "values only, so this one was not written by rm-registry")
    if not isinstance(cfg, DictConfig) or OmegaConf.select(cfg, "model.reward_model_type") is None:
        raise ConfigError(f"{source}: not an rm-registry config (no model.reward_model_type)")
    drop_moved_keys(cfg)
    # Keys added to the engine after the run was saved take their defaults (today's model).
    merged = OmegaConf.merge(engine_defaults(), cfg)
    assert isinstance(merged, DictConfig)
    return merged
