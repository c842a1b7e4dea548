"""Shared by the engine tests on real ldm U-Nets and on the DiT stand-ins."""

import pytest

from todo_ext.bench.models import sdpa_attention


@pytest.fixture
def sdpa():
    """ldm's attention through torch's SDPA, as the WebUI's default optimizer runs it."""
    with sdpa_attention():
        yield


@pytest.fixture
def attention_functions():
    """Puts back every module-level attention function of the DiT stand-ins after the test, whatever wrappers (ToDo's
    or a test's) it left in place."""
    from dit_cases import ATTENTION_NAMES

    saved = {module: getattr(module, name) for module, name in ATTENTION_NAMES.items()}
    yield
    for module, function in saved.items():
        setattr(module, ATTENTION_NAMES[module], function)
