"""The ASGI app (Starlette) and the uvicorn server around it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, AsyncIterator

from . import kserve, openrlhf, vllm
from ._http import ApiKeyGate
from ._metrics import RequestCounter
from ._service import ServeOptions, Service

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..engine.api import LoadedRewardModel

__all__ = ["build_app", "run_server"]


async def health(request: Request) -> Response:
    """200 once the model is loaded and the server takes requests; 503 otherwise."""
    from starlette.responses import JSONResponse

    service: Service = request.app.state.service
    if not service.ready:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "model": service.name})


async def metrics(request: Request) -> Response:
    from starlette.responses import Response

    body, content_type = request.app.state.service.metrics.exposition()
    return Response(body, media_type=content_type)


def build_app(service: Service, *, on_ready: Any = None) -> Any:
    """The ASGI app serving every dialect over ``service`` (wrapped in the API-key gate when set).

    ``on_ready()`` is called once the batcher runs (the server is about to take requests).
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await service.stop()

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              *openrlhf.routes(), *vllm.routes(), *kserve.routes()]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    known = {r.path for r in routes if "{" not in r.path}
    for name in service.names:
        base = f"/v2/models/{name}"
        known |= {base, f"{base}/ready", f"{base}/config", f"{base}/infer"}
    wrapped: Any = RequestCounter(app, service.metrics, known)
    if service.options.api_key:
        wrapped = ApiKeyGate(wrapped, api_key=service.options.api_key)
    wrapped.state = app.state  # tests and tools reach the service as app.state.service
    return wrapped


def _bind(host: str, port: int) -> socket.socket:
    from .._errors import ConfigError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(model: LoadedRewardModel, options: ServeOptions) -> int:
    """Serve ``model`` until SIGTERM or SIGINT; returns the exit code (0 after a clean shutdown).

    On global rank 0 only; the other ranks of a torchrun launch call
    :meth:`~._runner.ModelRunner.follow`.
    """
    import uvicorn

    from ._runner import ModelRunner

    runner = ModelRunner(model)
    service = Service(runner, options)
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:
        print(f"rm-registry serve: serving {model.checkpoint} as {' / '.join(map(repr, options.model_names))} on "
              f"http://{shown}:{port} (pid {os.getpid()}, K={runner.num_outputs}, batching "
              f"{'on' if options.batching else 'off'}; SIGTERM or Ctrl-C stops)", file=sys.stderr, flush=True)

    app = build_app(service, on_ready=announce)
    config = uvicorn.Config(app, log_level="warning", access_log=options.access_log, lifespan="on",
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place
    # that re-raise is a no-op and the process exits 0 after a graceful stop.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])  # on uvloop when installed (the [serve] extra), as `uvicorn` does
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        runner.stop()
        return 1
    print("rm-registry serve: stopped", file=sys.stderr, flush=True)
    return 0
