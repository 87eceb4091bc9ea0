"""Request plumbing shared by every dialect: body size limit, JSON parsing, field checks, errors
that name the field, and the Bearer-token gate.

Every error answer is JSON: ``{"error": "<field>: <what is wrong>", "field": "<field>"}`` (Triton's
clients read ``error``; the others show the body).
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable, MutableMapping

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import JSONResponse

__all__ = ["RequestError", "read_body", "read_json", "error_response", "text_list", "ApiKeyGate"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and the offending ``field`` (``""`` for the body)."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field


def error_response(exc: RequestError) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it exceeds ``limit`` bytes (checked on the declared
    ``Content-Length`` first, then while reading, for chunked bodies)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{declared} bytes, more than --max-request-bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body", f"more than --max-request-bytes={limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from raw bytes, or a 400 naming what is wrong with it."""
    if not raw.strip():
        raise RequestError(400, "body", "empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise RequestError(400, "body", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, "body", f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body", f"expected a JSON object, got {_kind(body)}")
    return body


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (size-limited)."""
    return parse_json_object(await read_body(request, limit))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def text_list(value: Any, field: str, *, allow_single: bool = False) -> list[str]:
    """A list of non-empty strings (or one string when ``allow_single``), else a 400 naming the field."""
    if allow_single and isinstance(value, str):
        value = [value]
    expected = "a string or a list of strings" if allow_single else "a list of strings"
    if not isinstance(value, list):
        raise RequestError(400, field, f"expected {expected}, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(400, f"{field}[{i}]", f"expected a string, got {_kind(item)}")
        if not item:
            raise RequestError(400, f"{field}[{i}]", "empty string; there is nothing to score")
    return value


def optional_bool(body: dict[str, Any], *names: str) -> bool | None:
    """The first of ``names`` present in ``body`` as a boolean (``null`` = absent), else a 400."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise RequestError(400, name, f"expected true or false, got {_kind(value)}")
        return value
    return None


class ApiKeyGate:
    """ASGI middleware: every HTTP route but ``open_paths`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, api_key: str,
                 open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                from starlette.responses import JSONResponse

                missing = "missing" if not given else "wrong"
                response = JSONResponse(
                    {"error": f"Authorization: {missing} API key; send the header 'Authorization: Bearer <key>'",
                     "field": "Authorization"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
