"""What every dialect shares: the options, the batcher and the model runner behind one object, and the
decorator that turns refused requests and failed batches into JSON answers."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from ._batcher import BatchFailed, DynamicBatcher
from ._http import RequestError, error_response
from ._metrics import ServerMetrics
from ._options import ServeOptions

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

    from ._runner import ModelRunner, TextScore

__all__ = ["ServeOptions", "Service", "endpoint"]

#: Texts longer than this (in total, characters) are tokenized on a thread, off the event loop.
_ENCODE_INLINE_CHARS = 16384


class Service:
    """The model behind the routes: ``await service.score(texts, field)`` gives one
    :class:`~._runner.TextScore` per text, batched with every other request's texts."""

    def __init__(self, runner: ModelRunner, options: ServeOptions) -> None:
        self.runner = runner
        self.options = options
        self.metrics = ServerMetrics()
        self.batcher = DynamicBatcher(runner.forward, max_batch_tokens=options.max_batch_tokens,
                                      max_wait_ms=options.max_wait_ms,
                                      max_padding_tokens=options.max_padding_tokens, batching=options.batching,
                                      metrics=self.metrics, keepalive=runner.keepalive)
        for padded, seconds in runner.warmup_passes:
            self.batcher.pass_cost.observe(padded, seconds, keep=True)
        self.ready = False
        self.created = int(time.time())

    @property
    def name(self) -> str:
        """The reported model name (the first ``--served-model-name``)."""
        return self.options.served_model_name

    @property
    def names(self) -> tuple[str, ...]:
        """Every name requests may use (:attr:`ServeOptions.model_names`)."""
        return self.options.model_names

    @property
    def num_outputs(self) -> int:
        return self.runner.num_outputs

    async def start(self) -> None:
        self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        """Finish queued texts, then release the other tensor-parallel ranks."""
        self.ready = False
        await self.batcher.close()
        self.runner.stop()

    async def score(self, texts: Sequence[str], field: str, prompts: Sequence[Any] | None = None) -> list[TextScore]:
        """Score ``texts`` (already checked to be non-empty strings). ``field`` names them in errors.
        ``prompts``: each text's prompt, where the client sends it (a token-level model scores the steps after it)."""
        if sum(len(t) for t in texts) > _ENCODE_INLINE_CHARS:
            ids = await asyncio.to_thread(self.runner.encode, texts, field, prompts)
        else:
            ids = self.runner.encode(texts, field, prompts)
        return await self.batcher.submit(ids)

    def check_model(self, body: dict[str, Any], field: str = "model") -> None:
        """vLLM requests may name the model; it must be the served one (404 otherwise, as vLLM does)."""
        model = body.get(field)
        if model is None:
            return
        if not isinstance(model, str):
            raise RequestError(400, field, f"expected a string, got {type(model).__name__}")
        if model not in self.names:
            raise RequestError(404, field, f"the model {model!r} does not exist; this server serves "
                                           f"{' / '.join(map(repr, self.names))} (see GET /v1/models)")

    async def body(self, request: Request) -> dict[str, Any]:
        from ._http import read_json

        return await read_json(request, self.options.max_request_bytes)

    @staticmethod
    def request_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"


Handler = Callable[["Request"], Awaitable["Response"]]


def endpoint(fn: Handler) -> Handler:
    """Answer a :class:`RequestError` with its 4xx, a failed batch with 500, and 503 before the model
    is ready or once shutdown has begun; the server goes on in every case."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        service: Service = request.app.state.service
        if not service.ready:
            return error_response(RequestError(503, "", "the model is not ready (loading or shutting down)"))
        try:
            return await fn(request)
        except RequestError as exc:
            return error_response(exc)
        except BatchFailed as exc:
            return error_response(RequestError(500, "", str(exc)))

    return wrapper
