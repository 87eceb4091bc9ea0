"""A process reward model behind `rm-registry serve`: vLLM's token-level /pooling gives each step's
values, OpenRLHF's /get_reward the configured aggregate with the step rewards in extra_logs, both
equal to `rm-registry score` on the same solutions; /classify and /score refuse it; bad texts 400."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import TOL, Server, train_and_score

pytestmark = pytest.mark.slow  # trains a tiny checkpoint and starts a real server

PROMPT = "Get from the hall to the gate.\n"
STEPS = [["walk to the desk", "fly to the roof", "hop to the gate"], ["run to the yard"],
         ["step to the porch", "walk to the attic"] * 2]


@pytest.fixture(scope="module")
def prm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("prm-serve")
    # the same solutions as `score` records, in the placeholder layout the server reads texts in
    records = [{"input": PROMPT + "".join(f"{s} ки" for s in steps)} for steps in STEPS]
    rows = train_and_score(d, "process_reward", records)
    assert [len(r["step_rewards"]) for r in rows] == [len(s) for s in STEPS]
    srv = Server(["--checkpoint", str(d / "rm")])
    yield {"rows": rows, "texts": [r["input"] for r in records], "server": srv, "dir": d}
    assert srv.terminate() == 0, "".join(srv.stderr)[-3000:]


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import httpx

    r = httpx.post(url, json=body, timeout=60)
    return r.status_code, r.json()


def test_pooling_gives_each_steps_values_as_score(prm) -> None:
    url = prm["server"].url
    code, out = _post(f"{url}/pooling", {"model": "reward_model", "input": prm["texts"], "use_activation": True})
    assert code == 200, out
    for item, row in zip(out["data"], prm["rows"]):
        assert len(item["data"]) == len(row["step_rewards"])
        for probs, reward in zip(item["data"], row["step_rewards"]):
            assert len(probs) == 2 and math.isclose(sum(probs), 1, abs_tol=1e-6)
            assert probs[1] == pytest.approx(reward, abs=TOL)
    code, raw = _post(f"{url}/v1/pooling", {"input": prm["texts"][0]})  # raw logits by default
    assert code == 200 and len(raw["data"][0]["data"]) == 3
    logits = raw["data"][0]["data"][0]
    assert 1 / (1 + math.exp(logits[0] - logits[1])) == pytest.approx(prm["rows"][0]["step_rewards"][0], abs=TOL)


def test_get_reward_gives_the_aggregate_and_the_step_rewards(prm) -> None:
    url = prm["server"].url
    code, out = _post(f"{url}/get_reward", {"query": prm["texts"]})
    assert code == 200, out
    assert out["rewards"] == pytest.approx([r["reward"] for r in prm["rows"]], abs=TOL)
    assert out["scores"] == out["rewards"]
    for steps, row in zip(out["extra_logs"]["step_rewards"], prm["rows"]):
        assert steps == pytest.approx(row["step_rewards"], abs=TOL)
        assert min(steps) == pytest.approx(row["reward"], abs=TOL)  # the default aggregate, min
    # with OpenRLHF's prompts, a newline-separated response: the prompt is not a step
    query = PROMPT + "walk to the desk\nfly to the roof\n"
    code, out = _post(f"{url}/get_reward", {"query": [query], "prompts": [PROMPT]})
    assert code == 200 and len(out["extra_logs"]["step_rewards"][0]) == 2
    code, out = _post(f"{url}/get_reward", {"query": [query]})
    assert code == 200 and len(out["extra_logs"]["step_rewards"][0]) == 3  # without: the question line counts


def test_per_text_routes_and_bad_texts_are_refused(prm) -> None:
    url = prm["server"].url
    for route, body in (("/classify", {"input": prm["texts"][0]}),
                        ("/score", {"queries": PROMPT, "documents": ["walk to the desk ки"]})):
        code, out = _post(f"{url}{route}", body)
        assert code == 400 and "one per step" in out["error"] and "/pooling" in out["error"], out
    code, out = _post(f"{url}/pooling", {"input": ["walk ки", "no step at all"]})
    assert code == 400 and out["field"] == "input[1]" and "no step to score" in out["error"]
    code, out = _post(f"{url}/pooling", {"model": "other", "input": "walk ки"})
    assert code == 404


def test_kserve_gives_the_aggregate_per_text(prm) -> None:
    texts = prm["texts"]
    code, out = _post(f"{prm['server'].url}/v2/models/reward_model/infer", {"inputs": [
        {"name": "sentences", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]})
    assert code == 200, out
    (rewards,) = out["outputs"]
    assert rewards["shape"] == [len(texts), 1]
    assert rewards["data"] == pytest.approx([r["reward"] for r in prm["rows"]], abs=TOL)
