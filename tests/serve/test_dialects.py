"""Every dialect against a real server process: the rewards of `rm-registry score`, to 1e-5."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import PAIRS, TEXTS, TOL, Server, train_and_score

pytestmark = pytest.mark.slow


def _close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= TOL, f"rewards differ by up to {worst:.2e}: {got} vs {want}"


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_openrlhf_get_reward(server: Server, served_run: dict[str, Any]) -> None:
    r = httpx.post(f"{server.url}/get_reward", json={"query": TEXTS, "prompts": [p for p, _ in PAIRS], "labels": []})
    assert r.status_code == 200, r.text
    body = r.json()
    _close(body["rewards"], served_run["rewards"])
    assert body["scores"] == body["rewards"] and body["extra_logs"] == {}
    empty = httpx.post(f"{server.url}/get_reward", json={"query": []})
    assert empty.status_code == 200 and empty.json() == {"rewards": [], "scores": [], "extra_logs": {}}


def test_vllm_pooling_classify_score_and_models(server: Server, served_run: dict[str, Any]) -> None:
    want = served_run["rewards"]
    r = httpx.post(f"{server.url}/pooling", json={"model": "reward_model", "input": TEXTS, "use_activation": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "reward_model" and body["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "pooling" and len(d["data"]) == 1 for d in body["data"])
    _close([d["data"][0] for d in body["data"]], want)
    one = httpx.post(f"{server.url}/v1/pooling", json={"input": TEXTS[3]}).json()  # a single string
    _close([one["data"][0]["data"][0]], [want[3]])

    # verl: {"activation": false} and data[-1]["probs"][-1]
    raw = httpx.post(f"{server.url}/classify", json={"model": "reward_model", "input": TEXTS, "activation": False})
    assert raw.status_code == 200, raw.text
    data = raw.json()["data"]
    assert all(d["num_classes"] == 1 and d["label"] == "reward" for d in data)
    _close([d["probs"][-1] for d in data], want)
    default = httpx.post(f"{server.url}/classify", json={"input": TEXTS}).json()["data"]  # vLLM: sigmoid for K=1
    _close([d["probs"][0] for d in default], [_sigmoid(w) for w in want])

    score = httpx.post(f"{server.url}/score", json={"queries": [p for p, _ in PAIRS],
                                                     "documents": [r for _, r in PAIRS], "use_activation": False})
    assert score.status_code == 200, score.text
    assert all(d["object"] == "score" for d in score.json()["data"])
    _close([d["score"] for d in score.json()["data"]], want)
    # one query against several documents (vLLM's text_1 / text_2 names), default activation
    p, r0 = PAIRS[5]
    old = httpx.post(f"{server.url}/v1/score", json={"text_1": p, "text_2": [r0, PAIRS[6][1]]})
    assert old.status_code == 200, old.text
    assert abs(old.json()["data"][0]["score"] - _sigmoid(want[5])) <= TOL

    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["reward_model", str(served_run["checkpoint"])]
    assert models["data"][0]["max_model_len"] == 128


def test_the_checkpoint_path_is_a_model_name_and_others_are_404(server: Server, served_run: dict[str, Any]) -> None:
    """verl's reward loop sends {"model": <the reward model's path>}; vLLM answers to it by default."""
    path = str(served_run["checkpoint"])
    r = httpx.post(f"{server.url}/classify", json={"model": path, "input": TEXTS, "activation": False})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "reward_model"  # the first name is the one reported
    _close([d["probs"][-1] for d in r.json()["data"]], served_run["rewards"])
    kserve = httpx.post(f"{server.url}/v2/models/{path.lstrip('/')}/infer", json={"inputs": []})
    assert kserve.status_code == 404  # a path with slashes is no KServe model name; the route stays 404
    for other in ("other_model", path + "x"):
        bad = httpx.post(f"{server.url}/classify", json={"model": other, "input": TEXTS})
        assert bad.status_code == 404 and repr(other) in bad.text
    assert httpx.post(f"{server.url}/v2/models/other_model/infer", json={"inputs": []}).status_code == 404


def test_several_served_model_names_as_vllm(served_run: dict[str, Any]) -> None:
    """--served-model-name a b: both answer, a is reported, and nothing else (not the path) does."""
    from starlette.testclient import TestClient

    from rm_registry.engine.api import load_reward_model
    from rm_registry.serve._app import build_app
    from rm_registry.serve._cli import add_serve_subcommand
    from rm_registry.serve._runner import ModelRunner
    from rm_registry.serve._service import ServeOptions, Service

    import argparse

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    args = parser.parse_args(["serve", "--checkpoint", "x", "--served-model-name", "rm-a", "rm-b"])
    assert args.served_model_name == ["rm-a", "rm-b"]
    service = Service(ModelRunner(load_reward_model(served_run["checkpoint"])),
                      ServeOptions(max_wait_ms=0, served_model_name="rm-a", aliases=("rm-b",)))
    with TestClient(build_app(service)) as client:
        for name in ("rm-a", "rm-b"):
            r = client.post("/pooling", json={"model": name, "input": TEXTS[:2]})
            assert r.status_code == 200 and r.json()["model"] == "rm-a", r.text
            assert client.get(f"/v2/models/{name}").status_code == 200
        assert client.post("/pooling", json={"model": str(served_run["checkpoint"]), "input": TEXTS[:2]}).status_code == 404
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["rm-a", "rm-b"]


def test_kserve_v2_json(server: Server, served_run: dict[str, Any]) -> None:
    body = {"id": "req-1", "inputs": [{"name": "sentences", "shape": [len(TEXTS), 1], "datatype": "BYTES",
                                       "data": [[t] for t in TEXTS]}]}
    r = httpx.post(f"{server.url}/v2/models/reward_model/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == "reward_model"
    (rewards,) = out["outputs"]
    assert rewards["name"] == "rewards" and rewards["datatype"] == "FP32" and rewards["shape"] == [len(TEXTS), 1]
    _close(rewards["data"], served_run["rewards"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_is_a_real_client(server: Server, served_run: dict[str, Any], binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("reward_model")
    meta = client.get_model_metadata("reward_model")
    assert meta["inputs"][0]["name"] == "sentences" and meta["outputs"][0]["name"] == "rewards"
    assert client.get_model_config("reward_model")["name"] == "reward_model"
    sentences = np.array([[t.encode()] for t in TEXTS], dtype=object)  # as NeMo-Aligner's clients send them
    inp = triton.InferInput("sentences", list(sentences.shape), "BYTES")
    inp.set_data_from_numpy(sentences, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("rewards", binary_data=False)]
    result = client.infer("reward_model", [inp], outputs=outputs)
    rewards = result.as_numpy("rewards")
    assert rewards.dtype == np.float32 and rewards.shape == (len(TEXTS), 1)
    # float32 on the wire: 1e-5 relative to the size of the values
    _close([float(x) for x in rewards[:, 0]], served_run["rewards"])
    client.close()


def test_health_and_metrics(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    httpx.post(f"{server.url}/get_reward", json={"query": TEXTS[:3]})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("rm_registry_requests_total", "rm_registry_batch_texts_bucket", "rm_registry_queue_seconds_bucket",
                 "rm_registry_tokens_per_second", "rm_registry_tokens_total"):
        assert name in text, name
    assert 'rm_registry_requests_total{route="/get_reward",status="200"}' in text


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny multi-attribute checkpoint trained on the plugin's sample data, and its scores."""
    d = tmp_path_factory.mktemp("serve_regression")
    rows = train_and_score(d, "regression", [{"text": t} for t in TEXTS])
    return {"checkpoint": d / "rm", "rows": rows}


def test_multi_output_architecture(regression_run: dict[str, Any]) -> None:
    rows = regression_run["rows"]
    names = list(rows[0]["attributes"])
    assert len(names) > 1
    srv = Server(["--checkpoint", str(regression_run["checkpoint"])])
    try:
        body = httpx.post(f"{srv.url}/get_reward", json={"query": TEXTS}).json()
        _close(body["rewards"], [r["reward"] for r in rows])  # the weighted scalar of `score`
        assert list(body["extra_logs"]) == names
        for name in names:
            _close(body["extra_logs"][name], [r["attributes"][name] for r in rows])
        pooled = httpx.post(f"{srv.url}/pooling", json={"input": TEXTS}).json()["data"]
        for got, row in zip(pooled, rows):
            _close(got["data"], [row["attributes"][n] for n in names])
        classified = httpx.post(f"{srv.url}/classify", json={"input": TEXTS[:2], "use_activation": False}).json()
        first = classified["data"][0]
        assert first["num_classes"] == len(names) and first["label"] in names
        assert first["label"] == max(rows[0]["attributes"], key=rows[0]["attributes"].get)
        softmax = httpx.post(f"{srv.url}/classify", json={"input": TEXTS[0]}).json()["data"][0]["probs"]
        assert abs(sum(softmax) - 1) < 1e-9 and all(0 < p < 1 for p in softmax)
        kserve = httpx.post(f"{srv.url}/v2/models/reward_model/infer", json={"inputs": [
            {"name": "sentences", "shape": [2, 1], "datatype": "BYTES", "data": TEXTS[:2]}]}).json()["outputs"][0]
        assert kserve["shape"] == [2, len(names)]
        _close(kserve["data"], [row["attributes"][n] for row in rows[:2] for n in names])
        refused = httpx.post(f"{srv.url}/score", json={"queries": "a", "documents": ["b"]})
        assert refused.status_code == 400 and "one output" in refused.json()["error"]
        assert srv.terminate() == 0
    finally:
        srv.kill()
