"""The ``rm-registry serve`` subcommand (argument parsing only: cheap to import)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..engine._launch import quiet_unless_first_rank
from ..engine._load_keys import load_overrides_text
from ._options import ServeOptions

__all__ = ["add_serve_subcommand"]

API_KEY_ENV = "RM_REGISTRY_API_KEY"


def add_serve_subcommand(subparsers: Any) -> None:
    """Add ``serve`` to the ``rm-registry`` parser (defaults: :class:`ServeOptions`'s)."""
    d = ServeOptions()
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP to RLHF frameworks",
        description="Serve a reward model over HTTP in the wire formats RLHF frameworks already speak: OpenRLHF "
        "(POST /get_reward), vLLM's pooling API (POST /pooling, /classify, /score; GET /v1/models, as verl calls "
        "it) and KServe v2 / Triton (POST /v2/models/reward_model/infer, as NeMo-Aligner's PyTriton clients call "
        "it), plus GET /health and GET /metrics (Prometheus). Requests are batched together (length-sorted, under "
        "--max-batch-tokens). Rewards are those of `rm-registry score`. Under `torchrun -m rm_registry serve ... "
        "model.tensor_model_parallel_size=N` rank 0 serves and the other ranks follow. SIGTERM or Ctrl-C stops "
        "taking requests, finishes those in flight and exits 0. Needs the [serve] extra. See docs/serving.md.",
        epilog="example: rm-registry serve --checkpoint runs/rm1 --port 8000\n"
        "         curl -s localhost:8000/get_reward -d '{\"query\": [\"prompt and response\"]}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a run folder (its latest checkpoint), one checkpoint folder, or a Hugging Face "
                        "*ForSequenceClassification folder, as score takes")
    p.add_argument("--host", default=d.host,
                   help=f"interface to listen on (default {d.host}: this machine only; 0.0.0.0 for every "
                        "interface, then set an --api-key)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port}; 0 picks a free one, printed)")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV} "
                        "if set, else no key). Prefer the environment variable: arguments show in `ps`.")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens, metavar="N",
                   help=f"padded tokens (texts x longest text) per forward pass (default {d.max_batch_tokens}); a longer single "
                        "text runs alone")
    p.add_argument("--max-padding-tokens", type=int, default=d.max_padding_tokens, metavar="N",
                   help="cap on the padding tokens of a forward pass (default: none). Queued texts are sorted by "
                        "length and cut into passes where the cost is least, by the cost of a pass the server "
                        "measures (a fixed part plus a part per padded token): tight passes on CPUs, where "
                        "padding costs as much as text, large ones on GPUs, where each pass has a fixed cost")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help=f"how long an idle server waits for more texts before a forward pass (default {d.max_wait_ms:g})")
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, metavar="N",
                   help=f"largest request body accepted; larger ones get 413 (default {d.max_request_bytes // 2**20} MiB)")
    p.add_argument("--no-batching", action="store_true",
                   help="one forward pass per request (no batching across requests; for comparison)")
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="model names of the vLLM routes (the 'model' field) and of the KServe routes "
                        "(/v2/models/NAME/...); several may be given, as in vLLM, and the first is the one reported "
                        f"(default: {d.served_model_name}, as NeMo-Aligner, and the --checkpoint argument as given, "
                        "as vLLM answers to its model path: what verl sends)")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    p.add_argument("--distribution", metavar="DIST",
                   help="which installed distribution provides the checkpoint's architecture, when two do")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings of the loaded model that may be changed: " + load_overrides_text() +
                        "; model.tensor_model_parallel_size=N under torchrun, model.data.overlong_policy=error "
                        "refuses over-long texts with 400 instead of cutting them, as `score` does")
    p.set_defaults(func=_serve)


def _check_extra() -> None:
    from .._errors import ConfigError

    missing = []
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"rm-registry serve needs {', '.join(missing)}: pip install 'rm-registry[serve]'")


def _serve(args: argparse.Namespace) -> int:
    quiet_unless_first_rank()
    _check_extra()
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    options = ServeOptions(host=args.host, port=args.port, api_key=api_key, max_batch_tokens=args.max_batch_tokens,
                           max_padding_tokens=args.max_padding_tokens, max_wait_ms=args.max_wait_ms,
                           max_request_bytes=args.max_request_bytes,
                           batching=not args.no_batching,
                           served_model_name=(args.served_model_name or [ServeOptions.served_model_name])[0],
                           aliases=tuple(args.served_model_name[1:]) if args.served_model_name else (args.checkpoint,),
                           access_log=args.access_log)

    from ..engine.api import load_reward_model
    from . import serve

    model = load_reward_model(args.checkpoint, overrides=args.overrides, distribution=args.distribution)
    return serve(model, options)
