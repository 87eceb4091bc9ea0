"""OpenRLHF's remote reward model (``--remote_rm_url http://host:port/get_reward``).

``POST /get_reward`` with ``{"query": [str, ...], "prompts": [...], "labels": [...]}`` (``query`` is
read, ``prompts`` only by token-level models: each query is the whole prompt + response text) answers
``{"rewards": [float, ...], "scores": [float, ...], "extra_logs": {...}}``. ``rewards`` and
``scores`` are both the reward of ``rm-registry score``; ``extra_logs`` holds one list per attribute
for multi-output architectures (OpenRLHF logs them). An empty ``query`` gets empty lists.

A process reward model (``process_reward``) answers with its configured aggregate of the step rewards
(``model.process_reward.aggregate``) and ``extra_logs = {"step_rewards": [[...], ...]}``; ``prompts``,
when sent, tells where each query's steps begin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._http import RequestError, text_list
from ._service import endpoint

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["routes"]


@endpoint
async def get_reward(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service = request.app.state.service
    body = await service.body(request)
    if "query" not in body:
        raise RequestError(400, "query", "missing; expected {\"query\": [text, ...]}")
    texts = text_list(body["query"], "query")
    prompts = body.get("prompts") if isinstance(body.get("prompts"), list) else None
    results = await service.score(texts, "query", prompts)
    rewards = [r.reward for r in results]
    extra: dict[str, Any] = {}
    if results and results[0].steps is not None:  # a process reward model: the aggregate, and each step's reward
        extra = {"step_rewards": [r.output.get("step_rewards") for r in results]}
    elif service.num_outputs > 1:
        extra = {label: [r.values[k] for r in results] for k, label in enumerate(service.runner.labels)}
    return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": extra})


def routes() -> list[Route]:
    from starlette.routing import Route

    return [Route("/get_reward", get_reward, methods=["POST"])]
