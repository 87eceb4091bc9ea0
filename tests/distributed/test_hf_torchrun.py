"""Hugging Face interop under real ``torchrun`` with tensor or pipeline parallelism 2 (gloo, 2 CPU
processes): scoring an HF folder equals transformers, and TP=2 and PP=2 runs from ``--pretrained``
export to the folder that a TP=1 run exports to (identical tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_torchrun import one, torchrun

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

TEXTS = ["hello world", "A longer text, with punctuation: yes!", "x", "four"]


def _texts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


def _scores(path: Path) -> list[float]:
    return [json.loads(line)["reward"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("layout", ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"],
                         ids=["TP=2", "PP=2"])
def test_tp2_and_pp2_score_an_hf_folder_like_transformers(tmp_path: Path, layout: str) -> None:
    from hf_models import save_tiny

    folder = save_tiny(tmp_path / "llama", "llama")  # 4 heads, 2 key/value heads: one group per rank
    data = _texts(tmp_path / "texts.jsonl")
    # PP=2: each stage imports its own layers (global layer numbers), the last one the head
    torchrun(f"score HF {layout}", "score", "--checkpoint", str(folder), "--data", str(data), "--output",
             str(tmp_path / "tp2.jsonl"), "--no-progress", layout)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        want = [float(model(torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]])).logits[0, 0]) for t in TEXTS]
    assert _scores(tmp_path / "tp2.jsonl") == pytest.approx(want, abs=1e-5)


def test_tp2_pretrained_run_exports_like_tp1(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from hf_models import save_tiny

    folder = save_tiny(tmp_path / "base", "qwen2", seq_cls=False)  # q/k/v biases, gated MLP split per rank
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"Q{i}", "chosen": " good", "rejected": " bad"}) + "\n"
                             for i in range(8)))
    # A vanishing learning rate: the steps run (forward, backward, optimizer under TP=2) but leave
    # every weight as imported, so both exports must be bit-identical to each other and to the base.
    common = ["train", "binary_ranking", "--pretrained", str(folder), "--data", str(prefs), "--no-progress",
              "model.micro_batch_size=2", "model.global_batch_size=4", "trainer.rm.max_steps=2", "seed=5",
              "model.optim.lr=1e-30", "model.optim.sched.min_lr=0.0"]
    torchrun("train --pretrained TP=2", *common, "--output", str(tmp_path / "tp2"), "model.tensor_model_parallel_size=2")
    torchrun("train --pretrained PP=2", *common, "--output", str(tmp_path / "pp2"), "model.pipeline_model_parallel_size=2")
    one("train --pretrained TP=1", *common, "--output", str(tmp_path / "tp1"))
    for run in ("tp2", "pp2", "tp1"):
        one(f"export {run} run", "export", "--checkpoint", str(tmp_path / run), "--output", str(tmp_path / f"hf-{run}"))
    b = load_file(tmp_path / "hf-tp1" / "model.safetensors")
    for run in ("tp2", "pp2"):
        a = load_file(tmp_path / f"hf-{run}" / "model.safetensors")
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), (run, [k for k in a if not torch.equal(a[k], b[k])])
    a = load_file(tmp_path / "hf-tp2" / "model.safetensors")
    base = load_file(folder / "model.safetensors")
    assert all(torch.equal(a[k], base[k]) for k in base if k != "lm_head.weight")
    assert json.loads((tmp_path / "hf-tp2" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf-tp1" / "config.json").read_text())
    # The TP=2 run's export scores like the TP=2 checkpoint under torchrun.
    data = _texts(tmp_path / "texts.jsonl")
    torchrun("score TP=2 run", "score", "--checkpoint", str(tmp_path / "tp2"), "--data", str(data), "--output",
             str(tmp_path / "run.jsonl"), "--no-progress", "model.tensor_model_parallel_size=2")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf-tp2", dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf-tp2")
    with torch.no_grad():
        want = [float(model(torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]])).logits[0, 0]) for t in TEXTS]
    assert _scores(tmp_path / "run.jsonl") == pytest.approx(want, abs=1e-4)
