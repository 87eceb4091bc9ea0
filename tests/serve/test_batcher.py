"""The dynamic batcher on its own (no model, no HTTP): length-sorted batches under the token budget,
cut where the cost is least, batching across requests, a failing batch that fails only its own
requests, batching off."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rm_registry.serve._batcher import BatchFailed, DynamicBatcher, PassCost, plan_batches


class Recorder:
    """A forward pass that records its batches and scores a sequence as the sum of its ids."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[list[int]]] = []
        self.fail_on = fail_on

    def __call__(self, batch: list[list[int]]) -> list[int]:
        self.batches.append(batch)
        if self.fail_on is not None and any(self.fail_on in ids for ids in batch):
            raise RuntimeError("boom")
        return [sum(ids) for ids in batch]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _request(n: int, length: int, tag: int) -> list[list[int]]:
    return [[tag] * length for _ in range(n)]


def test_concurrent_requests_share_length_sorted_batches_under_the_budget() -> None:
    forward = Recorder()

    async def main() -> list[list[int]]:
        b = DynamicBatcher(forward, max_batch_tokens=64, max_wait_ms=50)
        b.start()
        requests = [_request(3, length, tag) for tag, length in enumerate([5, 2, 9, 1, 7, 3], start=1)]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()
        return [list(r) for r in results]

    results = _run(main())
    assert results == [[1 * 5] * 3, [2 * 2] * 3, [3 * 9] * 3, [4 * 1] * 3, [5 * 7] * 3, [6 * 3] * 3]  # each its own
    assert len(forward.batches) < 6  # batched across requests
    assert sum(len(b) for b in forward.batches) == 18
    for batch in forward.batches:
        lengths = [len(ids) for ids in batch]
        assert lengths == sorted(lengths)
        assert len(batch) * max(lengths) <= 64 or len(batch) == 1
    spans = sorted((min(len(i) for i in b), max(len(i) for i in b)) for b in forward.batches)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # pieces of one sorted queue, not interleaved
    assert {ids[0] for ids in forward.batches[0]} >= {1}  # the batch of the oldest request runs first


def test_texts_that_arrive_during_a_pass_join_the_next_plan() -> None:
    """After each pass the queue is planned again: a text that came during the pass shares the next
    batch with queued texts of its length, and the oldest text's batch always goes first."""
    gate = threading.Event()
    forward = Recorder()

    def slow(batch: list[list[int]]) -> list[int]:
        if not forward.batches:
            gate.wait(5)  # the first pass runs until the late request is queued
        return forward(batch)

    async def main() -> None:
        b = DynamicBatcher(slow, max_batch_tokens=40, max_wait_ms=20, max_padding_tokens=0)
        b.start()
        first = asyncio.ensure_future(b.submit(_request(2, 10, 1)))  # the oldest: long texts
        early = asyncio.ensure_future(b.submit(_request(2, 3, 2)))
        await asyncio.sleep(0.1)  # both planned: [3, 3] and [10, 10]; the long batch (oldest) runs
        late = asyncio.ensure_future(b.submit(_request(1, 3, 3)))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, early, late)
        await b.close()

    _run(main())
    assert [[ids[0] for ids in batch] for batch in forward.batches] == [[1, 1], [2, 2, 3]]


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_goes_on() -> None:
    forward = Recorder(fail_on=-1)

    async def main() -> tuple[list[Any], list[int]]:
        b = DynamicBatcher(forward, max_batch_tokens=4, max_wait_ms=20)  # budget 4: one length-4 text per batch
        b.start()
        first = await asyncio.gather(b.submit([[-1] * 4]), b.submit([[2] * 4]), return_exceptions=True)
        after = await b.submit([[3] * 4])
        await b.close()
        return first, after

    first, after = _run(main())
    assert isinstance(first[0], BatchFailed) and "RuntimeError: boom" in str(first[0])
    assert first[1] == [8] and after == [12]


def test_without_batching_every_request_is_one_forward_pass() -> None:
    forward = Recorder()

    async def main() -> None:
        b = DynamicBatcher(forward, max_batch_tokens=1000, max_wait_ms=50, batching=False)
        b.start()
        await asyncio.gather(*(b.submit(_request(2, 3, tag)) for tag in range(5)))
        await b.close()

    _run(main())
    assert len(forward.batches) == 5 and all(len(b) == 2 and len({ids[0] for ids in b}) == 1 for b in forward.batches)


def test_close_finishes_queued_texts_and_refuses_new_ones() -> None:
    forward = Recorder()

    async def main() -> tuple[list[int], BaseException | None]:
        b = DynamicBatcher(forward, max_batch_tokens=1000, max_wait_ms=10_000)  # would wait 10 s for company
        b.start()
        pending = asyncio.ensure_future(b.submit([[1, 2]]))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(b.close(), timeout=5)  # closing does not wait out max_wait
        try:
            await b.submit([[1]])
        except BatchFailed as exc:
            return await pending, exc
        return await pending, None

    done, refused = _run(main())
    assert done == [3] and isinstance(refused, BatchFailed)


def test_keepalive_runs_on_the_worker_when_idle() -> None:
    calls: list[str] = []

    async def main() -> None:
        import threading

        b = DynamicBatcher(Recorder(), max_batch_tokens=10, max_wait_ms=1,
                           keepalive=lambda: calls.append(threading.current_thread().name), keepalive_s=0.02)
        b.start()
        await asyncio.sleep(0.2)
        await b.close()

    _run(main())
    assert calls and all(name.startswith("rm-registry-model") for name in calls)


@pytest.mark.parametrize("bad", [{"max_batch_tokens": 0}, {"max_wait_ms": -1}])
def test_invalid_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), **{"max_batch_tokens": 10, "max_wait_ms": 1, **bad})


def test_texts_of_very_different_lengths_go_to_different_batches() -> None:
    forward = Recorder()

    async def main() -> None:
        b = DynamicBatcher(forward, max_batch_tokens=100_000, max_wait_ms=50, max_padding_tokens=50)
        b.start()
        requests = [_request(1, length, tag) for tag, length in enumerate([100, 10, 12, 101, 11, 102, 10, 100])]
        await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()

    _run(main())
    # the oldest text (100 tokens) goes first
    assert [[len(ids) for ids in batch] for batch in forward.batches] == [[100, 100, 101, 102], [10, 10, 11, 12]]


def _cost(lengths: list[int], ends: list[int], overhead: float) -> float:
    return sum(overhead + (j - i) * lengths[j - 1] for i, j in zip([0, *ends[:-1]], ends))


def _all_cuts(n: int) -> list[list[int]]:
    """Every way to cut n sorted texts into consecutive batches (as end indices)."""
    import itertools

    return [[*inner, n] for k in range(n) for inner in itertools.combinations(range(1, n), k)]


@pytest.mark.parametrize("seed", range(30))
def test_the_plan_is_the_cheapest_cut_under_the_budget_and_the_padding_cap(seed: int) -> None:
    import random

    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 40) for _ in range(rng.randint(1, 9)))
    overhead = rng.choice([0.0, 3.0, 25.0, 400.0])
    budget = rng.choice([40, 80, 1000])
    cap = rng.choice([None, 0, 10])
    ends = plan_batches(lengths, max_tokens=budget, overhead_tokens=overhead, max_padding=cap)

    def allowed(cut: list[int]) -> bool:
        for i, j in zip([0, *cut[:-1]], cut):
            size, padding = (j - i) * lengths[j - 1], (j - i) * lengths[j - 1] - sum(lengths[i:j])
            if j - i > 1 and (size > budget or (cap is not None and padding > cap)):
                return False
        return True

    assert allowed(ends) and ends[-1] == len(lengths)
    assert _cost(lengths, ends, overhead) == min(_cost(lengths, c, overhead) for c in _all_cuts(len(lengths))
                                                 if allowed(c))


def test_a_cheap_pass_gives_tight_batches_and_a_costly_one_few_large_ones() -> None:
    lengths = sorted([40, 41, 42, 90, 91, 150, 151, 152, 153, 250])
    tight = plan_batches(lengths, max_tokens=100_000, overhead_tokens=5, max_padding=None)
    assert tight == [3, 5, 9, 10]  # only texts of nearly the same length share a pass
    assert plan_batches(lengths, max_tokens=100_000, overhead_tokens=1e6, max_padding=None) == [10]
    assert plan_batches(lengths, max_tokens=500, overhead_tokens=1e6, max_padding=None) == [5, 8, 10]


def test_the_pass_cost_is_fitted_to_the_passes_seen() -> None:
    cost = PassCost(default_overhead_tokens=256)
    assert cost.overhead_tokens == 256  # nothing seen yet
    cost.observe(1, 0.002 + 1e-5, keep=True)  # a = 2 ms, b = 10 us per token: overhead 200 tokens
    assert cost.overhead_tokens == 256  # one point cannot tell the two parts apart
    cost.observe(1024, 0.002 + 1024e-5, keep=True)
    assert cost.overhead_tokens == pytest.approx(200)
    for tokens in (300, 500, 700) * 200:  # many later passes of other sizes, slightly slower per token
        cost.observe(tokens, 0.002 + tokens * 1.1e-5)
    assert 150 < cost.overhead_tokens < 200
    same = PassCost(default_overhead_tokens=7)
    for _ in range(20):
        same.observe(512, 0.01)  # every pass alike: the two parts cannot be told apart
    assert same.overhead_tokens == 7
    assert PassCost(fixed_overhead_tokens=3).overhead_tokens == 3


def test_the_batcher_cuts_by_the_measured_cost() -> None:
    forward = Recorder()

    async def main() -> None:
        b = DynamicBatcher(forward, max_batch_tokens=100_000, max_wait_ms=50,
                           pass_cost=PassCost(fixed_overhead_tokens=5))
        b.start()
        requests = [_request(1, length, tag) for tag, length in enumerate([40, 90, 41, 150, 91, 42])]
        await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()

    _run(main())
    assert [[len(ids) for ids in batch] for batch in forward.batches] == [[40, 41, 42], [90, 91], [150]]


def test_a_cancelled_queued_request_leaves_every_other_request_its_own_result_promptly() -> None:
    """A client that disconnects while queued (RLHF loads do it all the time): its request sorts
    first by length, so a batch matched by position instead of by live request would hand every
    other client its neighbour's reward and leave the last one waiting forever."""
    forward = Recorder()

    async def main() -> tuple[Any, list[list[int]], list[int]]:
        b = DynamicBatcher(forward, max_batch_tokens=1024, max_wait_ms=300)
        b.start()
        shortest = asyncio.ensure_future(b.submit(_request(1, 1, 99)))
        others = [asyncio.ensure_future(b.submit(_request(2, length, tag))) for tag, length in ((1, 5), (2, 3), (3, 8))]
        await asyncio.sleep(0.05)  # every request queued; the batcher still gathers (max_wait 300 ms)
        shortest.cancel()
        results = await asyncio.wait_for(asyncio.gather(*others), timeout=5)
        later = await asyncio.wait_for(b.submit(_request(1, 2, 7)), timeout=5)
        await b.close()
        return shortest, [list(r) for r in results], list(later)

    shortest, results, later = _run(main())
    assert shortest.cancelled()
    assert results == [[5, 5], [6, 6], [24, 24]]  # each its own: the sums of its ids
    assert later == [14]  # the batcher goes on
    assert all(99 not in ids for batch in forward.batches for ids in batch)  # the cancelled text is not scored


def test_each_text_of_a_request_gets_its_own_result_in_the_request_order() -> None:
    """Texts of one request that differ (unlike the identical rows above) and are not sorted by
    length, spread over several batches: each gets its own result, in the order sent."""
    forward = Recorder()
    first = [[1] * 5, [3] * 2, [2] * 9, [7] * 1, [4] * 4]  # sums 5, 6, 18, 7, 16
    second = [[10] * 3, [20] * 6, [50] * 1]  # sums 30, 120, 50

    async def main() -> list[list[int]]:
        b = DynamicBatcher(forward, max_batch_tokens=16, max_wait_ms=50)
        b.start()
        results = await asyncio.wait_for(asyncio.gather(b.submit(first), b.submit(second)), timeout=5)
        await b.close()
        return [list(r) for r in results]

    assert _run(main()) == [[5, 6, 18, 7, 16], [30, 120, 50]]
    assert len(forward.batches) > 1  # the requests were cut across batches


class Gate(Recorder):
    """A :class:`Recorder` whose passes wait until :attr:`release` is set (:attr:`started` tells
    that the first one is running on the worker)."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__(fail_on)
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: list[list[int]]) -> list[int]:
        self.started.set()
        assert self.release.wait(10), "the test never released the forward pass"
        return super().__call__(batch)


@pytest.mark.parametrize("fails", [False, True], ids=["pass-succeeds", "pass-fails"])
def test_a_request_cancelled_while_its_batch_runs_leaves_the_others_and_the_batcher_going(fails: bool) -> None:
    """A client that disconnects while its batch is on the worker: when the pass returns (or raises),
    its future is already cancelled; the other request of that batch still gets its own answer and
    later requests are served (setting a cancelled future raises and would stop the batcher)."""
    forward = Gate(fail_on=-1 if fails else None)

    async def main() -> tuple[Any, Any, list[int]]:
        b = DynamicBatcher(forward, max_batch_tokens=1024, max_wait_ms=20)
        b.start()
        try:
            gone = asyncio.ensure_future(b.submit([[-1 if fails else 1]]))  # sorts first in the batch
            stay = asyncio.ensure_future(b.submit([[2] * 4, [3] * 2]))
            assert await asyncio.to_thread(forward.started.wait, 5)  # both are in the running pass
            gone.cancel()
            await asyncio.sleep(0.01)
        finally:
            forward.release.set()
        (kept,) = await asyncio.wait_for(asyncio.gather(stay, return_exceptions=True), timeout=5)
        later = await asyncio.wait_for(b.submit([[5] * 3]), timeout=5)
        await asyncio.wait_for(b.close(), timeout=5)
        return gone, kept, list(later)

    gone, kept, later = _run(main())
    assert forward.batches[0] == [[-1 if fails else 1], [3, 3], [2, 2, 2, 2]]  # one pass held both requests
    assert gone.cancelled()
    if fails:
        assert isinstance(kept, BatchFailed) and "RuntimeError: boom" in str(kept)
    else:
        assert kept == [8, 6]
    assert later == [15]  # the batcher goes on
