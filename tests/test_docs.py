from pathlib import Path

from volstack.api.docs import render
from volstack.api.registry import API


def test_generated_api_reference_is_current():
    committed = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    assert committed == render(), "run: .venv/bin/python -m volstack.api.docs > docs/api.md"


def test_every_command_is_declared_completely():
    for cmd in API.commands.values():
        assert cmd.description and cmd.key, cmd.name
        for p in cmd.params:
            assert p.description and p.type and isinstance(p.length, int), (cmd.name, p.name)
        assert cmd.is_async or cmd.prepare is None
