"""Reject invalid ToDo args of a txt2img/img2img API request with HTTP 422 before the WebUI starts the job.

The WebUI catches and only logs exceptions raised inside script callbacks, so a bad `args` list would run a
normal generation instead of failing, and a bad ToDo key in the request's `infotext` field fails in the host's
own conversion (500) or is dropped. The check runs as a dependency of the txt2img/img2img routes, after the
WebUI's `--api-auth` dependency, and its exception is turned into the 422 by an exception handler of the app,
which sits inside the host's middleware (CORS, X-Process-Time, --api-log). FastAPI is imported only when the
check is installed; the same code runs on FastAPI 0.94/Starlette 0.26/pydantic 1 (AUTOMATIC1111 v1.10.1,
reForge) and FastAPI 0.104/Starlette 0.27/pydantic 2 (Forge).
"""

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .args import FIELDS, ToDoArgs, parse_script_args

SCRIPT_TITLE = "ToDo"
VALIDATED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")

_ERROR_PARTS = re.compile(r"invalid ([\w\[\]]+)\W.*?; allowed: (.*)$", re.DOTALL)

ParseInfotext = Callable[[str], Mapping[str, Any]]


class ToDoArgsRejected(Exception):
    """Raised by the route dependency; the app's exception handler answers it with `status_code` and `body`.

    `status_code` and `detail` also let the WebUI's own catch-all error middleware answer 422 should the handler
    be missing."""

    status_code = 422

    def __init__(self, body: dict[str, str]):
        super().__init__(body["detail"])
        self.body = body
        self.detail = body["detail"]


def validation_error(body: bytes, defaults: ToDoArgs | None = None,
                     parse_infotext: ParseInfotext | None = None) -> dict[str, str] | None:
    """The 422 body for a request whose ToDo args or `infotext` ToDo keys are invalid, or None when they are valid
    or absent. Bodies that are not JSON objects are left to FastAPI's own validation."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    defaults = defaults or ToDoArgs()
    infotext = payload.get("infotext")
    if isinstance(infotext, str) and infotext and parse_infotext is not None:
        try:
            defaults = _args_from_infotext(parse_infotext(infotext), defaults)
        except _InfotextKeyError as error:
            return error.body
        except ValueError as error:
            return _error_body(error)
    scripts = payload.get("alwayson_scripts")
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


class _InfotextKeyError(ValueError):
    def __init__(self, body: dict[str, str]):
        super().__init__(body["detail"])
        self.body = body


def _args_from_infotext(params: Mapping[str, Any], defaults: ToDoArgs) -> ToDoArgs:
    """`defaults` with every ToDo key of a request's infotext, as the WebUI will set the script args from them."""
    values = {}
    for spec in FIELDS:
        if spec.infotext_key not in params:
            continue
        raw = params[spec.infotext_key]
        try:
            values[spec.name] = spec.coerce(raw)
        except ValueError:
            detail = f"ToDo: invalid infotext key {spec.infotext_key!r}={raw!r}; allowed: {spec.allowed()}"
            raise _InfotextKeyError({"error": "ToDoArgsError", "detail": detail, "field": spec.infotext_key,
                                     "allowed": spec.allowed()}) from None
    return defaults.with_values(values)


def _error_body(error: ValueError) -> dict[str, str]:
    message = str(error)
    parts = _ERROR_PARTS.search(message)
    field, allowed = parts.groups() if parts else ("args", "")
    return {"error": "ToDoArgsError", "detail": message, "field": field, "allowed": allowed}


def install(app: Any, defaults: Callable[[], ToDoArgs], parse_infotext: ParseInfotext | None = None) -> int:
    """Add the check to the app's txt2img/img2img POST routes (once) and the handler for its exception; the
    number of routes newly checked.

    The dependency goes after the route's own dependencies (the WebUI's `--api-auth` check), so an unauthenticated
    request gets 401 whatever its body. It reads the body that FastAPI has already read and cached on the request.
    """
    from fastapi import Depends
    from fastapi.dependencies.utils import get_parameterless_sub_dependant
    from fastapi.responses import JSONResponse
    from starlette.requests import Request

    async def check_todo_args(request: Request) -> None:
        error = validation_error(await request.body(), defaults(), parse_infotext)
        if error is not None:
            raise ToDoArgsRejected(error)

    check_todo_args.is_todo_check = True

    async def answer_rejected(_request: Request, error: ToDoArgsRejected) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, content=error.body)

    added = 0
    for route in getattr(app, "routes", []):
        dependant = getattr(route, "dependant", None)
        if (dependant is None or getattr(route, "path", None) not in VALIDATED_PATHS
                or "POST" not in getattr(route, "methods", ())):
            continue
        if any(getattr(sub.call, "is_todo_check", False) for sub in dependant.dependencies):
            continue
        dependency = Depends(check_todo_args)
        route.dependencies.append(dependency)
        dependant.dependencies.append(get_parameterless_sub_dependant(depends=dependency, path=route.path_format))
        added += 1
    if ToDoArgsRejected not in app.exception_handlers:
        app.add_exception_handler(ToDoArgsRejected, answer_rejected)
        app.middleware_stack = None  # rebuilt with the handler on the next request, as the WebUI's setup_middleware
    return added
