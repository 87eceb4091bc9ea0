"""One dynamic batcher shared by every dialect.

Requests put their encoded texts in a queue and await futures. A single task on the event loop
waits for the first text, then up to ``max_wait_ms`` for more (or until ``max_batch_tokens`` are
queued), takes everything queued, sorts it by length and cuts it into batches whose padded size
(texts x longest) stays under ``max_batch_tokens`` and whose padding (the tokens added to make the
texts of a batch as long as its longest) stays under ``max_padding_tokens``: texts of similar
length go together, so little compute is spent on padding, as when scoring a sorted file offline.
Each batch runs on one worker thread, so the event loop keeps accepting requests while the model
computes, and texts that arrive meanwhile form the next batches. A batch that raises fails only its
own texts (the requests get HTTP 500).

With ``batching=False`` every request is one forward pass of its own texts (what OpenRLHF's
server does), for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._metrics import ServerMetrics

__all__ = ["BatchFailed", "DynamicBatcher"]

log = logging.getLogger("rm_registry.serve")


class BatchFailed(RuntimeError):
    """The forward pass of the batch holding this text raised (the message says why)."""


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
        max_padding_tokens: Padding tokens a batch may carry; a text whose length would add more
            starts the next batch. Small values mean more, tighter passes.
        batching: ``False``: one forward pass per request.
        keepalive: Called on the worker thread after ``keepalive_s`` idle seconds (tensor-parallel
            followers must hear from rank 0 before their process group times out).
    """

    def __init__(self, forward: Callable[[list[list[int]]], Sequence[Any]], *, max_batch_tokens: int,
                 max_wait_ms: float, max_padding_tokens: int = 1024, batching: bool = True,
                 metrics: ServerMetrics | None = None,
                 keepalive: Callable[[], None] | None = None, keepalive_s: float = 60.0) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens={max_batch_tokens}: expected a positive number")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms}: expected >= 0")
        if max_padding_tokens < 0:
            raise ValueError(f"max_padding_tokens={max_padding_tokens}: expected >= 0")
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_padding_tokens = max_padding_tokens
        self.batching = batching
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
            for batch in self._take():
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
        """Cut the queue into batches: all of it, length-sorted, under the token budget (or the
        oldest request alone, without batching)."""
        if self.batching:
            items = sorted(self._pending, key=lambda item: len(item.ids))
            self._pending.clear()
        else:
            first = self._pending[0].request
            items = []
            while self._pending and self._pending[0].request == first:
                items.append(self._pending.popleft())
        self._pending_tokens -= sum(len(item.ids) for item in items)
        self._set_depth()
        if not self.batching:
            items.sort(key=lambda item: len(item.ids))
        batches: list[list[_Item]] = []
        current: list[_Item] = []
        tokens = 0  # real tokens in current
        for item in items:
            width = len(item.ids)  # sorted by length: the padded width of current + item
            padding = len(current) * width - tokens
            too_much_padding = self.batching and padding > self.max_padding_tokens
            if current and ((len(current) + 1) * width > self.max_batch_tokens or too_much_padding):
                batches.append(current)
                current, tokens = [], 0
            current.append(item)
            tokens += width
        if current:
            batches.append(current)
        return batches

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
        if self.metrics is not None:
            lengths = [len(x) for x in ids]
            self.metrics.observe_batch(len(ids), sum(lengths), len(ids) * max(lengths),
                                       time.perf_counter() - started, ok)
