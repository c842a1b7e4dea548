"""API requests with invalid ToDo args, or invalid ToDo keys in their `infotext`, are answered 422 before any
generation, after the WebUI's own authentication and inside its middleware; valid ones reach the endpoint.

Runs on the FastAPI/Starlette/pydantic versions installed: the WebUI v1.10.1 pins (requirements-test.txt) in
the main venv, and Forge's (requirements-forge-api.txt) in the second venv that `make test` builds.
"""

import base64
import json

import pytest

from todo_ext import api_validation
from todo_ext.api_validation import validation_error
from todo_ext.args import ToDoArgs

fastapi = pytest.importorskip("fastapi")
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.security import HTTPBasic, HTTPBasicCredentials  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

BASIC = fastapi.Depends(HTTPBasic())

ORIGIN = "http://example.test"
CREDENTIALS = ("user", "pass")


def parse_infotext(text):
    """The parameters line the way infotext_utils.parse_generation_parameters splits it (no quoting needed here)."""
    pairs = [part.split(":", 1) for part in text.split("\n")[-1].split(",") if ":" in part]
    return {key.strip(): value.strip() for key, value in pairs}


def webui_like_app(*, api_auth=False, log=None):
    """A FastAPI app built the way modules/api/api.py and modules/initialize_util.py build the WebUI's: the
    api_middleware pair (log_and_time adds X-Process-Time and prints the --api-log line; exception_handling), the
    CORS middleware of setup_middleware, and txt2img/img2img routes added with the --api-auth dependency
    (Api.add_api_route / Api.auth) that record the bodies they were given."""
    app = fastapi.FastAPI()
    app.state.received = []

    @app.middleware("http")
    async def log_and_time(request, call_next):
        response = await call_next(request)
        response.headers["X-Process-Time"] = "0.0"
        if log is not None:
            log.append(f"API {response.status_code} {request.scope.get('path')}")
        return response

    @app.middleware("http")
    async def exception_handling(request, call_next):
        try:
            return await call_next(request)
        except Exception as error:
            return JSONResponse(status_code=vars(error).get("status_code", 500), content={"error": str(error)})

    app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["*"], allow_headers=["*"],
                       allow_credentials=True)

    def auth(credentials: HTTPBasicCredentials = BASIC):
        if (credentials.username, credentials.password) == CREDENTIALS:
            return True
        raise fastapi.HTTPException(status_code=401, detail="Incorrect username or password",
                                    headers={"WWW-Authenticate": "Basic"})

    def generate(payload: dict):
        app.state.received.append(payload)
        return {"images": [], "parameters": payload}

    dependencies = [fastapi.Depends(auth)] if api_auth else None
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info"):
        app.add_api_route(path, generate, methods=["POST"], dependencies=dependencies)
    return app


def todo_request(args, title="ToDo", **fields):
    return {"prompt": "a cat", "steps": 1, "alwayson_scripts": {title: {"args": args}}, **fields}


def basic_auth():
    token = base64.b64encode(":".join(CREDENTIALS).encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def client():
    app = webui_like_app()
    api_validation.install(app, ToDoArgs, parse_infotext)
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([True, 2.0], "ratio"),
        ([True, 0.5, 0, False, 4096, "bicubic"], "method"),
        ([{"enabled": True, "ratoi": 0.5}], "field"),
        ([True, 0.5, "deep"], "max_depth"),
        ("True", "args"),
    ],
)
def test_invalid_args_get_422_naming_the_field(client, args, field):
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        response = client.post(path, json=todo_request(args, title="todo"))
        assert response.status_code == 422
        body = response.json()
        assert body["field"] == field
        assert body["allowed"] and field in body["detail"]
        assert set(body) == {"error", "detail", "field", "allowed"}
    assert client.app.state.received == []


@pytest.mark.parametrize(
    ("infotext", "key", "allowed"),
    [
        ("Steps: 3, Seed: 1, ToDo: True, ToDo ratio: abc", "ToDo ratio", "a number"),
        ("Steps: 3, Seed: 1, ToDo: True, ToDo method: bicubic", "ToDo method", "avg-pool"),
        ("Steps: 3, Seed: 1, ToDo: maybe", "ToDo", "true or false"),
    ],
)
def test_invalid_todo_keys_in_the_infotext_field_get_422_naming_the_key(client, infotext, key, allowed):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "", "infotext": infotext})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == key and allowed in body["allowed"] and key in body["detail"]
    assert client.app.state.received == []


def test_valid_infotext_and_args_reach_the_endpoint(client):
    infotext = "Steps: 3, Seed: 1, ToDo: True, ToDo ratio: 0.9375, ToDo method: avg-pool"
    payload = todo_request([True], infotext=infotext)
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    window = "Steps: 3, Seed: 1, ToDo: True, ToDo start: 0.9"
    response = client.post("/sdapi/v1/txt2img", json=todo_request([True, 0.5, 0, False, 4096, "nearest", None, 0.5],
                                                                  infotext=window))
    assert response.status_code == 422 and response.json()["field"] == "start"
    assert client.app.state.received == [payload]


def test_valid_request_reaches_endpoint_with_the_same_body(client):
    payload = todo_request([{"enabled": True, "ratio": 0.9375, "hires_mode": "auto"}])
    assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 9.0])).status_code == 422
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200
    assert client.app.state.received == [payload]


def test_other_scripts_and_paths_are_not_inspected(client):
    other = {"prompt": "x", "alwayson_scripts": {"Hypertile": {"args": ["nonsense"]}}}
    assert client.post("/sdapi/v1/txt2img", content=json.dumps(other)).status_code == 200
    assert client.post("/sdapi/v1/png-info", json=todo_request([True, 9.0])).status_code == 200
    not_json = client.post("/sdapi/v1/txt2img", content=b"not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "field" not in not_json.json(), "left to FastAPI's own validation"
    assert len(client.app.state.received) == 2


def test_authentication_comes_first():
    app = webui_like_app(api_auth=True)
    api_validation.install(app, ToDoArgs, parse_infotext)
    with TestClient(app) as client:
        invalid = todo_request([True, 2.0])
        unauthenticated = client.post("/sdapi/v1/txt2img", json=invalid)
        assert unauthenticated.status_code == 401 and "field" not in unauthenticated.json()
        bad_infotext = client.post("/sdapi/v1/txt2img", json={"infotext": "Steps: 1, Seed: 1, ToDo ratio: abc"})
        assert bad_infotext.status_code == 401
        authenticated = client.post("/sdapi/v1/txt2img", json=invalid, headers=basic_auth())
        assert authenticated.status_code == 422 and authenticated.json()["field"] == "ratio"
        assert client.post("/sdapi/v1/txt2img", json=todo_request([True]), headers=basic_auth()).status_code == 200


def test_rejection_carries_the_hosts_middleware_headers_and_log():
    log = []
    app = webui_like_app(log=log)
    api_validation.install(app, ToDoArgs, parse_infotext)
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json=todo_request([True, 2.0]), headers={"Origin": ORIGIN})
    assert response.status_code == 422
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-process-time" in response.headers
    assert log == ["API 422 /sdapi/v1/txt2img"]


def test_validation_uses_the_given_defaults():
    strict_window = ToDoArgs(start=0.5, end=0.6)
    body = json.dumps(todo_request([True, 0.5, 0, False, 4096, "nearest", 0.7])).encode()
    assert validation_error(body) is None
    assert validation_error(body, strict_window)["field"] == "start"


def test_script_installs_the_check_once_on_a_started_app(webui):
    from modules import script_callbacks

    app = webui_like_app()
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 2.0])).status_code == 200
        script_callbacks.app_started_callback(None, app)
        script_callbacks.app_started_callback(None, app)
        response = client.post("/sdapi/v1/txt2img", json=todo_request([True, 2.0]))
        assert response.status_code == 422 and response.json()["field"] == "ratio"
        infotext = client.post("/sdapi/v1/txt2img", json={"infotext": "Steps: 1, Seed: 1, ToDo ratio: abc"})
        assert infotext.status_code == 422 and infotext.json()["field"] == "ToDo ratio"
        assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 0.5])).status_code == 200
    route = next(route for route in app.routes if getattr(route, "path", "") == "/sdapi/v1/txt2img")
    assert len(route.dependencies) == 1
