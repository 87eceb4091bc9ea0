"""The contract between the engine and a reward-model architecture.

Importing this module never imports torch: tensor types appear only in annotations
(``from __future__ import annotations``), so the registry can check plugins cheaply.

Shapes used below:
    N: number of sequences in a batch (for pairwise data, ``2 * P`` with the P chosen
       sequences first and the P rejected ones after them, as NeMo-Aligner concatenates).
    S: the longest sequence in the batch (batches are padded to it, not to ``seq_length``).
    K: the number of reward outputs of the head (1 for Bradley-Terry, the number of
       attributes for regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from omegaconf import DictConfig

__all__ = ["RewardModelPlugin", "Tokenizer", "PluginInfo", "PROTOCOL_MEMBERS"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine and the plugins need of a tokenizer."""

    #: Size of the embedding table the model must have.
    vocab_size: int
    #: Id appended to every sequence (the reward is read at the last real token).
    eos_id: int
    #: Id used for padding (never attended to, never pooled).
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (for messages and debugging)."""
        ...


@runtime_checkable
class RewardModelPlugin(Protocol):
    """What a reward-model architecture supplies. One object per architecture.

    The object registered under the ``reward_models`` entry-point group must be cheap to
    import: heavy imports (torch, megatron-core) happen inside the methods, and
    :attr:`model_class` may resolve its class lazily.

    The engine (``rm_registry.engine``) drives a plugin like this::

        cfg = merged config (engine defaults <- plugin.default_config() <- YAML <- overrides)
        plugin.validate_config(cfg)
        model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
        datasets = plugin.build_datasets({"train": path, ...}, tokenizer, cfg)
        batch = plugin.collate(samples, pad_id=tokenizer.pad_id)   # tokens [N, S], lengths [N], ...
        rewards = model(batch["tokens"], batch["lengths"])            # [N, K]
        loss, metrics = plugin.loss(rewards, batch, cfg)
        plugin.evaluation_metrics([(rewards, batch), ...], cfg)      # whole validation set
        plugin.score_outputs(rewards, cfg)                            # one dict per scored text
    """

    #: Registry name, equal to the entry-point name (``binary_ranking``, ``regression``).
    name: str
    #: One line shown by ``rm-registry list`` and ``info``.
    description: str

    @property
    def model_class(self) -> type:
        """The ``torch.nn.Module`` subclass of this architecture (may be resolved lazily).

        It must provide ``from_config(cfg, *, vocab_size) -> instance`` and its ``forward``
        must map ``tokens [N, S]`` (int64) and ``lengths [N]`` (int64, number of real tokens
        of each row) to rewards ``[N, K]`` (float). ``rm_registry.engine.RewardModel`` does
        this for megatron-core GPT backbones; plugins normally subclass it.
        """
        ...

    def default_config(self) -> dict[str, Any]:
        """Defaults this plugin adds to the engine's config tree, as a nested dict.

        Normally a ``{"model": {"<name>": {...}}}`` subtree; it may also override engine
        defaults (for example ``trainer.rm.max_steps`` for the sample data). Every key a user
        may set must appear here: unknown keys are refused by the engine.
        """
        ...

    def validate_config(self, cfg: DictConfig) -> None:
        """Check this plugin's part of the merged config.

        Raises:
            rm_registry.ConfigError: naming the offending key and value.
        """
        ...

    def sample_data(self) -> Mapping[str, Path]:
        """Shipped sample data, ``{"train": path, "validation": path}``; may be empty.

        Used by ``rm-registry train NAME`` when no ``--data`` is given.
        """
        ...

    def build_datasets(
        self,
        data_paths: Mapping[str, str | Path | None],
        tokenizer: Tokenizer,
        cfg: DictConfig,
    ) -> dict[str, Sequence[Any]]:
        """Read and tokenize data files.

        Args:
            data_paths: ``{"train": ..., "validation": ..., "test": ...}``; missing or ``None``
                splits are skipped.
            tokenizer: The run's tokenizer.
            cfg: The merged config (``model.encoder_seq_length`` and
                ``model.data.overlong_policy`` decide what happens to over-long samples).

        Returns:
            One dataset per split present in ``data_paths``: a sequence of samples that
            :meth:`collate` understands, with an attribute ``stats`` (a dict with at least
            ``read``, ``kept``, ``truncated`` and ``dropped`` counts).

        Raises:
            rm_registry.DataError: naming the file, the line and the problem, before any
                training work starts.
        """
        ...

    def collate(self, samples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        """Make one batch from samples, padded to the longest sequence.

        Returns:
            At least ``tokens`` ``[N, S]`` int64 and ``lengths`` ``[N]`` int64, plus whatever
            :meth:`loss` needs (labels ``[B, K]``, margins ``[P]``, ...).
        """
        ...

    def loss(
        self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and per-batch metrics.

        Args:
            rewards: Model outputs ``[N, K]`` for ``batch``.
            batch: What :meth:`collate` returned.
            cfg: The merged config.

        Returns:
            ``(loss, metrics)``: ``loss`` a 0-dim tensor with grad; ``metrics`` plain floats
            (the engine logs them to ``metrics.jsonl`` with ``split == "train"``). The loss
            must be finite even when nothing in the batch counts (for example all labels
            masked): then it is ``0`` and still connected to the graph.
        """
        ...

    def evaluation_metrics(
        self,
        outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
        cfg: DictConfig,
    ) -> dict[str, Any]:
        """Metrics over a whole evaluation set.

        Args:
            outputs: ``(rewards [N, K], batch)`` for every batch of the set, in order.

        Returns:
            JSON-serialisable metrics, including ``loss``. Printed by ``evaluate --json`` and
            logged with ``split == "validation"``.
        """
        ...

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """Turn rewards ``[B, K]`` of B scored texts into one JSON object each.

        Each object has a float ``reward`` (the scalar an RLHF loop uses) and may add more
        (``attributes`` for regression).
        """
        ...


#: Members checked by :func:`rm_registry.testing.check_protocol` and by the registry on load.
PROTOCOL_MEMBERS: tuple[str, ...] = (
    "name",
    "description",
    "model_class",
    "default_config",
    "validate_config",
    "sample_data",
    "build_datasets",
    "collate",
    "loss",
    "evaluation_metrics",
    "score_outputs",
)


@dataclass(frozen=True)
class PluginInfo:
    """One row of :func:`rm_registry.list_reward_models`. Never requires importing the plugin.

    Attributes:
        name: The entry-point name, the architecture's registry name.
        distribution: The installed distribution that declares it (``"<in-process>"`` for
            :func:`register_reward_model`).
        version: That distribution's version.
        entry_point: The entry point's value, ``module:attr``.
        status: ``available`` (not yet imported), ``loaded``, ``broken`` (failed to load or
            validate), ``disabled``, ``conflict`` (another distribution registers the same
            name) or ``registered`` (in-process).
        error: For ``broken``, ``disabled`` and ``conflict``: why.
    """

    name: str
    distribution: str
    version: str
    entry_point: str
    status: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (used by ``rm-registry list --json``)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "status": self.status,
            "error": self.error,
        }
