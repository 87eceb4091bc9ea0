"""One dynamic batcher shared by every dialect.

Requests put their encoded texts in a queue and await futures. A single task on the event loop
waits for the first text, then up to ``max_wait_ms`` for more (or until ``max_batch_tokens`` are
queued), takes everything queued, sorts it by length and cuts it into batches whose padded size
(texts x longest) stays under ``max_batch_tokens``. Where to cut is chosen by cost: a forward pass
costs about ``a + b x padded tokens`` seconds, so one more pass is worth it when it saves more than
``a / b`` tokens of padding. The batcher measures ``a`` and ``b`` on its own passes
(:class:`PassCost`) and cuts the sorted queue where the total is least (:func:`plan_batches`),
runs the batch holding the oldest text, and plans the rest again with what arrived meanwhile: on
a CPU, where a pass costs little beyond its tokens, that means tight batches of texts of nearly
the same length, as when a sorted file is scored offline; on a GPU, where each pass has a large
fixed cost, few large batches. ``max_padding_tokens`` optionally caps the padding of a batch.
Each batch runs on one worker thread, so the event loop keeps accepting requests while the model
computes, and texts that arrive meanwhile form the next batches. A batch that raises fails only its
own texts (the requests get HTTP 500).

With ``batching=False`` every request is one forward pass of its own texts (what OpenRLHF's
server does), for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._metrics import ServerMetrics

__all__ = ["BatchFailed", "DynamicBatcher", "PassCost", "plan_batches"]

log = logging.getLogger("rm_registry.serve")


class BatchFailed(RuntimeError):
    """The forward pass of the batch holding this text raised (the message says why)."""


#: Overhead of a pass (in tokens) that makes :func:`plan_batches` use as few passes as it can.
_FEWEST_PASSES = 1e12


class PassCost:
    """The cost of a forward pass, ``a + b x padded_tokens`` seconds, fitted by least squares to the
    passes observed (the latest ``window``, plus the warm-up passes, which are kept).

    :attr:`overhead_tokens` is ``a / b``: how many padded tokens cost as much as one more pass.
    Until the passes seen differ enough in size to fit both terms, it is ``default_overhead_tokens``;
    with ``fixed_overhead_tokens`` it is that, always.
    """

    def __init__(self, *, window: int = 256, default_overhead_tokens: float = 256.0,
                 fixed_overhead_tokens: float | None = None) -> None:
        if fixed_overhead_tokens is not None and fixed_overhead_tokens < 0:
            raise ValueError(f"fixed_overhead_tokens={fixed_overhead_tokens}: expected >= 0")
        self.default = float(default_overhead_tokens)
        self.fixed = fixed_overhead_tokens
        self._anchors: list[tuple[float, float]] = []
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)
        self._fitted: float | None = None  # the fit of the passes seen so far, until the next one

    def observe(self, padded_tokens: int, seconds: float, *, keep: bool = False) -> None:
        """Record one pass (``keep``: never drop it from the fit, for warm-up passes)."""
        (self._anchors if keep else self._recent).append((float(padded_tokens), float(seconds)))
        self._fitted = None

    @property
    def overhead_tokens(self) -> float:
        """Refitted once per pass observed, however often the queue is cut in between."""
        if self.fixed is not None:
            return float(self.fixed)
        if self._fitted is None:
            self._fitted = self._fit()
        return self._fitted

    def _fit(self) -> float:
        points = [*self._anchors, *self._recent]
        if len(points) < 2:
            return self.default
        n = len(points)
        mean_x = sum(x for x, _ in points) / n
        mean_y = sum(y for _, y in points) / n
        sxx = sum((x - mean_x) ** 2 for x, _ in points)
        if sxx <= (0.25 * mean_x) ** 2 * n:  # sizes too alike to tell the fixed cost from the per-token one
            return self.default
        b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
        a = mean_y - b * mean_x
        if not b > 0:
            return self.default
        return max(0.0, a / b)


def plan_batches(lengths: Sequence[int], *, max_tokens: int, overhead_tokens: float,
                 max_padding: int | None = None) -> list[int]:
    """Cut texts sorted by length into consecutive batches at the least total cost.

    Args:
        lengths: Token counts, ascending.
        max_tokens: Budget of padded tokens (texts x longest) per batch; a single longer text is a
            batch of its own.
        overhead_tokens: Cost of one more forward pass, in padded tokens.
        max_padding: Optional cap on the padding tokens of a batch.

    Returns:
        The end index of each batch (exclusive), ascending; the last is ``len(lengths)``. The cost
        ``sum(overhead_tokens + texts x longest)`` is the least of every such cut (dynamic
        programming over the sorted lengths, ``O(n x texts per batch)``).
    """
    n = len(lengths)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    best = [0.0] + [math.inf] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[j - 1]
        fits = max(1, max_tokens // max(1, longest))  # texts of this length a batch can hold
        for i in range(j - 1, max(0, j - fits) - 1, -1):
            if max_padding is not None and i < j - 1 and (j - i) * longest - (prefix[j] - prefix[i]) > max_padding:
                break  # padding only grows as the batch reaches further back
            cost = best[i] + overhead_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], start[j] = cost, i
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = start[j]
    return ends[::-1]


@dataclass
class _Item:
    ids: list[int]
    future: asyncio.Future[Any]
    request: int
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Queue texts from concurrent requests and run them in length-sorted batches.

    Args:
        forward: Scores one batch ``[B][S_i]`` of token ids, returning ``B`` results in order. Runs
            on the worker thread.
        max_batch_tokens: Budget of padded tokens (texts x longest) per forward pass; a single text
            longer than the budget runs alone.
        max_wait_ms: How long the first queued text waits for company when the model is idle.
        max_padding_tokens: Optional cap on the padding tokens of a batch (``None``: only the cost
            decides).
        batching: ``False``: one forward pass per request.
        pass_cost: The cost model of a forward pass (default: fitted to the passes this batcher runs).
        keepalive: Called on the worker thread after ``keepalive_s`` idle seconds (tensor-parallel
            followers must hear from rank 0 before their process group times out).
    """

    def __init__(self, forward: Callable[[list[list[int]]], Sequence[Any]], *, max_batch_tokens: int,
                 max_wait_ms: float, max_padding_tokens: int | None = None, batching: bool = True,
                 metrics: ServerMetrics | None = None, pass_cost: PassCost | None = None,
                 keepalive: Callable[[], None] | None = None, keepalive_s: float = 60.0) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens={max_batch_tokens}: expected a positive number")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms}: expected >= 0")
        if max_padding_tokens is not None and max_padding_tokens < 0:
            raise ValueError(f"max_padding_tokens={max_padding_tokens}: expected >= 0")
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_padding_tokens = max_padding_tokens
        self.batching = batching
        self.pass_cost = pass_cost or PassCost()
        self.metrics = metrics
        self.keepalive = keepalive
        self.keepalive_s = keepalive_s
        self._pending: deque[_Item] = deque()
        self._pending_tokens = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._requests = 0
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-registry-model")

    def run_on_worker(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` on the model's worker thread (where every forward pass runs)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rm-registry-batcher")

    async def submit(self, batch: list[list[int]]) -> list[Any]:
        """Score the texts of one request; results in order. Raises :class:`BatchFailed`."""
        if self._closing:
            raise BatchFailed("the server is shutting down")
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        self._requests += 1
        items = [_Item(ids, loop.create_future(), self._requests) for ids in batch]
        self._pending.extend(items)
        self._pending_tokens += sum(len(ids) for ids in batch)
        self._set_depth()
        self._wakeup.set()
        results = await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        for result in results:  # every future is awaited, so no failure goes unretrieved
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def close(self) -> None:
        """Finish every queued text, then stop the loop and the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self.keepalive_s)
                except asyncio.TimeoutError:
                    if self.keepalive is not None:
                        await self.run_on_worker(self.keepalive)
                continue
            await self._gather()
            for batch in self._take():  # batching: one pass, then the queue is planned again
                await self._run(batch)

    async def _gather(self) -> None:
        """Wait until the oldest text has waited ``max_wait``, or the budget is queued, or shutdown."""
        if not self.batching:
            return
        deadline = self._pending[0].enqueued + self.max_wait
        while not self._closing and self._pending_tokens < self.max_batch_tokens:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[list[_Item]]:
        """The next pass: the whole queue, length-sorted, is cut where the cost is least and the batch
        holding the oldest text is taken; the rest stays queued and is planned again after the pass,
        with the texts that arrived meanwhile (so that they fill batches of their length instead of
        waiting for every pass planned before them). Without batching: the oldest request alone, in as
        few passes as the budget allows."""
        if self.batching:
            items = sorted(self._pending, key=lambda item: len(item.ids))
            oldest = self._pending[0]
            self._pending.clear()
        else:
            first = self._pending[0].request
            items = []
            while self._pending and self._pending[0].request == first:
                items.append(self._pending.popleft())
            items.sort(key=lambda item: len(item.ids))
        self._pending_tokens -= sum(len(item.ids) for item in items)
        self._set_depth()
        if self.batching:
            overhead, cap = self.pass_cost.overhead_tokens, self.max_padding_tokens
            if self.metrics is not None:
                self.metrics.pass_overhead_tokens.set(overhead)
        else:
            overhead, cap = _FEWEST_PASSES, None
        ends = plan_batches([len(item.ids) for item in items], max_tokens=self.max_batch_tokens,
                            overhead_tokens=overhead, max_padding=cap)
        batches = [items[i:j] for i, j in zip([0, *ends[:-1]], ends)]
        if not self.batching:
            return batches
        chosen = next(b for b in batches if any(item is oldest for item in b))
        rest = sorted((item for b in batches if b is not chosen for item in b), key=lambda item: item.enqueued)
        self._pending.extend(rest)  # in arrival order: the oldest sets the next deadline (already past)
        self._pending_tokens += sum(len(item.ids) for item in rest)
        self._set_depth()
        return [chosen]

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests already cancelled
        if not live:
            return
        started = time.perf_counter()
        if self.metrics is not None:
            for item in live:
                self.metrics.queue_seconds.observe(started - item.enqueued)
        ids = [item.ids for item in live]
        try:
            results = await self.run_on_worker(lambda: self.forward(ids))
            if len(results) != len(live):
                raise RuntimeError(f"forward returned {len(results)} results for {len(live)} texts")
        except Exception as exc:
            log.exception("forward pass of %d texts failed", len(live))
            self._observe(ids, started, ok=False)
            failure = BatchFailed(f"the forward pass of this request's batch failed: {type(exc).__name__}: {exc}")
            for item in live:
                if not item.future.done():
                    item.future.set_exception(failure)
            return
        self._observe(ids, started, ok=True)
        for item, result in zip(live, results):
            if not item.future.done():
                item.future.set_result(result)

    def _observe(self, ids: list[list[int]], started: float, ok: bool) -> None:
        """Record a finished pass: in the metrics, and (when it succeeded) in the cost model."""
        seconds = time.perf_counter() - started
        lengths = [len(x) for x in ids]
        padded = len(ids) * max(lengths)
        if ok:
            self.pass_cost.observe(padded, seconds)
        if self.metrics is not None:
            self.metrics.observe_batch(len(ids), sum(lengths), padded, seconds, ok)
