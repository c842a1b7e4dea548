"""Order of the live-host tests: test_webui_e2e.py first. On A1111 a ControlNet reference-mode job turns the
WebUI's Token merging off for the rest of the session (sd-webui-controlnet leaves its saved `_forward` on every
BasicTransformerBlock instance, which shadows tomesd's class patch), so the Token merging tests must run before
test_extensions_e2e.py's ControlNet tests, which come first alphabetically."""

from pathlib import Path

HERE = Path(__file__).parent
FIRST = "test_webui_e2e.py"


def pytest_collection_modifyitems(session, config, items):
    here = [index for index, item in enumerate(items) if item.path.parent == HERE]
    ordered = sorted((items[index] for index in here), key=lambda item: item.path.name != FIRST)
    for index, item in zip(here, ordered, strict=True):
        items[index] = item
