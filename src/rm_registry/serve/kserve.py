"""KServe v2 / Triton inference protocol, as NeMo-Aligner's PyTriton reward clients and
``tritonclient.http`` call it.

- ``POST /v2/models/reward_model/infer``: BYTES input ``sentences`` of shape ``[N, 1]`` (JSON ``data``
  or Triton's binary tensor extension) → FP32 output ``rewards`` ``[N, 1]`` (``[N, K]`` for an
  architecture with K outputs: its raw head outputs, in the order of the ``attributes`` of
  ``rm-registry score``). The output is binary when the request asks for it (``binary_data`` on the
  output, or ``binary_data_output``, which ``tritonclient`` sets when no output is named).
- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/reward_model``
  (metadata), ``.../ready``, ``.../config``; each also under ``/versions/1``.

``reward_model`` is ``--served-model-name``.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from ._http import RequestError, parse_json_object, read_body, text_list
from ._service import Service, endpoint

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["routes"]

_INPUT = "sentences"
_OUTPUT = "rewards"
_HEADER = "inference-header-content-length"


def _model(request: Request) -> Service:
    service: Service = request.app.state.service
    name = request.path_params["model"]
    if name not in service.names:
        raise RequestError(404, "model", f"unknown model {name!r}; this server serves "
                                         f"{' / '.join(map(repr, service.names))}")
    version = request.path_params.get("version")
    if version not in (None, "1"):
        raise RequestError(404, "version", f"unknown version {version!r} of {name!r}; the only version is '1'")
    return service


def _split_body(request: Request, raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary part (Triton's binary tensor data extension)."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise RequestError(415, "Content-Encoding", f"{request.headers['content-encoding']!r} is not supported; "
                                                    "send the request uncompressed")
    declared = request.headers.get(_HEADER)
    if declared is None:
        return parse_json_object(raw), b""
    if not declared.isdigit() or int(declared) > len(raw):
        raise RequestError(400, "Inference-Header-Content-Length", f"{declared!r} is not a length within the "
                                                                   f"{len(raw)}-byte body")
    size = int(declared)
    return parse_json_object(raw[:size]), raw[size:]


def _decode_bytes(blob: bytes, field: str) -> list[str]:
    """BYTES tensor elements in Triton's binary form: each a 4-byte little-endian length, then the bytes."""
    out, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise RequestError(400, field, "binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise RequestError(400, field, f"binary element of {length} bytes runs past the end of the data")
        try:
            out.append(blob[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(400, field, "an element is not UTF-8 text") from None
        offset += length
    return out


def _flatten(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in _flatten(item, field)]


def _sentences(body: dict[str, Any], binary: bytes) -> list[str]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "inputs", f"expected a list with the input {_INPUT!r}")
    offset, found = 0, None
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}]", "expected an object with name, shape, datatype and data")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        blob = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(400, f"inputs[{i}].parameters.binary_data_size",
                                   f"{size!r} does not fit the {len(binary) - offset} binary bytes left")
            blob, offset = binary[offset : offset + size], offset + size
        if tensor.get("name") == _INPUT:
            found = (i, tensor, blob)
    if found is None:
        names = [t.get("name") for t in inputs]
        raise RequestError(400, "inputs", f"no input named {_INPUT!r} (got {names}); send the texts as a BYTES "
                                          f"tensor {_INPUT!r} of shape [N, 1]")
    i, tensor, blob = found
    where = f"inputs[{i}]"
    if tensor.get("datatype") != "BYTES":
        raise RequestError(400, f"{where}.datatype", f"{tensor.get('datatype')!r}; {_INPUT!r} must be BYTES")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape) or len(shape) not in (1, 2)
            or (len(shape) == 2 and shape[1] != 1)):
        raise RequestError(400, f"{where}.shape", f"{shape!r}; expected [N, 1]")
    if blob is not None:
        texts = _decode_bytes(blob, f"{where}.data")
    else:
        if "data" not in tensor:
            raise RequestError(400, f"{where}.data", "missing (and no binary_data_size)")
        texts = _flatten(tensor["data"], f"{where}.data")
    if len(texts) != shape[0]:
        raise RequestError(400, f"{where}.shape", f"{shape!r} but {len(texts)} elements were sent")
    return text_list(texts, f"{where}.data")


def _wants_binary(body: dict[str, Any]) -> bool:
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RequestError(400, "outputs", "expected a list of objects with a name")
        names = [o.get("name") for o in outputs]
        if any(n != _OUTPUT for n in names):
            raise RequestError(400, "outputs", f"unknown output in {names}; the only output is {_OUTPUT!r}")
        for o in outputs:
            if (o.get("parameters") or {}).get("binary_data"):
                return True
    params = body.get("parameters") or {}
    return bool(isinstance(params, dict) and params.get("binary_data_output"))


def _width(service: Any) -> int:
    """Values per text in ``rewards``: K, or 1 for a token-level model (its aggregate step reward)."""
    return 1 if service.runner.token_level else service.num_outputs


@endpoint
async def infer(request: Request) -> Response:
    from starlette.responses import JSONResponse, Response

    service = _model(request)
    body, binary = _split_body(request, await read_body(request, service.options.max_request_bytes))
    texts = _sentences(body, binary)
    binary_out = _wants_binary(body)
    results = await service.score(texts, "inputs.sentences")
    k = _width(service)
    # a process reward model: the configured aggregate of its step rewards, one per text
    flat = [r.reward for r in results] if service.runner.token_level else [v for r in results for v in r.values]
    output: dict[str, Any] = {"name": _OUTPUT, "datatype": "FP32", "shape": [len(results), k]}
    head: dict[str, Any] = {"model_name": service.name, "model_version": "1", "outputs": [output]}
    if isinstance(body.get("id"), str):
        head["id"] = body["id"]
    if not binary_out:
        output["data"] = flat
        return JSONResponse(head)
    blob = struct.pack(f"<{len(flat)}f", *flat)
    output["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps(head).encode()
    return Response(header + blob, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


@endpoint
async def model_metadata(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service = _model(request)
    return JSONResponse({"name": service.name, "versions": ["1"], "platform": "rm-registry",
                         "inputs": [_tensor(_INPUT, "BYTES", [-1, 1])],
                         "outputs": [_tensor(_OUTPUT, "FP32", [-1, _width(service)])]})


@endpoint
async def model_config(request: Request) -> Response:
    from starlette.responses import JSONResponse

    service = _model(request)
    return JSONResponse({"name": service.name, "platform": "rm-registry", "backend": "rm-registry",
                         "max_batch_size": 0,
                         "input": [{"name": _INPUT, "data_type": "TYPE_STRING", "dims": [-1, 1]}],
                         "output": [{"name": _OUTPUT, "data_type": "TYPE_FP32", "dims": [-1, _width(service)]}]})


async def model_ready(request: Request) -> Response:
    from starlette.responses import Response

    try:
        service = _model(request)
    except RequestError as exc:
        from ._http import error_response

        return error_response(exc)
    return Response(status_code=200 if service.ready else 503)


async def server_live(request: Request) -> Response:
    from starlette.responses import Response

    return Response(status_code=200)


async def server_ready(request: Request) -> Response:
    from starlette.responses import Response

    return Response(status_code=200 if request.app.state.service.ready else 503)


async def server_metadata(request: Request) -> Response:
    from starlette.responses import JSONResponse

    from .._version import __version__

    return JSONResponse({"name": "rm-registry", "version": __version__, "extensions": ["binary_tensor_data"]})


def routes() -> list[Route]:
    from starlette.routing import Route

    out = [Route("/v2/health/live", server_live, methods=["GET"]),
           Route("/v2/health/ready", server_ready, methods=["GET"]),
           Route("/v2", server_metadata, methods=["GET"])]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        out += [Route(base, model_metadata, methods=["GET"]),
                Route(f"{base}/ready", model_ready, methods=["GET"]),
                Route(f"{base}/config", model_config, methods=["GET"]),
                Route(f"{base}/infer", infer, methods=["POST"])]
    return out
