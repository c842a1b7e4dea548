"""Reject invalid ToDo args of a txt2img/img2img API request with HTTP 422 before the WebUI starts the job.

The WebUI catches and only logs exceptions raised inside script callbacks, so a bad `args` list would run a
normal generation instead of failing. This is a plain ASGI middleware (no starlette import): it buffers the
request body, validates the "ToDo" entry of `alwayson_scripts`, and either answers 422 or hands the endpoint a
replay of the same body, which works on every Starlette version the WebUI has pinned (BaseHTTPMiddleware of
Starlette < 0.28 cannot pass a body it has read on to the endpoint).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .args import ToDoArgs, parse_script_args

SCRIPT_TITLE = "ToDo"
VALIDATED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")

_ERROR_PARTS = re.compile(r"invalid ([\w\[\]]+)\W.*?; allowed: (.*)$", re.DOTALL)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def validation_error(body: bytes, defaults: ToDoArgs | None = None) -> dict[str, str] | None:
    """The 422 body for a request whose ToDo args are invalid, or None when they are valid or absent.

    Bodies that are not JSON objects are left to FastAPI's own validation.
    """
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return None
    scripts = payload.get("alwayson_scripts") if isinstance(payload, dict) else None
    if not isinstance(scripts, dict):
        return None
    for name, entry in scripts.items():
        if name.lower() != SCRIPT_TITLE.lower() or not isinstance(entry, dict) or "args" not in entry:
            continue
        args = entry["args"]
        if not isinstance(args, list):
            return _error_body(ValueError(
                f"ToDo: invalid args={args!r}; allowed: a list of values in UI order, or [{{named fields}}]"
            ))
        try:
            parse_script_args(args, defaults)
        except ValueError as error:
            return _error_body(error)
    return None


def _error_body(error: ValueError) -> dict[str, str]:
    message = str(error)
    parts = _ERROR_PARTS.search(message)
    field, allowed = parts.groups() if parts else ("args", "")
    return {"error": "ToDoArgsError", "detail": message, "field": field, "allowed": allowed}


class ToDoRequestValidator:
    """ASGI middleware that answers 422 to txt2img/img2img requests with invalid ToDo args."""

    is_todo_request_validator = True

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 defaults: Callable[[], ToDoArgs] = ToDoArgs):
        self.app = app
        self.defaults = defaults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope.get("method") == "POST"
                and scope.get("path", "").rstrip("/").endswith(VALIDATED_PATHS)):
            await self.app(scope, receive, send)
            return
        body, last_message = await _read_body(receive)
        error = validation_error(body, self.defaults())
        if error is not None:
            await _send_json(send, 422, error)
            return
        replayed = [{"type": "http.request", "body": body, "more_body": False}]
        if last_message["type"] != "http.request":
            replayed.append(last_message)

        async def replay() -> Message:
            return replayed.pop(0) if replayed else await receive()

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> tuple[bytes, Message]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), message


async def _send_json(send: Send, status: int, content: dict[str, str]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
