"""The bodies the embedding-api answers with: JSON replies, vectors in the requested encoding, and errors in the
shape of each API (vecsync's own, or OpenAI's under /v1/)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from fastapi import Response
from fastapi.exceptions import RequestValidationError

OPENAI_PREFIX = "/v1/"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # orjson writes numpy arrays natively and formats float32 in their shortest form: several times faster than
    # the standard library on a batch of vectors, and the request thread spends that time holding the GIL.
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(
    path: str,
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """An error in the shape of the route's API; ``extra`` fields go next to the message."""
    if path.startswith(OPENAI_PREFIX):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": None, "code": str(status), **(extra or {})}
        body: dict[str, Any] = {"error": error}
    else:
        body = {"detail": message, **(extra or {})}
    return json_response(body, status, headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """What is wrong with a request body, in words a client can act on."""
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            problems.append(f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON")
            continue
        if tuple(error["loc"]) == ("body",):
            problems.append("the body must be a JSON object (with Content-Type: application/json)")
            continue
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)


def vectors_in_format(vectors: np.ndarray, encoding_format: str) -> np.ndarray | list[str]:
    """The rows as they go into the reply: the array itself (orjson writes it), or base64 of each row."""
    if encoding_format == "float":
        return vectors
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
