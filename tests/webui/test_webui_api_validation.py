"""API requests with invalid ToDo args are answered 422 before any generation; valid ones reach the endpoint
with their body intact. FastAPI/Starlette/httpx at the versions the WebUI v1.10.1 pins (requirements-test.txt)."""

import json

import pytest

from todo_ext.api_validation import ToDoRequestValidator, validation_error
from todo_ext.args import ToDoArgs

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def webui_like_app():
    """A FastAPI app with the WebUI's own api_middleware shape (modules/api/api.py: an @app.middleware("http")
    that awaits call_next) and txt2img/img2img endpoints that record the bodies they were given."""
    app = fastapi.FastAPI()
    app.state.received = []

    @app.middleware("http")
    async def log_and_time(request, call_next):
        return await call_next(request)

    async def generate(payload: dict):
        app.state.received.append(payload)
        return {"images": [], "parameters": payload}

    app.post("/sdapi/v1/txt2img")(generate)
    app.post("/sdapi/v1/img2img")(generate)
    return app


def todo_request(args, title="ToDo"):
    return {"prompt": "a cat", "steps": 1, "alwayson_scripts": {title: {"args": args}}}


@pytest.fixture
def client():
    app = webui_like_app()
    app.add_middleware(ToDoRequestValidator)
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
    assert client.app.state.received == []


def test_valid_request_reaches_endpoint_with_the_same_body(client):
    payload = todo_request([{"enabled": True, "ratio": 0.9375, "hires_mode": "auto"}])
    assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 9.0])).status_code == 422
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200
    assert client.app.state.received == [payload]


def test_other_scripts_and_paths_are_not_inspected(client):
    other = {"prompt": "x", "alwayson_scripts": {"Hypertile": {"args": ["nonsense"]}}}
    assert client.post("/sdapi/v1/txt2img", content=json.dumps(other)).status_code == 200
    not_json = client.post("/sdapi/v1/txt2img", content=b"not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "field" not in not_json.json(), "left to FastAPI's own validation"
    assert len(client.app.state.received) == 1


def test_validation_uses_the_current_defaults():
    strict_window = ToDoArgs(start=0.5, end=0.6)
    body = json.dumps(todo_request([True, 0.5, 0, False, 4096, "nearest", 0.7])).encode()
    assert validation_error(body) is None
    assert validation_error(body, strict_window)["field"] == "start"


def test_script_installs_the_validator_once_on_a_started_app(webui):
    from modules import script_callbacks

    app = webui_like_app()
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 2.0])).status_code == 200
        script_callbacks.app_started_callback(None, app)
        script_callbacks.app_started_callback(None, app)
        response = client.post("/sdapi/v1/txt2img", json=todo_request([True, 2.0]))
        assert response.status_code == 422 and response.json()["field"] == "ratio"
        assert client.post("/sdapi/v1/txt2img", json=todo_request([True, 0.5])).status_code == 200
    validators = [m for m in app.user_middleware if m.cls is ToDoRequestValidator]
    assert len(validators) == 1
