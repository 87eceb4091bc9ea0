"""NeMo-Aligner compatibility: the stock training_rm.yaml, Hydra overrides, data_prefix forms,
recomputation mapping, the constant_steps schedule, validation limits and top-k checkpoints.

Fast tests (no training); the end-to-end runs are in tests/test_nemo_aligner_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rm_registry import ConfigError, get_reward_model
from rm_registry.engine.config._nemo_compat import NEMO_KEYS, recompute_options
from rm_registry.engine.data._splits import _blend_order, build_split_datasets, normalize_prefix
from rm_registry.engine.checkpoint._topk import keep_top_k
from rm_registry.engine.config import build_config

STOCK = Path(__file__).parents[1] / "fixtures" / "nemo_aligner" / "training_rm.yaml"


def _cfg(name: str = "regression", *overrides: str, config: Path | None = STOCK, report: bool = False):
    """The config of ``name`` from ``config`` (the stock yaml says binary_ranking: rm.sh overrides it)."""
    typed = [f"model.reward_model_type={name}"] if config is not None else []
    return build_config(get_reward_model(name), config_file=config, overrides=[*typed, *overrides], report=report)


@pytest.mark.parametrize("name", ["binary_ranking", "regression"])
def test_stock_yaml_accepted_with_one_warning_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(name, report=True)
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning:")]
    assert len(warnings) == 1, err
    for key in ("trainer.devices", "model.megatron_amp_O2", "model.optim.bucket_cap_mb", "exp_manager.name"):
        assert key in warnings[0]
    # mapped keys are said once each, and they took effect
    assert "NeMo-Aligner key trainer.precision=bf16 -> trainer.precision=bf16-mixed" in err  # NeMo trains bf16 mixed
    assert ("NeMo-Aligner key model.optim.name=distributed_fused_adam -> model.optim.name=adamw, "
            "model.optim.use_distributed_optimizer=true") in err
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.params_dtype == "float32"  # float32 main weights
    assert cfg.model.optim.name == "adamw" and cfg.model.optim.use_distributed_optimizer is True
    # keys that are ours do what they did in NeMo-Aligner
    assert cfg.model.optim.sched.constant_steps == 1000 and cfg.model.optim.lr == 9e-6
    assert cfg.trainer.rm.limit_val_batches == 1.0 and cfg.trainer.rm.val_random_sampler is False
    assert cfg.exp_manager.explicit_log_dir == "/results" and cfg.exp_manager.checkpoint_callback_params.save_top_k == 3
    assert cfg.model.max_position_embeddings == 4096 and cfg.seed == 1234


def test_nemo_model_seed_is_the_run_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """NeMo-Aligner's model.seed, at a value other than the stock 1234 (which is also our default)."""
    cfg = _cfg("binary_ranking", "model.seed=4242", report=True)
    assert cfg.seed == 4242 and "seed" not in cfg.model
    assert "NeMo-Aligner key model.seed=4242 -> seed=4242" in capsys.readouterr().err


def test_regression_section_of_stock_yaml_ignored_for_binary_ranking(capsys: pytest.CaptureFixture[str]) -> None:
    _cfg("binary_ranking", report=True)
    assert "model.regression.loss_func" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["binary_ranking", "regression"])
def test_load_rm_head_weights_becomes_the_pretrained_head_choice(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """NeMo-Aligner's model.regression.load_rm_head_weights (in its config for every type) decides
    whether a --pretrained folder's head is loaded; the stock yaml's False draws a new one."""
    assert _cfg(name, report=True).pretrained_checkpoint.load_rm_head_weights is False
    assert ("NeMo-Aligner key model.regression.load_rm_head_weights=False -> "
            "pretrained_checkpoint.load_rm_head_weights=False") in capsys.readouterr().err
    cfg = _cfg(name, "model.regression.load_rm_head_weights=True")
    assert cfg.pretrained_checkpoint.load_rm_head_weights is True and "load_rm_head_weights" not in cfg.model.get(
        "regression", {})
    assert _cfg(name, config=None).pretrained_checkpoint.load_rm_head_weights is None  # ours: the folder's, if any
    for config in (STOCK, None):
        with pytest.raises(ConfigError, match=r"pretrained_checkpoint.load_rm_head_weights='maybe'.*expected"):
            _cfg(name, "pretrained_checkpoint.load_rm_head_weights=maybe", config=config)


def test_trainer_max_time_sets_the_run_timer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NeMo-Aligner reads exp_manager.max_time_per_run, which follows ${trainer.max_time} (in its
    stock yaml and in our defaults) unless it is set itself."""
    from rm_registry.engine.config import max_time_seconds

    assert _cfg("regression", report=True).exp_manager.max_time_per_run is None
    assert "max_time" not in capsys.readouterr().err  # ours: nothing to say
    assert _cfg("regression", "trainer.max_time=00:03:55:00").exp_manager.max_time_per_run == "00:03:55:00"
    assert _cfg("regression", "exp_manager.max_time_per_run=00:00:30:00").exp_manager.max_time_per_run == "00:00:30:00"
    both = _cfg("regression", "exp_manager.max_time_per_run=00:00:30:00", "trainer.max_time=00:04:00:00")
    assert both.exp_manager.max_time_per_run == "00:00:30:00"  # set itself: it no longer follows
    cfg = _cfg("binary_ranking", "trainer.max_time={hours: 4}", config=None)
    assert OmegaConf.to_container(cfg.exp_manager.max_time_per_run) == {"hours": 4} and max_time_seconds(cfg) == 14400
    four_hours = tmp_path / "four.yaml"
    four_hours.write_text(STOCK.read_text().replace("  max_time: null", '  max_time: "00:04:00:00"', 1))
    assert _cfg("regression", config=four_hours).exp_manager.max_time_per_run == "00:04:00:00"
    assert _cfg("regression", "trainer.max_time=null", config=four_hours).exp_manager.max_time_per_run is None
    with pytest.raises(ConfigError, match=r"trainer.max_time='4h' \(exp_manager.max_time_per_run follows it\): expected"):
        _cfg("regression", "trainer.max_time=4h")
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text("exp_manager:\n  max_time_per_run: ${trainer.no_such_key}\n")
    with pytest.raises(ConfigError, match=r"exp_manager.max_time_per_run='\$\{trainer.no_such_key\}'"):
        _cfg("regression", config=dangling)


def test_runs_saved_with_the_regression_head_flag_still_load() -> None:
    """Regression runs saved while the flag lived in the plugin's section read back (and resume)
    as today's config."""
    from rm_registry.engine.config import load_saved_config, to_yaml

    cfg = _cfg("regression", config=None)
    old = OmegaConf.to_container(cfg, resolve=True)
    old["model"]["regression"]["load_rm_head_weights"] = False
    old.pop("pretrained_checkpoint")
    loaded = load_saved_config(OmegaConf.to_yaml(OmegaConf.create(old)), "old/config.yaml")
    assert "load_rm_head_weights" not in loaded.model.regression
    assert loaded.model == cfg.model and loaded.pretrained_checkpoint.load_rm_head_weights is None
    get_reward_model("regression").validate_config(loaded)
    assert load_saved_config(to_yaml(cfg), "new/config.yaml").model == cfg.model


def test_unknown_key_that_is_not_nemo_stays_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'model.no_such_key'"):
        _cfg("regression", "++model.no_such_key=1")


@pytest.mark.parametrize("override, reason", [
    ("++model.data.reset_position_ids=True", "position ids are never reset"),
    ("model.data.data_impl=mmap", "only JSON Lines"),
    ("model.data.splits_string='98,1,1'", "give each split its own file"),
    ("model.mcore_gpt=False", "megatron-core"),
    ("exp_manager.resume_from_checkpoint=/x/last.ckpt", "--resume"),
    ("++model.data.seq_length=512", "differs from model.encoder_seq_length"),
])
def test_result_changing_nemo_values_refused(override: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        _cfg("regression", override)


def test_nemo_file_points_to_hf_import() -> None:
    with pytest.raises(ConfigError, match=r"\.nemo files are not read yet.*--pretrained"):
        _cfg("regression", "pretrained_checkpoint.restore_from_path=/models/tiny.nemo")


def test_every_rule_has_a_reason() -> None:
    assert all(rule.why for rule in NEMO_KEYS.values())


# --- Hydra override syntax ---------------------------------------------------------------------

def test_hydra_prefixes() -> None:
    cfg = _cfg("regression", "++model.tensor_model_parallel_size=1", "+model.regression.loss_mask_val=-1",
               "~model.optim.lr", "exp_manager.explicit_log_dir='runs/a [b]'", config=None)
    assert cfg.model.regression.loss_mask_val == -1
    assert cfg.model.optim.lr == 3e-3  # ~key: back to the plugin's default
    assert cfg.exp_manager.explicit_log_dir == "runs/a [b]"  # quoted: a string, as in Hydra


def test_hydra_plus_refuses_a_key_the_file_sets() -> None:
    with pytest.raises(ConfigError, match=r"already set.*\+\+model.optim.lr"):
        _cfg("regression", "+model.optim.lr=1e-4")


def test_hydra_lists_dicts_and_sweeps() -> None:
    cfg = _cfg("regression", "model.data.data_prefix={train: [a.jsonl, b.jsonl], validation_hard: c.jsonl}",
               "model.optim.betas=[0.9,0.95]")
    assert list(cfg.model.data.data_prefix.train) == ["a.jsonl", "b.jsonl"]
    assert cfg.model.data.data_prefix.validation_hard == "c.jsonl"
    assert list(cfg.model.optim.betas) == [0.9, 0.95]
    with pytest.raises(ConfigError, match="sweeps"):
        _cfg("regression", "model.optim.lr=1e-4,1e-5")
    with pytest.raises(ConfigError, match="value is not valid"):
        _cfg("regression", "model.optim.betas=[0.9,")


def test_type_from_command_line_picks_the_architecture() -> None:
    with pytest.raises(ConfigError, match="architecture is 'binary_ranking'"):
        _cfg("binary_ranking", "model.reward_model_type=regression")


# --- data_prefix -------------------------------------------------------------------------------

def test_data_prefix_forms() -> None:
    assert normalize_prefix("train", "a.jsonl") == [(None, "a.jsonl")]
    assert normalize_prefix("train", ["a.jsonl", "b.jsonl"]) == [(None, "a.jsonl"), (None, "b.jsonl")]
    assert normalize_prefix("train", [0.7, "a.jsonl", 0.3, "b.jsonl"]) == [(0.7, "a.jsonl"), (0.3, "b.jsonl")]
    for bad in ([0.7, "a.jsonl", "b.jsonl"], [1, 2], [], [-1.0, "a.jsonl"], {"x": 1}):
        with pytest.raises(ConfigError, match="model.data.data_prefix.train"):
            normalize_prefix("train", bad)
    with pytest.raises(ConfigError, match="expected a mapping of splits"):
        _cfg("regression", "model.data.data_prefix=a.jsonl")


def test_blend_draws_in_proportion() -> None:
    order = _blend_order([10, 10], [0.75, 0.25])
    assert len(order) == 20
    assert sum(d == 0 for d, _ in order) == 15  # dataset 0 repeats from its start
    assert [i for d, i in order if d == 0][10:] == [0, 1, 2, 3, 4]
    assert {d for d, _ in order[:4]} == {0, 1}  # interleaved, not one file after the other


def test_split_lists_concatenate_through_the_plugin(tmp_path: Path) -> None:
    from rm_registry.engine.tokenizer import load_tokenizer

    rows = [{"text": f"t{i}", "label": [i % 5] * 5} for i in range(6)]
    for name, part in (("a", rows[:2]), ("b", rows[2:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    cfg = _cfg("regression", config=None)
    plugin = get_reward_model("regression")
    datasets, described = build_split_datasets(plugin, {"train": [a, b], "validation_x": [1.0, a, 1.0, b]},
                                               load_tokenizer(cfg), cfg)
    assert len(datasets["train"]) == 6 and datasets["train"].stats.read == 6
    assert [s.line for s in datasets["train"].samples] == [1, 2, 1, 2, 3, 4]
    assert len(datasets["validation_x"]) == 6 and described["validation_x"] == f"1 x {a} + 1 x {b}"


def test_limit_val_batches_values() -> None:
    from rm_registry.engine.trainer import _val_view

    assert _cfg("regression", "trainer.rm.limit_val_batches=0.5").trainer.rm.limit_val_batches == 0.5
    for bad in ("1.5", "0", "0.0", "true"):
        with pytest.raises(ConfigError, match="limit_val_batches"):
            _cfg("regression", f"trainer.rm.limit_val_batches={bad}")
    data = list(range(100))
    cfg = _cfg("regression", "model.global_batch_size=8", "trainer.rm.limit_val_batches=2")
    assert _val_view(data, cfg) == list(range(16))  # 2 global batches
    cfg = _cfg("regression", "trainer.rm.limit_val_batches=0.25", "trainer.rm.val_random_sampler=true")
    picked = _val_view(data, cfg)
    assert len(picked) == 25 and picked != list(range(25)) and picked == _val_view(data, cfg)
    assert _val_view(data, _cfg("regression")) is data


# --- memory, schedule, checkpoints -------------------------------------------------------------

def test_recompute_mapping() -> None:
    cfg = _cfg("regression")
    assert recompute_options(cfg) == {}
    cfg = _cfg("regression", "++model.activations_checkpoint_granularity=full",
               "++model.activations_checkpoint_method=block", "++model.activations_checkpoint_num_layers=2",
               "++model.num_layers=2")
    assert recompute_options(cfg) == {"recompute_granularity": "full", "recompute_method": "block",
                                      "recompute_num_layers": 2}
    cfg = _cfg("regression", "model.activations_checkpoint_granularity=selective",
               "model.activations_checkpoint_method=uniform")
    assert recompute_options(cfg) == {"recompute_granularity": "selective"}
    with pytest.raises(ConfigError, match="full recomputation needs uniform or block"):
        _cfg("regression", "model.activations_checkpoint_granularity=full")
    with pytest.raises(ConfigError, match="activations_checkpoint_num_layers=3"):
        _cfg("regression", "model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
             "model.activations_checkpoint_num_layers=3", "model.num_layers=2")


def test_sequence_parallel_is_on_only_with_tensor_parallelism_and_even_splits() -> None:
    from rm_registry.engine.config._checks import model_shape

    assert model_shape(_cfg("regression", "model.sequence_parallel=true")).sequence_parallel is False  # TP = 1
    on = _cfg("regression", "model.sequence_parallel=true", "model.tensor_model_parallel_size=2")
    assert model_shape(on).sequence_parallel is True
    assert model_shape(_cfg("regression", "model.tensor_model_parallel_size=2")).sequence_parallel is False
    # A longest batch of 63 tokens is padded to 64 for two ranks: past a learned table of 63 rows.
    with pytest.raises(ConfigError, match=r"encoder_seq_length=63 is padded to 64, above model.max_position_embeddings=63"):
        model_shape(_cfg("regression", "model.sequence_parallel=true", "model.tensor_model_parallel_size=2",
                         "model.encoder_seq_length=63"))


def test_recompute_reaches_megatron_and_keeps_gradients(parallel_info: object) -> None:
    import torch

    from rm_registry.engine import parallel
    from rm_registry.engine.model import build_transformer_config

    base = ("model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4")
    full = (*base, "model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform")
    tc = build_transformer_config(_cfg("regression", *full, config=None))
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "uniform", 1)
    plugin = get_reward_model("regression")
    tokens, lengths = torch.randint(0, 200, (2, 16)), torch.tensor([16, 9])
    grads = []
    for overrides in (base, full):
        parallel.manual_seed(1234)
        model = plugin.model_class.from_config(_cfg("regression", *overrides, config=None), vocab_size=260)
        model(tokens, lengths).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_constant_steps_hold_min_lr() -> None:
    import torch

    from rm_registry.engine.trainer import build_scheduler

    def lrs(*overrides: str, total: int = 10) -> list[float]:
        cfg = _cfg("regression", "model.optim.lr=1.0", "model.optim.sched.min_lr=0.1",
                   "model.optim.sched.warmup_steps=2", *overrides, config=None)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, cfg, total)
        out = []
        for _ in range(total):
            out.append(round(opt.param_groups[0]["lr"], 6))
            opt.step()
            sched.step()
        return out

    held = lrs("model.optim.sched.constant_steps=3")
    assert held[:2] == [0.5, 1.0] and held[2] == 1.0
    assert held[-3:] == [0.1, 0.1, 0.1] and held[-4] > 0.1  # decay over 5 steps, then hold
    assert lrs()[-1] > 0.1  # no hold: still decaying at the last step
    assert lrs("model.optim.sched.constant_steps=1000")[2:] == [0.1] * 8  # NeMo: no decay steps left


def test_top_k_keeps_best_and_latest(tmp_path: Path) -> None:
    cfg = _cfg("regression", "exp_manager.checkpoint_callback_params.save_top_k=2")
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)):
        saved = tmp_path / "checkpoints" / f"step_{step:07d}"
        saved.mkdir(parents=True)
        keep_top_k(tmp_path, saved, {"loss": loss}, cfg, enabled=True)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert left == ["step_0000002", "step_0000003", "step_0000004"]  # best two + the latest
    with pytest.raises(ConfigError, match="val_accuracy"):
        cfg = _cfg("regression", "exp_manager.checkpoint_callback_params.save_top_k=1",
                   "exp_manager.checkpoint_callback_params.monitor=val_acc")
        keep_top_k(tmp_path, saved, {"loss": 1.0, "accuracy": 0.5}, cfg, enabled=True)


def test_exp_manager_key_checks() -> None:
    for override, match in (("exp_manager.checkpoint_callback_params.save_top_k=0", "save_top_k"),
                            ("exp_manager.checkpoint_callback_params.mode=avg", "mode"),
                            ("exp_manager.checkpoint_callback_params.monitor=loss", "val_<metric>")):
        with pytest.raises(ConfigError, match=match):
            _cfg("regression", override)
    assert OmegaConf.select(_cfg("regression", config=None), "exp_manager.explicit_log_dir") is None
