"""Glue tests: load scripts/todo_script.py against the WebUI stand-in in tests/webui_stub.

The stand-in's `modules` and `gradio` go on sys.modules only for the duration of a test that asks for them.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "tests" / "webui_stub"
STUB_PACKAGES = ("modules", "gradio")


def _is_stub_module(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in STUB_PACKAGES)


@pytest.fixture
def webui():
    """The script module loaded as the WebUI loads it, with the stand-in API; removed again afterwards."""
    assert not any(_is_stub_module(name) for name in sys.modules), "a real WebUI/gradio is already imported"
    sys.path.insert(0, str(STUB))
    try:
        from modules import script_callbacks

        script_callbacks.clear_callbacks()
        spec = importlib.util.spec_from_file_location("todo_script", REPO / "scripts" / "todo_script.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
        module.remove_all_hooks()
    finally:
        sys.path.remove(str(STUB))
        for name in [name for name in sys.modules if _is_stub_module(name)]:
            del sys.modules[name]
