"""The contract between the engine and a reward-model architecture.

Importing this module never imports torch: tensor types appear only in annotations
(``from __future__ import annotations``), so the registry can check plugins cheaply.

Shapes used below:
    B: number of samples (records) in a batch, as :meth:`RewardModelPlugin.build_datasets` made
       them: a pair, a labelled text, a prompt with K ranked responses...
    N: number of sequences in the batch, in any grouping the plugin chooses: one per sample
       (regression), ``2 * B`` with the B chosen sequences first and the B rejected ones after
       them (pairs, as NeMo-Aligner concatenates), or ``sum(list_sizes)`` for groups of varying
       size (a listwise plugin). The engine never assumes a grouping: it runs the model on
       ``tokens [N, S]`` and hands the rewards back with the batch.
    S: the longest sequence in the batch (batches are padded to it, not to ``seq_length``).
    K: the number of reward outputs of the head (1 for Bradley-Terry, the number of
       attributes for regression).

Beyond ``tokens`` and ``lengths`` a batch may carry any tensors of any first dimension
(``labels [B, K]``, ``margins [B]``, ``list_sizes [B]``, ...) and plain Python values. The engine
never reshapes or splits them; the one rule for where they live is in
:class:`RewardModelPlugin` (``collate``).

Token-level architectures (a process reward model: one reward per reasoning step) add one key the
engine reads: ``reward_positions``, ``[M, 2]`` int64 ``(row, token index)`` points, each index
inside its row's real tokens. The engine then runs ``model(tokens, lengths, positions=...)`` and
hands :meth:`RewardModelPlugin.loss` and :meth:`RewardModelPlugin.evaluation_metrics` rewards
``[M, K]``, one row per point, in the order given (``rm_registry.engine.RewardModel`` reads its
head there). Such a plugin also defines :meth:`OptionalMembers.score_sequences`, so that ``score``
knows where to read.

Optional members (:class:`OptionalMembers`, listed in :data:`OPTIONAL_MEMBERS`) extend the
contract; a plugin that defines none of them behaves exactly as before they existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from omegaconf import DictConfig

__all__ = ["OPTIONAL_MEMBERS", "OptionalMembers", "PROTOCOL_MEMBERS", "PluginInfo", "RewardModelPlugin", "Tokenizer"]


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
        """Token ids of ``text``. The byte tokenizer adds no special tokens; a Hugging Face
        folder's tokenizer (``hf_rules``) adds the ones its ``tokenizer.json`` rules add, as
        ``tokenizer(text)`` does in transformers. Either way the engine appends EOS itself
        (``rm_registry.engine.data.encode_text``), unless the ids already end with it."""
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
        plugin.validate_config(cfg)          # build_config() calls it (and resolve_config, if any)
        model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
        datasets = plugin.build_datasets({"train": path, ...}, tokenizer, cfg)
        batch = plugin.collate(samples, pad_id=tokenizer.pad_id)   # tokens [N, S], lengths [N], extras
        batch = every tensor of batch moved to the model's device
        rewards = model(batch["tokens"], batch["lengths"])            # [N, K] ([N, S, K] per token)
        loss, metrics = plugin.loss(rewards, batch, cfg)             # training
        plugin.evaluation_metrics([(rewards, batch), ...], cfg)      # whole validation set, on CPU
        plugin.score_outputs(rewards, cfg)                            # one dict per scored text, on CPU

    Metrics of ``loss`` are averaged over micro-batches and data-parallel ranks **by name**,
    weighted by :meth:`OptionalMembers.metric_weight` (by default the micro-batch's number of
    samples): every batch must
    return the same metric names, or training stops naming the names that differ.
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
        of each row) to rewards ``[N, K]`` (float), or ``[N, S, K]`` for a model that scores
        every token (``model.output_sequence``). ``rm_registry.engine.RewardModel`` does
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
            :meth:`collate` understands, with an attribute ``stats`` holding at least ``read``,
            ``kept``, ``truncated`` and ``dropped`` counts: a
            :class:`rm_registry.engine.data.DatasetStats` (what
            :class:`~rm_registry.engine.data.ListDataset` carries), or a plain dict with
            those keys. Counts are in samples (a dropped pair or group counts once).

        Raises:
            rm_registry.DataError: naming the file, the line and the problem, before any
                training work starts.
        """
        ...

    def collate(self, samples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        """Make one batch from samples, padded to the longest sequence.

        ``samples`` may be empty (a batch where nothing counts); the batch then has
        ``tokens [0, 0]`` and ``lengths [0]``, and :meth:`loss` must still give a finite loss.

        Returns:
            At least ``tokens`` ``[N, S]`` int64 and ``lengths`` ``[N]`` int64 (N sequences in
            the plugin's own grouping), plus whatever :meth:`loss` needs: tensors of any first
            dimension (``labels [B, K]``, ``margins [B]``, ``list_sizes [B]``) and plain values.
            The engine moves **every tensor** of the batch to the model's device before calling
            the model and :meth:`loss` (training and evaluation alike), and hands
            :meth:`evaluation_metrics` CPU tensors.
        """
        ...

    def loss(
        self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and per-batch metrics.

        Args:
            rewards: Model outputs ``[N, K]`` for ``batch`` (``[N, S, K]`` for a per-token model).
            batch: What :meth:`collate` returned.
            cfg: The merged config.

        Returns:
            ``(loss, metrics)``: ``loss`` a 0-dim tensor with grad; ``metrics`` plain floats
            (the engine logs them to ``metrics.jsonl`` with ``split == "train"``), **the same
            names for every batch**, the empty one included. The loss must be finite even when
            nothing in the batch counts (an empty batch, all labels masked): then it is ``0``
            and still connected to the graph.
        """
        ...

    def evaluation_metrics(
        self,
        outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
        cfg: DictConfig,
    ) -> dict[str, Any]:
        """Metrics over a whole evaluation set.

        Args:
            outputs: ``(rewards [N, K] or [N, S, K], batch)`` for every batch of the set, in order, on the
                CPU. ``batch`` holds the keys of :attr:`OptionalMembers.evaluation_batch_keys`
                (by default every key but ``tokens``, which is large and rarely needed). Under
                data parallelism only these are gathered from the other ranks. May be empty
                (an empty set).

        Returns:
            JSON-serialisable metrics, including ``loss`` (``None`` for an empty set), with
            every batch weighted by what it holds, not by batch. Printed by
            ``evaluate --json`` and logged with ``split == "validation"``.
        """
        ...

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """Turn rewards ``[B, K]`` of B scored texts into one JSON object each (CPU tensors).

        Each object has a float ``reward`` (the scalar an RLHF loop uses) and may add more
        (``attributes`` for regression). Used for every text when the plugin has no
        :meth:`OptionalMembers.score_records`.
        """
        ...


class OptionalMembers(Protocol):
    """Members a plugin *may* define; the engine uses the documented default when one is absent.

    ``rm_registry.testing.check_plugin`` reports which are present and checks those that are.
    """

    #: Batch keys :meth:`RewardModelPlugin.evaluation_metrics` reads (``tokens`` and
    #: ``lengths`` included only if listed). Default: every key but ``tokens``. Only these keys
    #: are kept on the CPU for the whole set and gathered across data-parallel ranks.
    evaluation_batch_keys: tuple[str, ...]

    def metric_weight(self, batch: Mapping[str, Any], cfg: DictConfig) -> float:
        """How much this batch's :meth:`~RewardModelPlugin.loss` metrics count in the logged mean.

        Training metrics are averaged by name over micro-batches and data-parallel ranks as
        ``sum(weight * value) / sum(weight)``; a batch of weight 0 does not count. Return the
        number of things the metrics average over (pairs, groups, labelled entries).
        Default: the micro-batch's number of samples (micro-batches cut by
        ``model.max_tokens_per_micro_batch`` differ in size; metrics are then means over samples,
        as the loss is).
        """
        ...

    def score_texts(self, record: Mapping[str, Any], *, path: str, line: int) -> list[str]:
        """The texts to score for one line of a ``score`` input file (a group of one or more).

        Default: ``[record["text"]]``, or the prompt joined with ``record["response"]``
        (:func:`rm_registry.engine.data.join_prompt_response`). A listwise plugin may read
        ``{"prompt": ..., "responses": [...]}`` and return one text per response.

        Raises:
            rm_registry.DataError: naming ``path``, ``line`` and the problem.
        """
        ...

    def score_records(
        self, rewards: torch.Tensor, group_sizes: Sequence[int], cfg: DictConfig
    ) -> list[dict[str, Any]]:
        """One JSON object per scored record from rewards ``[N, K]`` of all their texts (CPU).

        ``group_sizes[i]`` texts of record ``i`` (what :meth:`score_texts` returned), in order:
        rows ``sum(group_sizes[:i]) : sum(group_sizes[:i + 1])``. Default: records of one text
        get :meth:`~RewardModelPlugin.score_outputs`' object; records of several get
        ``{"responses": [one score_outputs object per text]}``.
        """
        ...

    def score_sequences(self, record: Mapping[str, Any], tokenizer: Tokenizer, cfg: DictConfig, *,
                        path: str, line: int) -> list[tuple[list[int], list[int]]]:
        """For a token-level plugin (batches with ``reward_positions``): the sequences of one ``score``
        record, tokenized by the plugin, each with the token indices to read the head at.

        ``score`` runs the model at those points and hands :meth:`score_records` the rows of all
        positions of the record, ``group_sizes[i]`` = the record's number of positions. Default:
        absent (the record's texts are scored, one pooled reward each).

        Raises:
            rm_registry.DataError: naming ``path``, ``line`` and the problem.
        """
        ...

    def config_types(self) -> Mapping[str, Any]:
        """Types of config keys whose default is ``null`` (the engine cannot infer them).

        ``{"model.my_rm.top_k": int, "model.my_rm.names": list}``: a full key to a type or a
        tuple of types (``float`` accepts whole numbers too; ``null`` is always accepted). A value
        of another type is refused naming the key, as for keys with a non-null default.
        """
        ...

    def resolve_config(self, cfg: DictConfig) -> None:
        """Fill in, in place, values that defaults leave open (after :meth:`validate_config`).

        For example the attribute names a ``null`` default stands for: the config saved with
        each checkpoint then holds the resolved value, so a later change of the plugin's
        defaults cannot change what an old checkpoint means. Default: nothing.
        """
        ...

    def output_names(self, cfg: DictConfig) -> list[str]:
        """Names of the K head outputs, in order (the ``id2label`` of a Hugging Face export).

        Default: ``reward`` for K = 1, else ``LABEL_0`` ... (see docs/pretrained.md).
        """
        ...

    def text_samples(self, path: str, cfg: DictConfig) -> Iterable[Any]:
        """The samples of one data file before tokenizing, in file order, as
        :class:`rm_registry.engine.data.TextSample` objects: each sample's texts (a pair: chosen
        then rejected), its line (and each text's), and its numeric ``fields`` (a float, a
        fixed-length tuple of floats, or ``None``; the same names in every sample).

        With :meth:`sample_from_tokens`, it lets the engine tokenize the file in batches (in
        parallel), apply ``model.data.overlong_policy`` to each sample as a whole, and keep the
        result in the token cache: flat memory-mapped arrays shared by every rank and reused by later
        runs, ``evaluate`` and ``--resume`` (``docs/data.md``). The engine then calls it instead of
        :meth:`~RewardModelPlugin.build_datasets` for training and evaluation, and assumes the rows of
        :meth:`~RewardModelPlugin.collate` for one sample are its texts, in this order. Read records
        with :func:`rm_registry.engine.data.read_jsonl` so that every file form and
        ``model.data.columns`` work. Default: absent (``build_datasets`` is used as before).

        Raises:
            rm_registry.DataError: naming ``path``, the line and the problem.
        """
        ...

    def sample_from_tokens(self, sequences: list[list[int]], fields: Mapping[str, Any], lines: list[int]) -> Any:
        """The plugin's sample (what :meth:`~RewardModelPlugin.collate` takes) from one stored
        :class:`~rm_registry.engine.data.TextSample`: the token ids of its texts (EOS last, fitted
        to ``model.encoder_seq_length``), its ``fields`` as given (sequences come back as tuples) and
        each text's line. Required with :meth:`text_samples`."""
        ...

    def config_for_output_names(self, names: Sequence[str]) -> Mapping[str, Any]:
        """The config layer for a Hugging Face reward model whose outputs have these names
        (scoring a foreign ``*ForSequenceClassification`` folder with K > 1). Default: none."""
        ...

    def scalar_rewards(self, rewards: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        """The one number per text that benchmarks compare (``evaluate --benchmark``), from the
        head outputs ``rewards [N, K]`` (CPU, float32): a tensor ``[N]``.

        An architecture with several outputs says here which output or combination ranks
        responses. Default: the ``reward`` of :meth:`~RewardModelPlugin.score_outputs`, the
        scalar ``score`` writes and an RLHF loop uses.
        """
        ...


#: Optional members, in :class:`OptionalMembers`; checked when present.
OPTIONAL_MEMBERS: tuple[str, ...] = (
    "evaluation_batch_keys",
    "metric_weight",
    "score_texts",
    "score_records",
    "config_types",
    "resolve_config",
    "output_names",
    "config_for_output_names",
    "text_samples",
    "sample_from_tokens",
    "scalar_rewards",
    "score_sequences",
)


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
