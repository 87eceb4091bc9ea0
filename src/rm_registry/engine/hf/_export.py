"""Export: a checkpoint (any plugin, any tensor-parallel layout) -> a Hugging Face
``*ForSequenceClassification`` folder, or ``*ForTokenClassification`` for a token-level plugin
(one that reads its head at ``reward_positions`` and scores through ``score_sequences``: the head,
bias included, applies at every token, as transformers' token classifiers do).

The checkpoint is loaded in one process with tensor parallelism 1 (``dist_checkpointing``
reshards), so a TP=2 checkpoint exports to the same folder as TP=1. Written: ``model.safetensors``,
``config.json`` (``architectures``, ``num_labels`` via ``id2label``, ``problem_type: regression``,
``pad_token_id``, and an ``rm_registry`` section that lets ``--checkpoint`` restore the
architecture), ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and
``special_tokens_map.json``. Everything goes into a hidden temporary folder renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from ..._errors import ConfigError
from .. import _contract
from ..checkpoint._fs import publish_folder
from ..tokenizer import ByteTokenizer, HFTokenizer
from ._convert import to_hf
from ._family import Family, Rule
from ._config import CONFIG, META_KEY
from ._folder import family_of
from ._load import HEAD, shapes_of

if TYPE_CHECKING:  # pragma: no cover
    from ..api import LoadedRewardModel

__all__ = ["export_checkpoint", "export_model", "hf_folder_config", "byte_tokenizer_json"]

#: Keys of ``cfg.model`` recorded in ``config.json``'s ``rm_registry`` section (besides the plugin's own).
_KEPT = ("encoder_seq_length", "micro_batch_size", "force_head_dtype")
_BYTE_EOS, _BYTE_PAD = "<|endoftext|>", "<|pad|>"
#: The byte tokenizer's "role: content" rendering of conversations, as a chat template, EOS included.
BYTE_CHAT_TEMPLATE = ("{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
                      "{{ m['role'] }}: {{ m['content'] }}{% endfor %}{{ eos_token }}")


def _check_target(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output}: exists and is not an empty folder; export writes a new folder")
    from ..checkpoint._fs import check_output_dir

    check_output_dir(output)


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, distribution: str | None = None) -> Path:
    """Export a run or checkpoint folder to a new Hugging Face folder ``output``.

    Raises:
        ConfigError: ``output`` is not empty, no complete checkpoint, or the model has no exact
            Hugging Face form (the message names the config key or parameter).
    """
    output = Path(output)
    _check_target(output)
    from ..api import load_reward_model

    loaded = load_reward_model(checkpoint, distribution=distribution)
    return export_model(loaded, output)


def _fold_head_bias(state: dict[str, torch.Tensor], final_bias_key: str) -> None:
    """Fold a non-zero head bias into the final layernorm's bias: find ``d`` with ``W d = b`` (exact
    when ``W [K, H]`` has rank K), so that ``W (ln(x) + d) = W ln(x) + b``. The final hidden
    states feed only the head in ``*ForSequenceClassification``, so the scores are unchanged."""
    bias = state.pop("head.bias")
    if not bool(bias.abs().max() > 0):
        return
    weight = state["head.weight"]
    if final_bias_key not in state:
        raise ConfigError("the head has a bias and the final norm has none (RMSNorm) to fold it into; Hugging Face "
                          "heads have no bias: train with model.head_bias=false to export this model")
    if state[final_bias_key].dtype != torch.float32:
        raise ConfigError(f"the head has a bias, which can be folded exactly only in float32 weights (these are "
                          f"{state[final_bias_key].dtype}); train with model.head_bias=false to export this model")
    w, b = weight.double(), bias.double()
    delta = torch.linalg.lstsq(w, b.unsqueeze(-1)).solution.squeeze(-1)  # least-norm d with W d = b
    if not torch.allclose(w @ delta, b, rtol=0, atol=1e-9 * (1 + float(b.abs().max()))):
        raise ConfigError("the head's bias cannot be represented exactly without a bias (its weight rows are "
                          "linearly dependent); Hugging Face heads have no bias")
    state[final_bias_key] = (state[final_bias_key].double() + delta).to(state[final_bias_key].dtype)


def hf_folder_config(loaded: LoadedRewardModel, family: Family, vocab: int, k: int) -> dict[str, Any]:
    """``config.json`` of the exported folder."""
    m = loaded.cfg.model
    tok = loaded.tokenizer
    names = _contract.output_names(loaded.plugin, loaded.cfg, k)
    dtype = str(m.params_dtype)
    bos = getattr(tok, "bos_token", None)
    bos_id = tok.token_id(bos) if isinstance(tok, HFTokenizer) and bos else None
    plugin_section = OmegaConf.select(loaded.cfg, f"model.{loaded.plugin.name}", default=None)
    meta: dict[str, Any] = {"reward_model_type": loaded.plugin.name,
                            "model": {k2: OmegaConf.to_container(m, resolve=True)[k2] for k2 in _KEPT}}
    if plugin_section is not None:
        meta["model"][loaded.plugin.name] = OmegaConf.to_container(plugin_section, resolve=True)
    tokens = _contract.is_token_level(loaded.plugin)
    return {
        "architectures": [family.token_architecture if tokens else family.architecture],
        **family.hf_config(m),
        "vocab_size": vocab,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": "single_label_classification" if tokens and k > 1 else "regression",
        "pad_token_id": int(tok.pad_id),
        "eos_token_id": int(tok.eos_id),
        "bos_token_id": bos_id,
        "tie_word_embeddings": False,
        "dtype": dtype,
        "torch_dtype": dtype,
        "initializer_range": float(m.init_method_std),
        META_KEY: meta,
    }


def byte_tokenizer_json() -> str:
    """The byte tokenizer as a ``tokenizers`` file: ids 0-255 are the UTF-8 bytes, 256 EOS, 257 PAD,
    and ``tokenizer(text)`` appends EOS, exactly as the engine encodes a text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for bytes
    byte_to_char = _bytes_to_unicode()
    assert sorted(alphabet) == sorted(byte_to_char.values())
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([_BYTE_EOS, _BYTE_PAD])
    tok.post_processor = processors.TemplateProcessing(single=f"$A {_BYTE_EOS}", pair=f"$A $B {_BYTE_EOS}",
                                                       special_tokens=[(_BYTE_EOS, ByteTokenizer.eos_id)])
    return str(tok.to_str())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ``ByteLevel`` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _with_eos_postprocessor(tokenizer_json: str, eos: str, eos_id: int) -> str:
    """A tokenizer whose ``tokenizer(text)`` is ``encode(text) + [EOS]``, as the engine encodes texts
    for tokenizers that do not follow Hugging Face's rules (checkpoints from before ``hf_rules``)."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                                       special_tokens=[(eos, eos_id)])
    return str(tok.to_str())


def _tokenizer_files(loaded: LoadedRewardModel) -> dict[str, str]:
    tok = loaded.tokenizer
    max_len = int(loaded.cfg.model.encoder_seq_length)
    if isinstance(tok, ByteTokenizer):
        text, eos, pad, bos, template = byte_tokenizer_json(), _BYTE_EOS, _BYTE_PAD, None, BYTE_CHAT_TEMPLATE
    elif isinstance(tok, HFTokenizer):
        if tok.pad_id == tok.eos_id and not tok.hf_rules:
            raise ConfigError("the tokenizer's pad token is its EOS token: Hugging Face would skip the EOS the reward is "
                              "read at; retrain with a tokenizer that has a distinct pad token")
        eos, pad, bos = tok.eos_token, tok.pad_token, tok.bos_token
        if tok.hf_rules:
            text, template = tok.to_str(), tok.chat_template
        else:
            text, template = _with_eos_postprocessor(tok.to_str(), eos, tok.eos_id), BYTE_CHAT_TEMPLATE
    else:
        raise ConfigError(f"cannot export a {type(tok).__name__}: only the byte and Hugging Face tokenizers are")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
                              "model_max_length": max_len, "clean_up_tokenization_spaces": False,
                              "padding_side": "right"}
    special: dict[str, Any] = {"eos_token": eos, "pad_token": pad}
    if bos:
        config["bos_token"] = special["bos_token"] = bos
    if template:
        config["chat_template"] = template
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def check_exportable(m: Any, *, key: str | None = None) -> Family:
    """The family that ``cfg.model`` exports to; ConfigError naming the key that prevents it.

    ``key``: what asked for the export before training (``trainer.rm.save_hf=true``), named in the
    message; then a head bias that will not fold (RMSNorm, weights not float32) is refused too,
    which :func:`export_model` can only find out from the trained weights.
    """
    try:
        if m.output_sequence or m.use_avg_pool:
            which = "model.output_sequence" if m.output_sequence else "model.use_avg_pool"
            raise ConfigError(f"{which}=true: Hugging Face *ForSequenceClassification pools the last token only")
        family = family_of(m)
        if key is None:
            return family
        if m.get("head_bias") and m.get("normalization") == "RMSNorm":
            raise ConfigError("model.head_bias=true with model.normalization=RMSNorm: Hugging Face heads have no "
                              "bias and RMSNorm has none to fold it into; train with model.head_bias=false")
        if m.get("head_bias") and str(m.get("params_dtype")) != "float32":
            raise ConfigError(f"model.head_bias=true with model.params_dtype={m.get('params_dtype')}: the bias folds "
                              "exactly only into float32 weights; train with model.head_bias=false")
        return family
    except ConfigError as exc:
        if key is None:
            raise
        raise ConfigError(f"{key}: {exc}") from None


def export_model(loaded: LoadedRewardModel, output: str | Path) -> Path:
    """Write ``loaded`` (built with tensor parallelism 1) as a Hugging Face folder ``output``."""
    from safetensors.torch import save_file

    output = Path(output)
    _check_target(output)
    m = loaded.cfg.model
    if loaded.info.tp != 1 or loaded.info.world_size != 1:
        raise ConfigError("export runs in one process (tensor parallelism 1); run it without torchrun")
    family = check_exportable(m)
    model = loaded.model
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    k = int(state["head.weight"].shape[0])
    vocab = int(getattr(model, "vocab_size", loaded.tokenizer.vocab_size))
    shapes = shapes_of(OmegaConf.merge(loaded.cfg, {"model": {"vocab_size": vocab}}), k)  # type: ignore[arg-type]
    rules = family.rules(shapes, m)
    tokens = _contract.is_token_level(loaded.plugin)
    head_bias = state.pop("head.bias", None) if tokens else None
    if tokens:  # a token classifier's head has a bias of its own
        head_bias = torch.zeros(k, dtype=state["head.weight"].dtype) if head_bias is None else head_bias
    elif "head.bias" in state:
        _fold_head_bias(state, "backbone.decoder.final_layernorm.bias")
    unknown = sorted(set(state) - {r.ours for r in rules} - {"head.weight"})
    if unknown:
        raise ConfigError(f"parameter {unknown[0]!r} has no Hugging Face counterpart in the {family.name} table "
                          f"({len(unknown)} such); this plugin's model cannot be exported")
    tensors: dict[str, torch.Tensor] = {}
    head = f"{family.token_head}.weight" if tokens else HEAD
    for rule in [*rules, Rule("head.weight", (head,))]:
        for name, tensor in zip(rule.hf, to_hf(rule, state[rule.ours], shapes)):
            tensors[name if rule.ours == "head.weight" else family.prefix + name] = tensor.clone()
    if head_bias is not None:
        tensors[f"{family.token_head}.bias"] = head_bias.clone()
    files = _tokenizer_files(loaded)
    config = hf_folder_config(loaded, family, vocab, k)

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    publish_folder(output, fill)
    return output
