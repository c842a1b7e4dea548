"""Shared by the engine tests on real ldm U-Nets."""

import pytest

from todo_ext.bench.models import sdpa_attention


@pytest.fixture
def sdpa():
    """ldm's attention through torch's SDPA, as the WebUI's default optimizer runs it."""
    with sdpa_attention():
        yield

