"""Glue tests: load scripts/todo_script.py against the WebUI stand-in in tests/webui_stub.

The stand-in's `modules` and `gradio` go on sys.modules only for the duration of a test that asks for them, with
the packages a stand-in X/Y/Z script imports (Forge Classic's `lib_xyz`) and the sys.path entries it adds.
"""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "tests" / "webui_stub"
STUB_PACKAGES = ("modules", "gradio", "lib_xyz")


def _is_stub_module(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in STUB_PACKAGES)


@contextlib.contextmanager
def _stand_in():
    assert not any(_is_stub_module(name) for name in sys.modules), "a real WebUI/gradio is already imported"
    saved_path = list(sys.path)
    sys.path.insert(0, str(STUB))
    try:
        from modules import script_callbacks

        script_callbacks.clear_callbacks()
        yield
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if _is_stub_module(name)]:
            del sys.modules[name]


def _load_script():
    spec = importlib.util.spec_from_file_location("todo_script", REPO / "scripts" / "todo_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui():
    """The script module loaded as the WebUI loads it, with the stand-in API; removed again afterwards."""
    with _stand_in():
        module = _load_script()
        yield module
        module.remove_all_hooks()


@pytest.fixture
def webui_host():
    """The stand-in API without the script: a test arranges the host (X/Y/Z scripts loaded, parts that fail), then
    calls the returned function to load the script as the WebUI would."""
    loaded = []
    with _stand_in():

        def load():
            loaded.append(_load_script())
            return loaded[-1]

        yield load
        for module in loaded:
            module.remove_all_hooks()
