"""Prometheus metrics of one server (own registry, so several apps in one process never clash)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "RequestCounter"]

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Requests, batch sizes, queue time and throughput, exposed by ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rm_registry_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("rm_registry_request_seconds", "HTTP request latency by route",
                                         ["route"], buckets=_TIME_BUCKETS, registry=r)
        self.texts = Counter("rm_registry_texts", "texts scored", registry=r)
        self.tokens = Counter("rm_registry_tokens", "tokens scored (EOS included, padding excluded)", registry=r)
        self.batches = Counter("rm_registry_batches", "forward passes, by outcome", ["outcome"], registry=r)
        self.batch_texts = Histogram("rm_registry_batch_texts", "texts per forward pass", buckets=_SIZE_BUCKETS,
                                     registry=r)
        self.batch_tokens = Histogram("rm_registry_batch_padded_tokens", "padded tokens per forward pass "
                                      "(texts x longest)", buckets=tuple(b * 64 for b in _SIZE_BUCKETS), registry=r)
        self.queue_seconds = Histogram("rm_registry_queue_seconds", "time a text waits before its forward pass",
                                       buckets=_TIME_BUCKETS, registry=r)
        self.forward_seconds = Histogram("rm_registry_forward_seconds", "duration of one forward pass",
                                         buckets=_TIME_BUCKETS, registry=r)
        self.tokens_per_second = Gauge("rm_registry_tokens_per_second", "tokens/s of the last forward pass",
                                       registry=r)
        self.queue_depth = Gauge("rm_registry_queue_texts", "texts waiting for a forward pass", registry=r)
        self.pass_overhead_tokens = Gauge("rm_registry_pass_overhead_tokens", "fixed cost of one forward pass, in "
                                          "padded tokens (measured; batches are cut by it)", registry=r)

    def observe_batch(self, texts: int, tokens: int, padded: int, seconds: float, ok: bool) -> None:
        self.batches.labels("ok" if ok else "error").inc()
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(padded)
        self.forward_seconds.observe(seconds)
        if ok:
            self.texts.inc(texts)
            self.tokens.inc(tokens)
            if seconds > 0:
                self.tokens_per_second.set(tokens / seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestCounter:
    """ASGI middleware counting requests and their latency by route (known routes only, so that
    scanning unknown paths cannot grow the label set)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServerMetrics, routes: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import time

        route = scope["path"] if scope["path"] in self.routes else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def send_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
