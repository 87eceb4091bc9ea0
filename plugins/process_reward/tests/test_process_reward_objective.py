"""Loss, metrics and scoring: cross-entropy as TRL's token classification, BCE for soft labels, the
step / last-step accuracies and ProcessBench's first-error F1 over a whole set, aggregates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rm_process_reward import _objective


def _batch(rows_steps: list[int], labels: list[float]) -> dict[str, torch.Tensor]:
    points = [(r, 5 + i) for r, n in enumerate(rows_steps) for i in range(n)]
    return {"reward_positions": torch.tensor(points).reshape(-1, 2), "step_labels": torch.tensor(labels)}


def test_ce_loss_is_trls_cross_entropy_and_bce_is_binary(plugin, make_cfg) -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 2, requires_grad=True)
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1.0])
    batch = _batch([3, 4], labels.tolist())
    loss, metrics = plugin.loss(logits, batch, make_cfg())
    assert torch.allclose(loss, F.cross_entropy(logits, labels.long()))
    assert metrics["step_accuracy"] == pytest.approx(float((logits.argmax(-1) == labels.long()).float().mean()))
    one = torch.randn(7, 1, requires_grad=True)
    soft = torch.tensor([0.9, 0.1, 0.5, 1, 0, 0.25, 0.75])
    loss, _ = plugin.loss(one, _batch([3, 4], soft.tolist()), make_cfg("model.process_reward.loss=bce"))
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(one[:, 0], soft))
    loss.backward()
    # soft labels under ce: probability targets
    loss, _ = plugin.loss(logits, _batch([3, 4], soft.tolist()), make_cfg())
    assert torch.allclose(loss, F.cross_entropy(logits, torch.stack([1 - soft, soft], dim=1)))


def test_empty_batch_gives_zero_connected(plugin, make_cfg) -> None:
    rewards = torch.randn(3, 2, requires_grad=True)[:0]
    loss, metrics = plugin.loss(rewards, _batch([], []), make_cfg())
    assert float(loss.detach()) == 0 and loss.requires_grad and set(metrics) == {"step_accuracy"}


def _reference(solutions: list[tuple[list[bool], list[bool]]]) -> dict[str, float]:
    """ProcessBench's rule, written out: the first wrong step (-1: none), predicted vs gold."""
    def first(flags: list[bool]) -> int:
        return next((i for i, ok in enumerate(flags) if not ok), -1)

    err = [first(p) == first(g) for p, g in solutions if first(g) >= 0]
    ok = [first(p) == -1 for p, g in solutions if first(g) < 0]
    a, b = sum(err) / len(err), sum(ok) / len(ok)
    steps = [(x, y) for p, g in solutions for x, y in zip(p, g)]
    return {"step_accuracy": sum(x == y for x, y in steps) / len(steps),
            "last_step_accuracy": sum(p[-1] == g[-1] for p, g in solutions) / len(solutions),
            "error_accuracy": a, "correct_accuracy": b, "first_error_f1": 2 * a * b / (a + b) if a + b else 0.0}


def test_metrics_over_a_set_equal_the_written_out_rule_whatever_the_batching(plugin, make_cfg) -> None:
    rng = torch.Generator().manual_seed(3)
    sizes = torch.randint(1, 6, (40,), generator=rng).tolist()
    gold = [(torch.rand(n, generator=rng) > 0.4).tolist() for n in sizes]
    gold = [[all(g[: i + 1]) for i in range(len(g))] for g in gold]  # first-error labels
    logits = torch.randn(sum(sizes), 2, generator=rng) * 2
    predicted = (logits.softmax(-1)[:, 1] >= 0.5).tolist()
    solutions, start = [], 0
    for g in gold:
        solutions.append((predicted[start : start + len(g)], g))
        start += len(g)
    labels = [float(y) for g in gold for y in g]
    cfg = make_cfg()
    whole = plugin.evaluation_metrics([(logits, _batch(sizes, labels))], cfg)
    cut, parts, start = 17, [], 0
    for chunk in (sizes[:cut], sizes[cut:]):
        n = sum(chunk)
        parts.append((logits[start : start + n], _batch(chunk, labels[start : start + n])))
        start += n
    split = plugin.evaluation_metrics(parts, cfg)
    want = _reference(solutions)
    for key, value in want.items():
        assert whole[key] == pytest.approx(value) and split[key] == pytest.approx(value), key
    assert whole["loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(labels).long())))
    assert whole["num_steps"] == sum(sizes) and whole["num_solutions"] == 40
    pos = sum(labels) / len(labels)
    assert whole["majority_step_accuracy"] == pytest.approx(max(pos, 1 - pos))
    assert plugin.evaluation_metrics([], cfg)["loss"] is None


@pytest.mark.parametrize(("how", "want"), [("min", 0.2), ("last", 0.5), ("prod", 0.9 * 0.2 * 0.5),
                                           ("mean", (0.9 + 0.2 + 0.5) / 3)])
def test_score_records_aggregate_step_rewards(plugin, make_cfg, how, want) -> None:
    p = torch.tensor([0.9, 0.2, 0.5, 0.7])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))], dim=1)  # softmax(.)[1] = p
    out = plugin.score_records(logits, [3, 1], make_cfg(f"model.process_reward.aggregate={how}"))
    assert out[0]["step_rewards"] == pytest.approx([0.9, 0.2, 0.5], abs=1e-6)
    assert out[0]["reward"] == pytest.approx(want, abs=1e-6) and out[1]["reward"] == pytest.approx(0.7, abs=1e-6)
    bce = plugin.score_records(torch.log(p / (1 - p))[:, None], [4], make_cfg("model.process_reward.loss=bce"))
    assert bce[0]["step_rewards"] == pytest.approx(p.tolist(), abs=1e-6)
    assert plugin.scalar_rewards(logits, make_cfg()).tolist() == pytest.approx(p.tolist(), abs=1e-6)
    assert math.isclose(_objective.step_rewards(logits)[0].item(), 0.9, abs_tol=1e-6)
