"""A listwise (Plackett-Luce) reward-model plugin, written against the documented contract only.

Not shipped: tests install it as the fake distribution ``rm-plackett-luce`` (entry point
``plackett_luce``) and drive it through the conformance kit, the CLI and torchrun. It uses what a
plugin beyond pairs needs: groups of varying size (``list_sizes [B]``), every optional protocol
member but ``resolve_config``, ``fit_group`` for the over-long policy, and a typed null default.

Data: one JSON object per line, ``{"prompt": ..., "responses": [best, ..., worst]}``, K >= 2
responses in ranked order, K varying per line. Score input: the same lines (or ``{"text": ...}``);
score output per line: ``{"rewards": [...], "ranking": [best index first]}``.

Shapes: B groups per batch, N = sum(list_sizes) sequences (group by group, in rank order).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rm_registry import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

__version__ = "0.3.0"
DATA = Path(__file__).with_name("data")
METRICS = ("loss", "top1_accuracy")


def _top_k(cfg: Any) -> int | None:
    return cfg.model.plackett_luce.top_k


def _groups(rewards: torch.Tensor, list_sizes: torch.Tensor) -> list[torch.Tensor]:
    """Rewards ``[N, 1]`` -> one ``[K_i]`` tensor per group."""
    sizes = [int(k) for k in list_sizes.tolist()]
    if sum(sizes) != rewards.shape[0]:
        raise ValueError(f"list_sizes {sizes} do not add up to the {rewards.shape[0]} reward rows")
    return list(rewards[:, 0].split(sizes)) if sizes else []


def _nll(group: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the ranking ``group[0] > group[1] > ...``."""
    import torch

    positions = len(group) - 1 if top_k is None else min(top_k, len(group) - 1)
    terms = [torch.logsumexp(group[i:], dim=0) - group[i] for i in range(positions)]
    return torch.stack(terms).sum() / max(positions, 1)


class PlackettLucePlugin:
    name = "plackett_luce"
    description = "Listwise reward model: Plackett-Luce likelihood of K ranked responses per prompt (test plugin)."
    evaluation_batch_keys = ("list_sizes",)

    @property
    def model_class(self) -> type:
        from rm_registry.engine import RewardModel

        return RewardModel

    def default_config(self) -> dict[str, Any]:
        return {
            "model": {"plackett_luce": {"top_k": None}},
            "trainer": {"rm": {"max_steps": 20, "val_check_interval": 10}},
        }

    def config_types(self) -> dict[str, Any]:
        return {"model.plackett_luce.top_k": int}

    def validate_config(self, cfg: DictConfig) -> None:
        top_k = _top_k(cfg)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"model.plackett_luce.top_k={top_k!r}: expected a positive whole number or null")

    def sample_data(self) -> Mapping[str, Path]:
        return {split: DATA / f"{split}.jsonl" for split in ("train", "validation") if (DATA / f"{split}.jsonl").is_file()}

    def build_datasets(self, data_paths: Mapping[str, str | Path | None], tokenizer: Any,
                       cfg: DictConfig) -> dict[str, Sequence[Any]]:
        from rm_registry.engine.data import DatasetStats, ListDataset, encode_text, fit_group, read_jsonl

        max_len, policy = int(cfg.model.encoder_seq_length), str(cfg.model.data.overlong_policy)
        out: dict[str, Sequence[Any]] = {}
        for split, path in data_paths.items():
            if path is None:
                continue
            stats, groups = DatasetStats(), []
            for line, record in read_jsonl(path):
                stats.read += 1
                texts = _record_texts(record, path=str(path), line=line, need_list=True)
                keys = [f"responses[{i}]" for i in range(len(texts))]
                fitted, cut = fit_group([encode_text(tokenizer, t) for t in texts], keys, max_len, policy,
                                        eos_id=tokenizer.eos_id, path=path, line=line)
                if fitted is None:
                    stats.dropped += 1
                    continue
                stats.kept += 1
                stats.truncated += int(cut)
                groups.append(fitted)
            out[split] = ListDataset(groups, stats, str(path))
        return out

    def collate(self, samples: Sequence[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
        import torch
        from rm_registry.engine.data import pad_batch

        tokens, lengths = pad_batch([seq for group in samples for seq in group], pad_id)
        return {"tokens": tokens, "lengths": lengths,
                "list_sizes": torch.tensor([len(g) for g in samples], dtype=torch.long)}

    def metric_weight(self, batch: Mapping[str, Any], cfg: DictConfig) -> float:
        return float(batch["list_sizes"].numel())

    def loss(self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor],
             cfg: DictConfig) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        if batch["list_sizes"].device != rewards.device:  # the engine's rule: extras on the model's device
            raise AssertionError(f"list_sizes on {batch['list_sizes'].device}, rewards on {rewards.device}")
        groups = _groups(rewards, batch["list_sizes"])
        if not groups:
            return rewards.sum() * 0.0, dict.fromkeys(METRICS, 0.0)
        losses = torch.stack([_nll(g, _top_k(cfg)) for g in groups])
        top1 = float(sum(int(torch.argmax(g.detach()) == 0) for g in groups)) / len(groups)
        return losses.mean(), {"loss": float(losses.detach().mean()), "top1_accuracy": top1}

    def evaluation_metrics(self, outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
                           cfg: DictConfig) -> dict[str, Any]:
        import torch

        for _, batch in outputs:
            if "tokens" in batch:
                raise AssertionError("evaluation_metrics got 'tokens', which evaluation_batch_keys leaves out")
        groups = [g for rewards, batch in outputs for g in _groups(rewards.float(), batch["list_sizes"])]
        if not groups:
            return {"loss": None, "top1_accuracy": None, "num_groups": 0}
        losses = torch.stack([_nll(g, _top_k(cfg)) for g in groups])
        top1 = sum(int(torch.argmax(g) == 0) for g in groups) / len(groups)
        return {"loss": float(losses.mean()), "top1_accuracy": top1, "num_groups": len(groups)}

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        return [{"reward": float(r)} for r in rewards[:, 0].tolist()]

    def score_texts(self, record: Mapping[str, Any], *, path: str, line: int) -> list[str]:
        return _record_texts(record, path=path, line=line, need_list=False)

    def score_records(self, rewards: torch.Tensor, group_sizes: Sequence[int], cfg: DictConfig) -> list[dict[str, Any]]:
        out, start = [], 0
        for size in group_sizes:
            values = [float(r) for r in rewards[start : start + size, 0].tolist()]
            start += size
            out.append({"rewards": values, "ranking": sorted(range(size), key=lambda i: -values[i])})
        return out


def _record_texts(record: Mapping[str, Any], *, path: str, line: int, need_list: bool) -> list[str]:
    from rm_registry.engine.data import join_prompt_response, render_text

    if "responses" not in record:
        if not need_list and "text" in record:
            return [render_text(record["text"], path=path, line=line, key="text")]
        raise DataError(path, line, f"expected 'prompt' and a list 'responses' (best first); found {sorted(record)}")
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < (2 if need_list else 1):
        raise DataError(path, line, "'responses' must be a list of at least 2 responses, best first")
    return [join_prompt_response(record.get("prompt", ""), r, path=path, line=line, response_key=f"responses[{i}]")
            for i, r in enumerate(responses)]


def make_sample_data(folder: Path, *, train: int = 48, validation: int = 12, seed: int = 3) -> dict[str, Path]:
    """Ranked lists of 2 to 4 responses: more courteous and on-topic ranks higher (learnable)."""
    rng = random.Random(seed)
    topics = ["tea", "rust", "tides", "bread", "chess", "maps", "owls", "glass", "kites", "jazz", "ferns", "clay"]
    tiers = ["Thanks for asking! Here is a clear answer about {t}.", "Sure, about {t}: it depends.",
             "{t}? whatever.", "no"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", train), ("validation", validation)):
        lines = []
        for i in range(n):
            topic = rng.choice(topics)
            k = rng.randint(2, 4)
            chosen = sorted(rng.sample(range(4), k))
            lines.append(json.dumps({"prompt": f"User: tell me about {topic} ({split} {i})\nAssistant: ",
                                     "responses": [tiers[j].format(t=topic) for j in chosen]}))
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


plugin = PlackettLucePlugin()
