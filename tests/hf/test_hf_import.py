"""Import of Hugging Face folders: tiny random models of every family built with transformers,
hidden states and rewards equal to transformers' (float32, 1e-5), the pad/EOS rule, chat
templates, and bad input refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from hf_models import FAMILIES

TEXTS = ["hello world", "A longer text, with punctuation: yes!", "x"]
TOL = 1e-5


def _hf(folder: Path) -> tuple[Any, Any]:
    import transformers as tf

    model = tf.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tf.AutoTokenizer.from_pretrained(folder)


def _hf_ids(tok: Any, text: str) -> list[int]:
    """The documented rule: tokenizer(text) plus EOS (unless EOS is the pad token)."""
    ids = list(tok(text)["input_ids"])
    return ids if tok.eos_token_id == tok.pad_token_id else [*ids, tok.eos_token_id]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hidden_states_and_rewards_equal_transformers(family: str, hf_folder: Callable[..., Path]) -> None:
    from rm_registry.engine import load_reward_model
    from rm_registry.engine.data import pad_batch

    folder = hf_folder(family)
    ours = load_reward_model(folder)
    model, tok = _hf(folder)
    ids = [_hf_ids(tok, t) for t in TEXTS]
    assert [ours.encode(t)[0] for t in TEXTS] == ids
    tokens, lengths = pad_batch(ids, tok.pad_token_id)
    with torch.no_grad():
        hidden = ours.model.hidden_states(tokens, lengths).transpose(0, 1)  # [N, S, H]
        attention = (torch.arange(tokens.shape[1])[None] < lengths[:, None]).long()
        ref = model.base_model(input_ids=tokens, attention_mask=attention).last_hidden_state
        for row, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(hidden[row, :n], ref[row, :n], atol=TOL, rtol=0)
        logits = model(input_ids=tokens, attention_mask=attention).logits  # right-padded batch, HF pooling
    rewards = torch.tensor([r["reward"] for r in ours.score(TEXTS)])
    torch.testing.assert_close(rewards, logits[:, 0], atol=TOL, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_imported_settings_are_the_folder_s_not_fallbacks(family: str, hf_folder: Callable[..., Path]) -> None:
    """Each setting the importer reads with a fallback equals config.json's own value."""
    from rm_registry.engine import load_reward_model

    folder = hf_folder(family)
    hf = json.loads((folder / "config.json").read_text())
    m = load_reward_model(folder).cfg.model
    eps = hf.get("rms_norm_eps", hf.get("layer_norm_epsilon"))
    assert m.layernorm_epsilon == pytest.approx(eps, rel=1e-9)
    assert m.max_position_embeddings == hf.get("max_position_embeddings", hf.get("n_positions"))
    if "rope_theta" in hf or "rope_parameters" in hf:
        theta = hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"]
        assert m.rotary_base == pytest.approx(theta)


def test_llama3_rope_scaling_imports_the_folder_s_own_frequencies(hf_folder: Callable[..., Path]) -> None:
    """The folder's rope_scaling.factor (32, as Llama 3.2's; not the 8.0 a fallback would give) and
    rope_theta reach the model: its rotary frequencies are transformers' (short texts barely see them)."""
    from rm_registry.engine import load_reward_model

    folder = hf_folder("llama3")
    ours = load_reward_model(folder)
    assert ours.cfg.model.rope_scaling_factor == 32.0 and ours.cfg.model.rotary_base == 500000.0
    model, _ = _hf(folder)
    theirs = model.base_model.rotary_emb.inv_freq
    torch.testing.assert_close(ours.model.backbone.rotary_pos_emb.inv_freq.float(), theirs.float(), rtol=1e-6, atol=0)


def test_score_cli_equals_transformers_with_chat_template(hf_folder: Callable[..., Path], tmp_path: Path,
                                                          cli: Callable[..., tuple[int, str]]) -> None:
    """`rm-registry score --checkpoint <HF folder>`: plain texts and a conversation rendered with the
    folder's chat template, scored like transformers' model(**tokenizer(...))."""
    folder = hf_folder("qwen2")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [{"text": TEXTS[0]}, {"prompt": chat[:1], "response": chat[1:]},
                                                          {"text": TEXTS[1]}]))
    code, err = cli("score", "--checkpoint", str(folder), "--data", str(data), "--output", str(tmp_path / "s.jsonl"),
                    "--no-progress")
    assert code == 0, err
    scored = [json.loads(line)["reward"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    model, tok = _hf(folder)
    chat_ids = tok.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert tok.decode(chat_ids).startswith("<|im_start|>user\nhi<|im_end|>")
    with torch.no_grad():
        want = [float(model(torch.tensor([ids])).logits[0, 0])
                for ids in (_hf_ids(tok, TEXTS[0]), list(chat_ids), _hf_ids(tok, TEXTS[1]))]
    assert scored == pytest.approx(want, abs=TOL)


def test_pad_equal_to_eos_cannot_shift_the_scored_token(hf_folder: Callable[..., Path]) -> None:
    """pad == EOS: transformers pools the rightmost non-pad token, so a trailing EOS would be skipped;
    we then append no EOS, and both score the same (last text) token. Batched HF scoring with
    padding agrees too."""
    from rm_registry.engine import load_reward_model

    folder = hf_folder("llama", pad="</s>", config_pad=True)
    ours = load_reward_model(folder)
    model, tok = _hf(folder)
    assert tok.pad_token_id == tok.eos_token_id == ours.tokenizer.pad_id == ours.tokenizer.eos_id
    enc = ours.encode(TEXTS[0])[0]
    assert enc == list(tok(TEXTS[0])["input_ids"]) and enc[-1] != tok.eos_token_id
    batch = tok([t + tok.eos_token for t in TEXTS], padding=True, return_tensors="pt")  # TRL-style EOS
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    rewards = torch.tensor([r["reward"] for r in ours.score(TEXTS)])
    torch.testing.assert_close(rewards, logits, atol=TOL, rtol=0)


def test_base_model_starts_training_with_its_weights(hf_folder: Callable[..., Path], tmp_path: Path) -> None:
    """`--pretrained` (= pretrained_checkpoint.restore_from_path) on a *ForCausalLM folder: the
    architecture, tokenizer and backbone come from the folder, the head is new and bias-free."""
    import transformers as tf

    from rm_registry import get_reward_model
    from rm_registry.engine import parallel
    from rm_registry.engine.config import build_config
    from rm_registry.engine.hf import load_hf_weights
    from rm_registry.engine.tokenizer import load_tokenizer

    folder = hf_folder("llama", seq_cls=False)
    plugin = get_reward_model("binary_ranking")
    cfg = build_config(plugin, overrides=[f"pretrained_checkpoint.restore_from_path={folder}"])
    assert (cfg.model.num_query_groups, cfg.model.normalization, cfg.model.head_bias) == (2, "RMSNorm", False)
    tok = load_tokenizer(cfg)
    assert tok.hf_rules and tok.chat_template and tok.pad_id != tok.eos_id
    parallel.initialize(tensor_model_parallel_size=1, seed=1)
    model = plugin.model_class.from_config(cfg, vocab_size=tok.vocab_size)
    assert not load_hf_weights(model, folder, cfg, load_head=None)
    assert model.head.bias is None and float(model.head.weight.detach().std()) > 0
    ref = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(TEXTS[1])])
    with torch.no_grad():
        ours = model.hidden_states(ids, torch.tensor([ids.shape[1]]))[:, 0]
        want = ref.model(ids).last_hidden_state[0]
    torch.testing.assert_close(ours, want, atol=TOL, rtol=0)
    with pytest.raises(Exception, match="contradicts"):
        build_config(plugin, overrides=[f"pretrained_checkpoint.restore_from_path={folder}", "model.hidden_size=64"])


@pytest.mark.parametrize("setting", ["null", "true", "false"])
def test_load_rm_head_weights_keeps_or_redraws_the_folders_head(setting: str, hf_folder: Callable[..., Path],
                                                               tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """--pretrained on a *ForSequenceClassification folder: its score head starts the run unless
    pretrained_checkpoint.load_rm_head_weights=false (NeMo-Aligner's model.regression key, mapped)
    draws a new one. One step of lr 1e-4 moves a weight by about 1e-4; a new draw by about 0.02."""
    from safetensors.torch import load_file

    from rm_registry.engine import load_reward_model

    folder = hf_folder("llama")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "q", "chosen": " good", "rejected": " bad"}\n' * 8)
    key = "model.regression.load_rm_head_weights" if setting == "false" else "pretrained_checkpoint.load_rm_head_weights"
    run = tmp_path / "run"
    code, err = cli("train", "binary_ranking", "--pretrained", str(folder), "--data", str(prefs), "--output", str(run),
                    "--no-progress", "trainer.rm.max_steps=1", "model.micro_batch_size=2", "model.global_batch_size=2",
                    "model.optim.lr=1e-4", "model.optim.sched.min_lr=0", f"{key}={setting}")
    assert code == 0, err
    head = load_reward_model(run).model.head.weight.detach()
    moved = float((head - load_file(folder / "model.safetensors")["score.weight"]).abs().max())
    if setting == "false":
        assert moved > 1e-2
    else:
        assert moved < 1e-3


def test_a_head_of_another_width_is_refused_with_the_way_out(hf_folder: Callable[..., Path], tmp_path: Path,
                                                            cli: Callable[..., tuple[int, str]]) -> None:
    """A one-output reward model starting a 5-attribute regression run: its head does not fit, and
    the message says how to start a new one; with load_rm_head_weights=false the run goes."""
    data = tmp_path / "reg.jsonl"
    data.write_text("".join(json.dumps({"text": f"User: {i}?\nAssistant: {i}.", "label": [i % 5, 4, 4, 1, 0]}) + "\n"
                            for i in range(8)))
    args = ["train", "regression", "--pretrained", str(hf_folder("llama")), "--data", str(data), "--no-progress",
            "trainer.rm.max_steps=1", "model.micro_batch_size=2", "model.global_batch_size=2"]
    code, err = cli(*args, "--output", str(tmp_path / "refused"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'score.weight' has shape [1, " in err and "pretrained_checkpoint.load_rm_head_weights=false" in err, err
    assert not (tmp_path / "refused").exists()
    code, err = cli(*args, "--output", str(tmp_path / "run"), "pretrained_checkpoint.load_rm_head_weights=false")
    assert code == 0, err


def test_load_rm_head_weights_true_on_a_base_model_is_refused(hf_folder: Callable[..., Path], tmp_path: Path,
                                                              cli: Callable[..., tuple[int, str]]) -> None:
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "q", "chosen": " good", "rejected": " bad"}\n' * 8)
    run = tmp_path / "run"
    code, err = cli("train", "binary_ranking", "--pretrained", str(hf_folder("llama", seq_cls=False)), "--data",
                    str(prefs), "--output", str(run), "--no-progress", "pretrained_checkpoint.load_rm_head_weights=true")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "load_rm_head_weights=true" in err and "LlamaForCausalLM" in err and "set it to false or null" in err
    assert not run.exists()
    code, err = cli("train", "binary_ranking", "--data", str(prefs), "--output", str(run), "--no-progress",
                    "trainer.rm.max_steps=1", "model.micro_batch_size=2", "model.global_batch_size=2",
                    "pretrained_checkpoint.load_rm_head_weights=true")
    assert code == 0, err  # no folder: nothing to load, said once
    assert err.count("load_rm_head_weights=true has no effect without --pretrained") == 1, err


def _broken(tmp_path: Path, folder: Path, edit: Callable[[Path], None]) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    edit(copy)
    return copy


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def _edit_tensors(drop: str | None = None, reshape: str | None = None) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        if drop:
            del tensors[drop]
        if reshape:
            tensors[reshape] = tensors[reshape][:-1].contiguous()
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return edit


def _grow_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(60)])  # 262 + 60 tokens > vocab_size 300
    tok.save(str(folder / "tokenizer.json"))


BAD = {
    "no config.json": (lambda f: (f / "config.json").unlink(), "config.json: missing"),
    "unknown model_type": (_edit_config(model_type="falcon"), "model_type='falcon' is not supported"),
    "unsupported activation": (_edit_config(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    "unsupported rope": (_edit_config(rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}),
                         "rope_parameters.rope_type='yarn' is not supported"),
    "short sliding window": (_edit_config(model_type="mistral", sliding_window=16), "sliding_window=16"),
    "missing tensor": (_edit_tensors(drop="model.layers.1.mlp.up_proj.weight"),
                       "'model.layers.1.mlp.up_proj.weight' is missing"),
    "mis-shaped tensor": (_edit_tensors(reshape="model.layers.0.self_attn.k_proj.weight"),
                          "'model.layers.0.self_attn.k_proj.weight' has shape [15, 32], expected [16, 32]"),
    "tokenizer too large": (_grow_tokenizer, "the tokenizer has 322 tokens but"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_exit_2_with_one_line(case: str, hf_folder: Callable[..., Path], tmp_path: Path,
                                          cli: Callable[..., tuple[int, str]]) -> None:
    edit, message = BAD[case]
    folder = _broken(tmp_path, hf_folder("llama"), edit)
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hi"}\n')
    out = tmp_path / "out.jsonl"
    code, err = cli("score", "--checkpoint", str(folder), "--data", str(data), "--output", str(out))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()
    if case != "no weights":  # --pretrained is refused at config time, before any run folder appears
        run = tmp_path / "run"
        prefs = tmp_path / "prefs.jsonl"
        prefs.write_text('{"prompt": "q", "chosen": " good", "rejected": " bad"}\n' * 8)
        code, err = cli("train", "binary_ranking", "--pretrained", str(folder), "--data", str(prefs),
                        "--output", str(run), "--no-progress")
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
        assert not run.exists()


def test_models_built_for_import_carry_the_tensor_parallel_attributes(parallel_info: Any) -> None:
    """Weights are not drawn when a pretrained folder will fill them, yet every parameter is marked
    as megatron-core marks it (gradient-norm accounting and the loader's slicing read the marks)."""
    from rm_registry import get_reward_model
    from rm_registry.engine.config import build_config

    plugin = get_reward_model("binary_ranking")
    marks = []
    for pretrained in (None, "some/folder"):
        cfg = build_config(plugin, overrides=["model.hidden_size=32"])
        cfg.pretrained_checkpoint.restore_from_path = pretrained
        model = plugin.model_class.from_config(cfg, vocab_size=258)
        marks.append({n: (getattr(p, "tensor_model_parallel", False), getattr(p, "partition_dim", None))
                      for n, p in model.named_parameters()})
    assert marks[0] == marks[1] and marks[0]["head.weight"] == (True, 1)


def test_configs_saved_before_the_backbone_options_load_as_the_same_model() -> None:
    """A run saved before these keys existed reads back with today's defaults (the original
    GPT-2-like model), so its checkpoints keep loading."""
    from omegaconf import OmegaConf

    from rm_registry.engine.config import engine_defaults, load_saved_config

    old = OmegaConf.to_container(engine_defaults(), resolve=True)  # as to_yaml saves
    new_keys = ("normalization", "layernorm_epsilon", "activation", "gated_linear_unit", "num_query_groups",
                "kv_channels", "add_bias_linear", "add_qkv_bias", "qk_layernorm", "rotary_base", "rotary_percent",
                "rope_scaling", "rope_scaling_factor", "head_bias", "vocab_size")
    for key in new_keys:
        del old["model"][key]
    del old["pretrained_checkpoint"]
    cfg = load_saved_config(OmegaConf.to_yaml(OmegaConf.create(old)), "old/config.yaml")
    m = cfg.model
    assert (m.normalization, m.activation, m.gated_linear_unit, m.add_bias_linear, m.head_bias, m.qk_layernorm) == (
        "LayerNorm", "gelu", False, True, True, False)
    assert m.num_query_groups is None and m.kv_channels is None and m.vocab_size is None


def _hub_snapshot(root: Path, folder: Path) -> Path:
    """``folder`` laid out as the Hugging Face hub cache stores a download: every file of
    ``models--org--tiny/snapshots/REV/`` a relative symlink to ``../../blobs/HASH``."""
    import hashlib

    repo = root / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    return snapshot


def test_hub_cache_snapshots_load_and_links_elsewhere_are_refused(
        hf_folder: Callable[..., Path], tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """A snapshot folder of the hub cache (symlinks into the repository's blobs) scores as the plain
    folder does and starts a --pretrained run; a weights link leading anywhere else is refused."""
    folder = hf_folder("llama")
    snapshot = _hub_snapshot(tmp_path / "hub", folder)
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    scores = {}
    for name, where in (("plain", folder), ("hub", snapshot)):
        code, err = cli("score", "--checkpoint", str(where), "--data", str(data), "--output",
                        str(tmp_path / f"{name}.jsonl"), "--no-progress")
        assert code == 0, err
        scores[name] = [json.loads(line)["reward"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert scores["hub"] == scores["plain"]

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "q", "chosen": " good", "rejected": " bad"}\n' * 8)
    code, err = cli("train", "binary_ranking", "--pretrained", str(snapshot), "--data", str(prefs), "--output",
                    str(tmp_path / "run"), "--no-progress", "trainer.rm.max_steps=1", "model.micro_batch_size=2",
                    "model.global_batch_size=2")
    assert code == 0, err

    elsewhere = tmp_path / "elsewhere"  # the weights link leads out of the hub repository
    elsewhere.mkdir()
    shutil.copyfile(snapshot / "model.safetensors", elsewhere / "model.safetensors")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    code, err = cli("score", "--checkpoint", str(snapshot), "--data", str(data), "--output",
                    str(tmp_path / "refused.jsonl"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "outside the model folder" in err, err
    assert "model.safetensors" in err and not (tmp_path / "refused.jsonl").exists()
