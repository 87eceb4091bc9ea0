"""The model side of the server: encode texts as ``rm-registry score`` does, run batches, and keep
tensor-parallel ranks in step.

Under ``torchrun`` every rank loads the model; global rank 0 serves HTTP and, before each forward
pass, broadcasts the batch's token ids so that the other ranks (:meth:`ModelRunner.follow`) run the
same pass. All forward passes of rank 0 happen on one worker thread (the batcher's), so the
collectives of consecutive batches never interleave.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..engine import _contract
from ._http import RequestError

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.api import LoadedRewardModel

__all__ = ["ModelRunner", "StepTokens", "TextScore"]

#: Control messages broadcast by rank 0 instead of a batch.
_KEEPALIVE = "keepalive"
_STOP = "stop"


@dataclass(frozen=True)
class TextScore:
    """The result for one text.

    Attributes:
        values: The head's raw outputs, ``K`` floats (``K`` = 1 for a scalar reward model).
        reward: The scalar ``reward`` of ``rm-registry score`` (the plugin's ``score_outputs``).
        output: The whole ``score_outputs`` row (``reward`` plus what the plugin adds).
        tokens: Length of the scored token sequence (EOS included).
    """

    values: tuple[float, ...]
    reward: float
    output: dict[str, Any]
    tokens: int
    #: A token-level model (a process reward model): the head's K raw outputs at each step, in order
    #: (``values`` is then the last step's). ``None`` for a model of one reward per text.
    steps: tuple[tuple[float, ...], ...] | None = None


class StepTokens(list):  # type: ignore[type-arg]
    """The token ids of one text of a token-level model, with the indices to read the head at
    (``positions``, from the plugin's ``score_sequences``). A list for the batcher."""

    positions: list[int]

    def __init__(self, ids: Sequence[int], positions: Sequence[int]) -> None:
        super().__init__(ids)
        self.positions = list(positions)


class ModelRunner:
    """A loaded reward model behind the server: ``encode`` on the event loop's side, ``forward`` on
    the worker thread, ``follow`` on the other ranks.
    """

    def __init__(self, model: LoadedRewardModel) -> None:
        self.model = model
        self.info = model.info
        self.max_length = int(model.cfg.model.encoder_seq_length)
        self.overlong_error = model.cfg.model.data.overlong_policy == "error"
        eos = self.model.encode("")[0]
        probe = self.forward([eos])[0]  # warm-up pass; tells K and the labels
        self.num_outputs = len(probe.values)
        self.warmup_passes = self._time_passes(eos[-1])
        # the names a Hugging Face export writes as id2label (vLLM serving that folder answers them)
        self.labels = _contract.output_names(model.plugin, model.cfg, self.num_outputs)

    def _time_passes(self, token: int, rounds: int = 3) -> list[tuple[int, float]]:
        """Time forward passes of two sizes (one 1-token text; 8 texts of up to 128 tokens), the
        fastest of ``rounds`` each: ``[(padded tokens, seconds)]``, the first points of the batcher's
        cost model. Every rank runs them (under torchrun they are broadcast like any batch)."""
        width = max(1, min(128, self.max_length))
        points = []
        for batch in ([[token]], [[token] * width] * 8):
            fastest = math.inf
            for _ in range(rounds):
                started = time.perf_counter()
                self.forward(batch)
                fastest = min(fastest, time.perf_counter() - started)
            points.append((len(batch) * len(batch[0]), fastest))
        return points

    @property
    def distributed(self) -> bool:
        return self.info.world_size > 1

    @property
    def token_level(self) -> bool:
        """Whether the model reads its head at positions the plugin chooses (``score_sequences``)."""
        return _contract.is_token_level(self.model.plugin)

    def encode(self, texts: Sequence[str], field: str, prompts: Sequence[Any] | None = None) -> list[list[int]]:
        """Token ids of each text, exactly as ``rm-registry score`` makes them (EOS appended, cut to
        ``encoder_seq_length`` unless ``overlong_policy=error``). A token-level plugin tokenizes
        ``{"text": text, "prompt": prompt}`` itself (:class:`StepTokens`).

        Raises:
            RequestError: a text is too long under ``model.data.overlong_policy=error``, or one the
                plugin refuses (naming ``field[i]``).
        """
        if self.token_level:
            return self._encode_steps(texts, field, prompts)
        out = []
        for i, text in enumerate(texts):
            ids, cut = self.model.encode(text)
            if cut and self.overlong_error:
                raise RequestError(
                    400, f"{field}[{i}]",
                    f"text is longer than model.encoder_seq_length={self.max_length} tokens and the server runs "
                    "with model.data.overlong_policy=error; shorten it (or serve with "
                    "model.data.overlong_policy=truncate)")
            out.append(ids)
        return out

    def _encode_steps(self, texts: Sequence[str], field: str, prompts: Sequence[Any] | None) -> list[list[int]]:
        from .._errors import DataError

        out: list[list[int]] = []
        for i, text in enumerate(texts):
            record = {"text": text}
            if prompts is not None and i < len(prompts) and isinstance(prompts[i], str):
                record["prompt"] = prompts[i]
            try:
                sequences = _contract.score_sequences(self.model.plugin, record, self.model.tokenizer, self.model.cfg,
                                                      path="request", line=i + 1)
            except DataError as exc:
                raise RequestError(400, f"{field}[{i}]", exc.problem) from None
            assert sequences is not None
            if len(sequences) != 1:
                raise RequestError(400, f"{field}[{i}]", f"the architecture made {len(sequences)} sequences of one "
                                                         "text; the server scores one sequence per text")
            out.append(StepTokens(*sequences[0]))
        return out

    def forward(self, batch: list[list[int]]) -> list[TextScore]:
        """Score one batch of token-id lists ``[B][S_i]``; results in input order.

        Uses :meth:`LoadedRewardModel.rewards` (the same padding and pooling as scoring offline) as a
        single pass, split across data-parallel ranks when there are several.
        """
        if self.distributed:
            batch = self._broadcast(batch)
        return self._run(batch)

    def _run(self, batch: list[list[int]]) -> list[TextScore]:
        per_rank = math.ceil(len(batch) / self.info.dp)
        if self.token_level:
            return self._run_steps(batch, per_rank)
        raw = self.model.rewards(batch, batch_size=per_rank)  # [B, K]
        rows = self.model.plugin.score_outputs(raw, self.model.cfg)
        return [TextScore(tuple(float(v) for v in raw[i].tolist()), float(rows[i]["reward"]), rows[i], len(batch[i]))
                for i in range(len(batch))]

    def _run_steps(self, batch: list[list[int]], per_rank: int) -> list[TextScore]:
        """A token-level model: the head at each text's positions (the last token for plain id lists,
        as the warm-up passes send), one ``score_records`` object per text."""
        positions = [list(getattr(ids, "positions", [len(ids) - 1])) for ids in batch]
        raw = self.model.rewards(batch, batch_size=per_rank, positions=positions)  # [P, K]
        sizes = [len(p) for p in positions]
        rows = _contract.score_records(self.model.plugin, raw, sizes, self.model.cfg)
        out, start = [], 0
        for ids, size, row in zip(batch, sizes, rows):
            steps = tuple(tuple(float(v) for v in raw[j].tolist()) for j in range(start, start + size))
            start += size
            out.append(TextScore(steps[-1], float(row["reward"]), row, len(ids), steps))
        return out

    def keepalive(self) -> None:
        """Tell the other ranks that rank 0 is alive (their wait must not reach the process group's
        timeout while the server is idle)."""
        if self.distributed:
            self._broadcast(_KEEPALIVE)

    def stop(self) -> None:
        """Release the other ranks: their :meth:`follow` returns."""
        if self.distributed:
            self._broadcast(_STOP)

    def _broadcast(self, message: Any) -> Any:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def follow(self) -> None:
        """On ranks other than 0: run every batch rank 0 broadcasts, until it stops."""
        while True:
            message = self._broadcast(None)
            if message == _STOP:
                return
            if message == _KEEPALIVE:
                continue
            try:
                self._run(message)
            except Exception as exc:  # rank 0 answers the batch with 500; stay in step with it
                print(f"rm-registry serve: rank {self.info.rank}: batch failed: {exc}", file=sys.stderr, flush=True)
