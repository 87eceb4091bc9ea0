"""Bad requests, a load test mixing the three dialects, the API key and SIGTERM, on real server processes."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from typing import Any, Iterator

import httpx
import pytest
from conftest import TEXTS, TOL, Server

pytestmark = pytest.mark.slow

INFER = "/v2/models/reward_model/infer"
BAD_REQUESTS = [
    # (path, raw body or JSON, status, field named in the error)
    ("/get_reward", b'{"query": ["a", ', 400, "body"),
    ("/get_reward", b"", 400, "body"),
    ("/get_reward", [1, 2], 400, "body"),
    ("/get_reward", {"prompts": ["a"]}, 400, "query"),
    ("/get_reward", {"query": "one text"}, 400, "query"),
    ("/get_reward", {"query": ["fine", 3]}, 400, "query[1]"),
    ("/get_reward", {"query": ["fine", ""]}, 400, "query[1]"),
    ("/pooling", {"texts": ["a"]}, 400, "input"),
    ("/pooling", {"input": {"a": 1}}, 400, "input"),
    ("/pooling", {"input": [[1, 2, 3]]}, 400, "input[0]"),
    ("/pooling", {"input": "a", "use_activation": "no"}, 400, "use_activation"),
    ("/pooling", {"input": "a", "model": "gpt-4"}, 404, "model"),
    ("/classify", {"input": ""}, 400, "input[0]"),
    ("/score", {"queries": "q"}, 400, "documents"),
    ("/score", {"queries": ["a", "b"], "documents": ["c", "d", "e"]}, 400, "documents"),
    (INFER, {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}, 400, "inputs"),
    (INFER, {"inputs": [{"name": "sentences", "shape": [2, 1], "datatype": "BYTES", "data": ["a"]}]}, 400,
     "inputs[0].shape"),
    (INFER, {"inputs": [{"name": "sentences", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}, 400,
     "inputs[0].datatype"),
    (INFER, {"inputs": [{"name": "sentences", "shape": [1, 1], "datatype": "BYTES", "data": [""]}]}, 400,
     "inputs[0].data[0]"),
    ("/v2/models/other/infer", {"inputs": []}, 404, "model"),
    ("/get_reward", {"query": ["x" * 70000]}, 413, "body"),  # over --max-request-bytes=65536
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_REQUESTS,
                         ids=[f"{p}-{f}-{s}-{i}" for i, (p, _, s, f) in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_4xx_naming_the_field(server: Server, path: str, body: Any, status: int, field: str) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.url}{path}", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["field"] == field and error["error"].startswith(f"{field}: ") or field == "model", error
    # ... and the server goes on serving
    ok = httpx.post(f"{server.url}/get_reward", json={"query": TEXTS[:2]})
    assert ok.status_code == 200


def test_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"query": ["'
        for _ in range(80):
            yield b"y" * 1000
        yield b'"]}'

    r = httpx.post(f"{server.url}/get_reward", content=chunks())
    assert r.status_code == 413 and r.json()["field"] == "body"


def _check(dialect: str, got: Any, idx: list[int], want: list[float]) -> None:
    if dialect == "openrlhf":
        values = got["rewards"]
    elif dialect == "vllm":
        values = [d["probs"][-1] for d in got["data"]]
    else:
        values = got["outputs"][0]["data"]
    assert len(values) == len(idx)
    for v, i in zip(values, idx):
        assert abs(v - want[i]) <= TOL, (dialect, i, v, want[i])


def test_load_32_clients_mixing_dialects(server: Server, served_run: dict[str, Any]) -> None:
    """32 concurrent clients for 3 s: every answer correct, none lost, no 5xx; requests were batched together."""
    want = served_run["rewards"]
    before = _batch_stats(server)
    sent = answered = 0
    seconds, clients = 3.0, 32

    async def client(seed: int, http: httpx.AsyncClient) -> None:
        nonlocal sent, answered
        rng = random.Random(seed)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            idx = rng.sample(range(len(TEXTS)), rng.randint(1, 3))
            texts = [TEXTS[i] for i in idx]
            dialect = rng.choice(["openrlhf", "vllm", "kserve"])
            if dialect == "openrlhf":
                req = ("/get_reward", {"query": texts})
            elif dialect == "vllm":
                req = ("/classify", {"model": "reward_model", "input": texts, "activation": False})
            else:
                req = (INFER, {"inputs": [{"name": "sentences", "shape": [len(texts), 1], "datatype": "BYTES",
                                           "data": texts}]})
            sent += 1
            r = await http.post(req[0], json=req[1])
            assert r.status_code == 200, (r.status_code, r.text)
            _check(dialect, r.json(), idx, want)
            answered += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as http:
            await asyncio.gather(*(client(i, http) for i in range(clients)))

    asyncio.run(main())
    assert sent == answered and answered >= clients
    batches, texts = (a - b for a, b in zip(_batch_stats(server), before))
    assert texts / batches > 2, f"{texts} texts in {batches} forward passes: requests were not batched together"


def _batch_stats(server: Server) -> tuple[float, float]:
    text = httpx.get(f"{server.url}/metrics").text
    count = float(re.search(r"^rm_registry_batch_texts_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^rm_registry_batch_texts_sum (\S+)$", text, re.M).group(1))
    return count, total


# ---------------------------------------------------------------- API key, over-long policy, SIGTERM

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def strict(served_run: dict[str, Any]) -> Iterator[Server]:
    """API key from the environment, over-long texts refused, a long batching wait (for the SIGTERM test)."""
    srv = Server(["--checkpoint", str(served_run["checkpoint"]), "--max-wait-ms", "1500",
                  "model.data.overlong_policy=error"], env={"RM_REGISTRY_API_KEY": KEY})
    yield srv
    srv.kill()


def test_api_key_on_every_route_but_health(strict: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{strict.url}/health").status_code == 200
    for method, path, body in [("POST", "/get_reward", {"query": ["a"]}), ("POST", "/pooling", {"input": "a"}),
                               ("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/v2/health/live", None),
                               ("POST", INFER, {"inputs": []})]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.request(method, f"{strict.url}{path}", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["field"] == "Authorization", (path, headers, r.text)
    assert httpx.post(f"{strict.url}/get_reward", json={"query": ["a"]}, headers=auth).status_code == 200
    assert httpx.get(f"{strict.url}/v1/models", headers=auth).status_code == 200


def test_overlong_text_refused_under_policy_error(strict: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{strict.url}/get_reward", json={"query": ["short", "x" * 400]}, headers=auth)
    assert r.status_code == 400 and r.json()["field"] == "query[1]", r.text
    assert "encoder_seq_length=128" in r.json()["error"]
    assert httpx.post(f"{strict.url}/get_reward", json={"query": ["short"]}, headers=auth).status_code == 200


def test_sigterm_finishes_in_flight_requests_and_exits_0(strict: Server, served_run: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    answers: list[httpx.Response] = []
    # --max-wait-ms 1500: the request sits in the batcher's queue when SIGTERM arrives
    worker = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{strict.url}/get_reward", json={"query": TEXTS[:4]}, headers=auth, timeout=60)))
    worker.start()
    time.sleep(0.5)
    code = strict.terminate()
    worker.join(timeout=60)
    assert code == 0, "".join(strict.stderr)[-3000:]
    assert answers and answers[0].status_code == 200, answers
    got = answers[0].json()["rewards"]
    assert max(abs(a - b) for a, b in zip(got, served_run["rewards"][:4])) <= TOL
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{strict.url}/health")
    assert "rm-registry serve: stopped" in "".join(strict.stderr)
