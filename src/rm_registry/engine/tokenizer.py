"""Tokenizers: the built-in byte tokenizer and a local Hugging Face ``tokenizer.json``.

Both satisfy :class:`rm_registry.Tokenizer` (``vocab_size``, ``eos_id``, ``pad_id``, ``encode``,
``decode``). ``vocab_size`` is unpadded: the model pads its embedding table itself.

A checkpoint folder carries its tokenizer (:func:`tokenizer_to_dir` / :func:`tokenizer_from_dir`):
``rm_registry_tokenizer.json`` (library and special ids) plus, for Hugging Face, a copy of
``tokenizer.json``; so ``evaluate`` and ``score`` need only the folder.

A tokenizer read from a Hugging Face model folder (``--pretrained``, or an HF folder given to
``--checkpoint``) follows Hugging Face's rules (``hf_rules``): ``encode`` adds the tokenizer's own
special tokens (the BOS of Llama) as ``tokenizer(text)`` does, chat-message lists are rendered with
the folder's ``chat_template`` (see :func:`rm_registry.engine.data.encode_text`), and the pad id
is the model's ``pad_token_id``. See docs/pretrained.md for the pad/EOS rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .._errors import ConfigError
from .hf._config import CONFIG, read_config

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from .._protocol import Tokenizer

__all__ = [
    "LIBRARIES",
    "ByteTokenizer",
    "HFTokenizer",
    "folder_tokenizer",
    "load_tokenizer",
    "render_chat_template",
    "tokenizer_from_dir",
    "tokenizer_to_dir",
]

#: Accepted values of ``model.tokenizer.library``.
LIBRARIES = ("byte", "huggingface")
_HF_ALIASES = ("huggingface", "hf", "tokenizers")
META_FILE = "rm_registry_tokenizer.json"

# Special tokens tried, in order, when the tokenizer's config does not name them.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then EOS = 256 and PAD = 257 (``vocab_size`` 258). No download."""

    vocab_size: int = 258
    eos_id: int = 256
    pad_id: int = 257

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``, without special tokens."""
        return list(text.encode("utf-8"))

    def encode_plain(self, text: str) -> list[int]:
        """:meth:`encode` (bytes carry no special tokens)."""
        return list(text.encode("utf-8"))

    #: No beginning-of-sequence token.
    bos_id: int | None = None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of every text."""
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of the byte ids (special ids dropped, invalid UTF-8 replaced)."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258, eos_id=256, pad_id=257)"


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from a local ``tokenizer.json``.

    Args:
        path: ``tokenizer.json`` or a folder containing it (and optionally
            ``tokenizer_config.json`` / ``special_tokens_map.json`` naming ``eos_token`` and
            ``pad_token``).
        eos_token, pad_token: Override the special tokens (must be in the vocabulary).

    EOS comes from the explicit argument, then the config files, then well-known names
    (``</s>``, ``<|endoftext|>``...). PAD likewise, falling back to EOS (padding is never
    attended to nor pooled, so sharing the id is harmless).

    Raises:
        ConfigError: the path is missing, the file is not a tokenizer, or no EOS token is found.
    """

    def __init__(self, path: str | Path, *, eos_token: str | None = None, pad_token: str | None = None,
                 hf_rules: bool = False, chat_template: str | None = None, bos_token: str | None = None,
                 pad_id: int | None = None) -> None:
        from tokenizers import Tokenizer as _Tok

        p = Path(path).expanduser()
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(
                f"model.tokenizer.path={str(path)!r}: no tokenizer.json there; give a local "
                "tokenizer.json file or the folder that contains it"
            )
        try:
            self._tok = _Tok.from_file(str(file))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise ConfigError(f"{file}: not a Hugging Face tokenizers file ({exc})") from None
        self.path = file
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1 if vocab else 0
        named = self._configured_specials(file.parent)
        self.eos_token = self._pick(eos_token or named.get("eos_token"), _EOS_CANDIDATES, vocab, "eos")
        if self.eos_token is None:
            raise ConfigError(
                f"{file}: no end-of-sequence token found (tried tokenizer_config.json and "
                f"{', '.join(_EOS_CANDIDATES)}); the reward is read at EOS, so add one to the tokenizer"
            )
        self.pad_token = self._pick(pad_token or named.get("pad_token"), _PAD_CANDIDATES, vocab, "pad")
        self.eos_id: int = vocab[self.eos_token]
        self.pad_id: int = vocab[self.pad_token] if self.pad_token is not None else self.eos_id
        if pad_id is not None:  # the model's config.json pad_token_id: what HF pools by
            self.pad_id = int(pad_id)
            self.pad_token = self._tok.id_to_token(self.pad_id)
        #: Hugging Face's rules: special tokens added by ``encode``, chat template, EOS rule.
        self.hf_rules = bool(hf_rules)
        #: Jinja chat template (from ``tokenizer_config.json``) or ``None``.
        self.chat_template = chat_template if chat_template is not None else (
            named.get("chat_template") if hf_rules else None)
        self.bos_token = bos_token if bos_token is not None else named.get("bos_token")

    @staticmethod
    def _configured_specials(folder: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            f = folder / name
            if not f.is_file():
                continue
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            for key in ("eos_token", "pad_token", "bos_token", "chat_template"):
                content = _token_content(data.get(key))
                if content is not None:
                    out[key] = content
        jinja = folder / "chat_template.jinja"  # where recent transformers save it
        if "chat_template" not in out and jinja.is_file():
            out["chat_template"] = jinja.read_text(encoding="utf-8")
        return out

    def _pick(self, explicit: str | None, candidates: Sequence[str], vocab: dict[str, int], what: str) -> str | None:
        if explicit is not None:
            if explicit not in vocab:
                raise ConfigError(f"{self.path}: {what} token {explicit!r} is not in the vocabulary")
            return explicit
        return next((c for c in candidates if c in vocab), None)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: without special tokens, or, with ``hf_rules``, with those the
        tokenizer adds itself (``tokenizer(text)["input_ids"]`` of transformers)."""
        return list(self._tok.encode(text, add_special_tokens=self.hf_rules).ids)

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, whatever ``hf_rules`` says
        (``tokenizer(text, add_special_tokens=False)``: how TRL tokenizes the parts of a sample)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    @property
    def bos_id(self) -> int | None:
        """The id of :attr:`bos_token` (``None`` when the tokenizer names none)."""
        return None if self.bos_token is None else self.token_id(self.bos_token)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of every text, in one call the ``tokenizers`` library runs on every core
        (``TOKENIZERS_PARALLELISM=false`` keeps it on one)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=self.hf_rules)]

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation rendered with :attr:`chat_template`, as transformers'
        ``apply_chat_template(messages)`` gives them (the template writes the special tokens).

        Raises:
            ConfigError: no chat template, or the template fails on these messages.
        """
        if not self.chat_template:
            raise ConfigError(f"{self.path}: no chat_template in tokenizer_config.json")
        return list(self._tok.encode(render_chat_template(self.chat_template, messages, self), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens dropped."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))

    def token_id(self, token: str) -> int | None:
        """The id of one token string (``None`` when it is not in the vocabulary)."""
        found = self._tok.token_to_id(token)
        return None if found is None else int(found)

    def id_to_token(self, token_id: int) -> str | None:
        """The string of one token id."""
        return self._tok.id_to_token(int(token_id))

    def to_str(self) -> str:
        """The tokenizer as ``tokenizer.json`` text."""
        return str(self._tok.to_str())

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id})"


def render_chat_template(template: str, messages: Sequence[dict[str, Any]], tokenizer: HFTokenizer) -> str:
    """Render ``messages`` with a Hugging Face Jinja chat template, as transformers does
    (sandboxed Jinja, ``trim_blocks``/``lstrip_blocks``, ``add_generation_prompt=False``).

    Raises:
        ConfigError: the template is invalid or raises on these messages.
    """
    from datetime import datetime

    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=False, bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token or "")
    except TemplateError as exc:
        raise ConfigError(f"{tokenizer.path}: the chat template failed on a conversation: {exc}") from None


def load_tokenizer(cfg: DictConfig) -> Tokenizer:
    """The tokenizer named by ``cfg.model.tokenizer.{library, path}``.

    Raises:
        ConfigError: unknown library, or a missing path for ``huggingface``.
    """
    from omegaconf import OmegaConf

    library = str(OmegaConf.select(cfg, "model.tokenizer.library", default="byte")).lower()
    path = OmegaConf.select(cfg, "model.tokenizer.path", default=None)
    pretrained = OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None)
    if pretrained and library in _HF_ALIASES and path and Path(path) == Path(pretrained):
        return folder_tokenizer(pretrained)
    if library == "byte":
        return ByteTokenizer()
    if library in _HF_ALIASES:
        if not path:
            raise ConfigError(
                "model.tokenizer.path is required with model.tokenizer.library=huggingface "
                "(a local tokenizer.json or its folder)"
            )
        return HFTokenizer(path)
    raise ConfigError(f"model.tokenizer.library={library!r}: expected one of {', '.join(LIBRARIES)}")


def folder_tokenizer(folder: str | Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face folder, with Hugging Face's rules (``hf_rules``): special
    tokens as ``tokenizer(text)``, its chat template, and the pad id ``config.json`` pools by.

    Pad id: ``config.json``'s ``pad_token_id``, else the tokenizer's pad token, else well-known pad
    names, else EOS (then no EOS is appended to texts: see docs/pretrained.md).

    Raises:
        ConfigError: no ``tokenizer.json`` (slow, sentencepiece-only tokenizers are not read).
    """
    p = Path(folder).expanduser()
    if not (p / "tokenizer.json").is_file():
        raise ConfigError(f"{p / 'tokenizer.json'}: missing; the folder needs a fast tokenizer file "
                          "(save one with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(...))")
    hf = read_config(p)
    pad = hf.get("pad_token_id")
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    tok = HFTokenizer(p, hf_rules=True, pad_id=pad if isinstance(pad, int) else None)
    if isinstance(pad, int) and not 0 <= pad < max(tok.vocab_size, int(hf.get("vocab_size") or 0)):
        raise ConfigError(f"{p / CONFIG}: pad_token_id={pad} is outside the vocabulary")
    return tok


def tokenizer_to_dir(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer`` into ``directory`` (created) so :func:`tokenizer_from_dir` rebuilds it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": int(tokenizer.eos_id),
        "pad_id": int(tokenizer.pad_id),
    }
    if isinstance(tokenizer, ByteTokenizer):
        meta["library"] = "byte"
    elif isinstance(tokenizer, HFTokenizer):
        meta.update(library="huggingface", eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
        if tokenizer.hf_rules:
            meta.update(hf_rules=True, chat_template=tokenizer.chat_template, bos_token=tokenizer.bos_token)
        (d / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    else:
        raise TypeError(
            f"cannot save a {type(tokenizer).__name__} into a checkpoint: only ByteTokenizer and "
            "HFTokenizer are supported"
        )
    (d / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return d


def tokenizer_from_dir(directory: str | Path) -> Tokenizer:
    """Rebuild the tokenizer saved by :func:`tokenizer_to_dir`.

    Raises:
        ConfigError: the folder or its files are missing or inconsistent (naming the file).
    """
    d = Path(directory)
    meta_file = d / META_FILE
    if not meta_file.is_file():
        raise ConfigError(f"{meta_file}: missing; {d} does not hold a saved tokenizer")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{meta_file}: malformed JSON ({exc})") from None
    library = meta.get("library")
    tok: Tokenizer
    if library == "byte":
        tok = ByteTokenizer()
    elif library == "huggingface":
        tok = HFTokenizer(d / "tokenizer.json", eos_token=meta.get("eos_token"), pad_token=meta.get("pad_token"),
                          hf_rules=bool(meta.get("hf_rules", False)), chat_template=meta.get("chat_template"),
                          bos_token=meta.get("bos_token"), pad_id=meta.get("pad_id") if meta.get("hf_rules") else None)
    else:
        raise ConfigError(f"{meta_file}: library={library!r}, expected one of {', '.join(LIBRARIES)}")
    for key in ("vocab_size", "eos_id", "pad_id"):
        if key in meta and int(getattr(tok, key)) != int(meta[key]):
            raise ConfigError(f"{meta_file}: {key}={meta[key]} but the rebuilt tokenizer has {getattr(tok, key)}")
    return tok
