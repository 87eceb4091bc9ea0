"""The settings of ``rm-registry serve``, in one place: the command line's flags take their
defaults from :class:`ServeOptions`, so a default is written once. Cheap to import (the CLI builds
its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["ServeOptions"]


@dataclass(frozen=True)
class ServeOptions:
    """Settings of ``rm-registry serve`` (the command-line flags of the same names).

    Attributes:
        host: Interface to bind; loopback unless said otherwise.
        port: TCP port (0: any free port, printed at start).
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_batch_tokens: Padded tokens (texts x longest) per forward pass.
        max_padding_tokens: Optional cap on the padding tokens of a forward pass (``None``: batches
            are cut where the measured cost is least).
        max_wait_ms: How long an idle server waits for more texts before a forward pass.
        max_request_bytes: Largest request body accepted (413 above).
        batching: ``False``: one forward pass per request (no batching across requests).
        served_model_name: The model name of the vLLM and KServe routes (the one reported).
        aliases: Further names the server answers to (vLLM's further ``--served-model-name``
            values; by default the ``--checkpoint`` argument as given, as vLLM answers to its path).
        access_log: Log every request (uvicorn's access log).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_padding_tokens: int | None = None
    max_wait_ms: float = 5.0
    max_request_bytes: int = 16 * 1024 * 1024
    batching: bool = True
    served_model_name: str = "reward_model"
    aliases: tuple[str, ...] = ()
    access_log: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port={self.port}: expected 0..65535")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"--max-batch-tokens={self.max_batch_tokens}: expected a positive number")
        if self.max_padding_tokens is not None and self.max_padding_tokens < 0:
            raise ConfigError(f"--max-padding-tokens={self.max_padding_tokens}: expected a number >= 0")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms={self.max_wait_ms}: expected a number >= 0")
        if self.max_request_bytes < 1:
            raise ConfigError(f"--max-request-bytes={self.max_request_bytes}: expected a positive number")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key (or RM_REGISTRY_API_KEY) is empty; give a non-empty key or none")
        if not self.served_model_name or not all(self.aliases):
            raise ConfigError("--served-model-name is empty")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the server answers to, the reported one first (no repeats)."""
        return tuple(dict.fromkeys((self.served_model_name, *self.aliases)))
