"""Fixtures of the attack suite (the harness itself is attackkit.py): one real `volstack up` per session."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attackkit import Stack, Tenants  # noqa: E402


def pytest_collection_modifyitems(items):
    """Modules with RUN_LAST = True (the secret search) run after the others, to see everything they did."""
    items.sort(key=lambda item: bool(getattr(item.module, "RUN_LAST", False)))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("attack")).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tenants(stack) -> Tenants:
    return Tenants(stack)
