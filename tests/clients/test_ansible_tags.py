"""Ansible's cs_volume and cs_template (cross_zones: yes) set, change and remove resource tags idempotently against
a live volstack server (tests/clients/playbook_tags.yml, on two Simulator zones)."""
from pathlib import Path

import pytest

from agentproc import wait_until
from clienttools import playbook_runner
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_tags.yml")


@pytest.fixture
def api(server):
    api = client(server)
    for i in (1, 2):
        dc = add_datacenter(api, f"tag-zone{i}", f"tag-pod{i}", f"tag-cluster{i}", [f"http://tag-sim{i}"])
        api.addImageStore(name=f"tag-sec{i}", provider="NFS", url=f"nfs://10.0.0.2/sec{i}", zoneid=dc["zone"]["id"])
    api.createDiskOffering(name="tag-data", disksize=1, displaytext="tag-data")
    return api


def _tags(resource) -> dict:
    return {t["key"]: t["value"] for t in resource["tags"]}


def _state(api):
    vol = api.listVolumes(name="tag-vol")["volume"]
    rows = api.listTemplates(templatefilter="self", name="tag-tmpl").get("template", [])
    return [_tags(v) for v in vol], [(r["zonename"], _tags(r)) for r in rows]


@pytest.mark.slow
def test_volume_and_cross_zone_template_tags_converge(api, server, tmp_path):
    play = playbook_runner(server, tmp_path, PLAYBOOK)
    tags = lambda **kv: [{"key": k, "value": v} for k, v in kv.items()]  # noqa: E731

    # run 1: the volume is created with its tags; cs_template registers (tags follow on the next run, as the
    # module only tags a template it found, against CloudStack too)
    _, first = play(resource_tags=tags(env="prod", team="a"))
    assert first["changed"] == 2, first
    vols, rows = _state(api)
    assert vols == [{"env": "prod", "team": "a"}] and [z for z, _ in rows] == ["tag-zone1", "tag-zone2"]
    assert rows[0][1] == {} and api.listTemplates(templatefilter="self", name="tag-tmpl")["template"][0]["crossZones"]
    wait_until("the template downloaded in both zones", lambda: all(
        r["isready"] for r in api.listTemplates(templatefilter="self", name="tag-tmpl")["template"]))

    _, second = play(resource_tags=tags(env="prod", team="a"))
    assert second["changed"] == 1, second                      # the template's tags
    assert _state(api) == ([{"env": "prod", "team": "a"}],
                           [("tag-zone1", {"env": "prod", "team": "a"}), ("tag-zone2", {"env": "prod", "team": "a"})])
    proc, same = play(resource_tags=tags(env="prod", team="a"))
    assert same["changed"] == 0, proc.stdout

    # change one value, drop one key, add one
    _, changed = play(resource_tags=tags(env="dev", owner="ops"))
    assert changed["changed"] == 2, changed
    assert _state(api) == ([{"env": "dev", "owner": "ops"}],
                           [("tag-zone1", {"env": "dev", "owner": "ops"}), ("tag-zone2", {"env": "dev", "owner": "ops"})])

    # tags: [] removes them all
    _, removed = play(resource_tags=[])
    assert removed["changed"] == 2, removed
    assert _state(api) == ([{}], [("tag-zone1", {}), ("tag-zone2", {})])
    assert api.listTags() == {}
    _, same = play(resource_tags=[])
    assert same["changed"] == 0, same
