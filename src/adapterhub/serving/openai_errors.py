"""Errors of the OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, and
vLLM's ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``) in
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; the project's own routes keep
``{"detail": message}``.

Statuses on the OpenAI routes: 400 every invalid request (a malformed body included: FastAPI's 422 would make the
``openai`` client raise ``UnprocessableEntityError`` where users catch ``BadRequestError``), with code
``context_length_exceeded`` for a prompt that does not fit the context; 404 an unknown ``model`` (code
``model_not_found``, naming the available ones); 429 queue full (``Retry-After``); 502 an adapter's source failed;
503 shutting down.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/compositions",
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def is_openai(request: Request) -> bool:
    path = request.url.path.rstrip("/")
    return path in OPENAI_PATHS or path.startswith(("/v1/models/", "/v1/compositions/"))


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error = {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """OpenAI's shape on the OpenAI routes (where the project's 422 is a 400), ``{"detail"}`` elsewhere."""
    if is_openai(request):
        return openai_error(
            400 if status == 422 else status, message, param=param, code=code, headers=headers
        )
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def validation_error(error: RequestValidationError) -> JSONResponse:
    """A malformed body of an OpenAI route: 400 naming the first bad field (``param``) and what is wrong."""
    problems: list[str] = []
    param = None
    for item in error.errors():
        loc = [str(x) for x in item.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        param = param or (where if loc else None)
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    message = "Invalid request: " + "; ".join(problems[:5]) if problems else "Invalid request body."
    return openai_error(400, message, param=param, code="invalid_value")
