"""Tiny random Hugging Face models of each supported family, built with transformers, saved as
folders (config.json, model.safetensors, tokenizer files with a chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: A small chat template (ChatML-like) shipped with every tiny tokenizer.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
#: The families and the config of their tiny models (GQA: 2 key/value heads for 4 heads). Values the
#: importer has a fallback for (norm epsilon, rope factor) differ from that fallback, so reading the
#: wrong key cannot pass (tests/hf/test_hf_import.py checks each against config.json).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5),
    "llama3": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, max_position_embeddings=16384, rms_norm_eps=1e-5,
                   # Llama 3.2's factor 32, not 8.0: the importer's fallback must not pass for the real key
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                   rope_theta=500000.0),
    "mistral": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, sliding_window=None, rms_norm_eps=1e-5),
    "qwen2": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=3e-6),
    "qwen3": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=4e-6),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new", layer_norm_epsilon=2e-5),
}
VOCAB = 300  # config vocab_size: more rows than the tokenizer's 262 tokens (as Qwen2)


def tokenizer(bos: bool, eos: str = "</s>", pad: str | None = "<pad>") -> Any:
    """A byte-level tokenizer (ids 0-255 are bytes, then the specials) as transformers'
    ``PreTrainedTokenizerFast``; ``bos``: it prepends ``<s>`` like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from rm_registry.engine.hf._export import _bytes_to_unicode

    table = _bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", 256)])
    kwargs = {"bos_token": "<s>"} if bos else {}
    if pad is not None:
        kwargs["pad_token"] = pad
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, unk_token="<unk>", **kwargs)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(folder: Path, family: str, *, seq_cls: bool = True, num_labels: int = 1, seed: int = 0,
              pad: str | None = "<pad>", eos: str = "</s>", config_pad: bool = True, **extra: Any) -> Path:
    """Build a tiny random ``family`` model with transformers and save it (float32) with its tokenizer."""
    import torch
    import transformers as tf

    kind = {"llama3": "llama"}.get(family, family)
    config_cls = tf.AutoConfig.for_model(kind).__class__
    tok = tokenizer(bos=kind != "gpt2", eos=eos, pad=pad)
    ids = {"eos_token_id": tok.convert_tokens_to_ids(eos)}
    if config_pad and pad is not None:
        ids["pad_token_id"] = tok.convert_tokens_to_ids(pad)
    if kind != "gpt2":
        ids["bos_token_id"] = 256
    config = config_cls(vocab_size=VOCAB, num_labels=num_labels, **ids, **{**FAMILIES[family], **extra})
    if kind == "gpt2":
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    if num_labels > 1:
        config.id2label = {i: f"attr_{i}" for i in range(num_labels)}
        config.label2id = {f"attr_{i}": i for i in range(num_labels)}
    torch.manual_seed(seed)
    cls = tf.AutoModelForSequenceClassification if seq_cls else tf.AutoModelForCausalLM
    model = cls.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # visible norms and biases (random init leaves them 1 and 0)
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
