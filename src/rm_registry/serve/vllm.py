"""vLLM's pooling API, as verl and vLLM's own clients call it.

- ``POST /pooling`` ``{"model", "input": str | [str], "use_activation": false}`` →
  ``data[i] = {"index", "object": "pooling", "data": [K floats]}`` (raw head outputs unless
  ``use_activation`` is true).
- ``POST /classify`` → ``data[i] = {"index", "label", "probs": [K floats], "num_classes"}``. As in vLLM,
  the activation (sigmoid for K = 1, softmax for K > 1) is applied unless ``use_activation`` (or its
  older name ``activation``, which verl sends) is false: send false to get the raw rewards.
- ``POST /score`` (K = 1 only) ``{"queries": str | [str], "documents": str | [str]}`` (or vLLM's
  older ``text_1``/``text_2``): each pair's text is query + document, concatenated as
  ``rm-registry score`` joins a prompt and a response; activation as for ``/classify``.
- ``GET /v1/models``.

A token-level model (``process_reward``) answers ``/pooling`` with one list of K values per step of
each text (``data[i]["data"] = [[K floats], ...]``, softmax with ``use_activation``), as vLLM's STEP
pooling serves Qwen2.5-Math-PRM; the steps of a text end with the plugin's step tag (or separator).
``/classify`` and ``/score`` refuse it (400).

Also under ``/v1/...``. Token-id inputs and chat-message inputs are not accepted (send text).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from ._http import RequestError, optional_bool, text_list
from ._service import Service, endpoint

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["routes"]


def _activate(values: Sequence[float]) -> list[float]:
    """vLLM's default classifier activation: sigmoid for one output, softmax for several."""
    if len(values) == 1:
        v = values[0]
        return [1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _inputs(body: dict[str, Any]) -> list[str]:
    if "input" not in body:
        raise RequestError(400, "input", "missing; expected {\"input\": text or [text, ...]}")
    return text_list(body["input"], "input", allow_single=True)


def _envelope(service: Service, prefix: str, data: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    import time

    return {"id": service.request_id(prefix), "object": "list", "created": int(time.time()), "model": service.name,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                    "prompt_tokens_details": None}}


async def _score_texts(request: Request, texts: list[str], field: str) -> tuple[Service, list[Any], int]:
    service: Service = request.app.state.service
    results = await service.score(texts, field)
    return service, results, sum(r.tokens for r in results)


@endpoint
async def pooling(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service: Service = request.app.state.service
    body = await service.body(request)
    service.check_model(body)
    activate = optional_bool(body, "use_activation", "activation") or False
    texts = _inputs(body)
    _, results, tokens = await _score_texts(request, texts, "input")
    def values(r: Any) -> list[Any]:
        if r.steps is not None:  # token-level (a process reward model): K values per step, as vLLM's STEP pooling
            return [_activate(v) if activate else list(v) for v in r.steps]
        return _activate(r.values) if activate else list(r.values)

    data = [{"index": i, "object": "pooling", "data": values(r)} for i, r in enumerate(results)]
    return JSONResponse(_envelope(service, "pool", data, tokens))


@endpoint
async def classify(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service: Service = request.app.state.service
    _refuse_token_level(service, "/classify")
    body = await service.body(request)
    service.check_model(body)
    activate = optional_bool(body, "use_activation", "activation")
    texts = _inputs(body)
    _, results, tokens = await _score_texts(request, texts, "input")
    labels = service.runner.labels
    data = []
    for i, r in enumerate(results):
        probs = _activate(r.values) if activate is not False else list(r.values)
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append({"index": i, "label": labels[best], "probs": probs, "num_classes": len(probs)})
    return JSONResponse(_envelope(service, "classify", data, tokens))


def _refuse_token_level(service: Service, route: str) -> None:
    if service.runner.token_level:
        raise RequestError(400, "", f"{route} gives one result per text; this model gives one per step "
                                    "(a process reward model): use /pooling (step values) or /get_reward")


def _side(body: dict[str, Any], new: str, old: str) -> tuple[list[str], str]:
    for name in (new, old):
        if name in body:
            return text_list(body[name], name, allow_single=True), name
    raise RequestError(400, new, f"missing; expected {{\"{new}\": text or [text, ...]}} (or {old!r})")


@endpoint
async def score(request: Request) -> Response:
    from starlette.responses import JSONResponse

    from ..engine.data import join_prompt_response

    service: Service = request.app.state.service
    _refuse_token_level(service, "/score")
    if service.num_outputs != 1:
        raise RequestError(400, "", f"/score needs a model with one output; this one has {service.num_outputs} "
                                    "(use /pooling or /classify)")
    body = await service.body(request)
    service.check_model(body)
    activate = optional_bool(body, "use_activation", "activation")
    queries, qname = _side(body, "queries", "text_1")
    documents, dname = _side(body, "documents", "text_2")
    if len(queries) == 1:
        queries = queries * len(documents)
    if len(queries) != len(documents):
        raise RequestError(400, dname, f"{len(documents)} documents for {len(queries)} queries; send one query, or "
                                       "as many queries as documents")
    texts = [join_prompt_response(q, d, path="request", line=0) for q, d in zip(queries, documents)]
    _, results, tokens = await _score_texts(request, texts, dname)
    data = [{"index": i, "object": "score",
             "score": (_activate(r.values) if activate is not False else list(r.values))[0]}
            for i, r in enumerate(results)]
    return JSONResponse(_envelope(service, "score", data, tokens))


@endpoint
async def models(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service: Service = request.app.state.service
    cards = [{"id": name, "object": "model", "created": service.created, "owned_by": "rm-registry",
              "root": str(service.runner.model.checkpoint), "parent": None,
              "max_model_len": service.runner.max_length} for name in service.names]  # vLLM: one per served name
    return JSONResponse({"object": "list", "data": cards})


def routes() -> list[Route]:
    from starlette.routing import Route

    out = []
    for prefix in ("", "/v1"):
        out += [Route(f"{prefix}/pooling", pooling, methods=["POST"]),
                Route(f"{prefix}/classify", classify, methods=["POST"]),
                Route(f"{prefix}/score", score, methods=["POST"])]
    out.append(Route("/v1/models", models, methods=["GET"]))
    return out
