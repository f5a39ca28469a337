"""volstack's declared API against CloudStack 4.22's names (volstack/api/cloudstack_api.json): coverage may grow,
never drop, and every volstack command is one CloudStack has."""
import volstack.api.commands  # noqa: F401  (declares every command)
from volstack.api import coverage
from volstack.api.registry import API

# What volstack covered when these floors were last raised: raise them as coverage grows.
FLOOR = {"commands": 98, "parameters": 1032, "fields": 498}


def test_coverage_never_drops():
    got = coverage.totals()
    low = {k: f"{got[k]} < {n}" for k, n in FLOOR.items() if got[k].have < n}
    assert not low, f"CloudStack coverage dropped: {low}; docs/api.md lists what each command lacks"


def test_every_volstack_command_is_a_cloudstack_command():
    assert coverage.unknown_commands() == []


def test_a_dropped_parameter_is_noticed():
    before = coverage.totals()["parameters"].have
    cmd = API.get("listVolumes")
    saved = cmd.params
    cmd.params = [p for p in saved if p.name != "tags"]
    try:
        assert "tags" in coverage.command_params("listVolumes")[1]
        assert coverage.totals()["parameters"].have == before - 1
    finally:
        cmd.params = saved
