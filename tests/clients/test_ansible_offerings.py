"""Ansible's cs_disk_offering and cs_service_offering (ngine_io.cloudstack 2.5.0) against a live volstack
server: tests/clients/playbook_offerings.yml creates two disk offerings and a service offering."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import client

PLAYBOOK = Path(__file__).with_name("playbook_offerings.yml")


@pytest.fixture
def playbook(server, tmp_path):
    return playbook_runner(server, tmp_path, PLAYBOOK)


@pytest.mark.slow
def test_offerings_playbook_is_idempotent_updates_then_removes(server, playbook):
    api = client(server)

    _, first = playbook()
    assert first["changed"] == 3 and first["ok"] == 3, first
    small = api.listDiskOfferings(name="ans-small")["diskoffering"][0]
    assert small["disksize"] == 10 and small["tags"] == "ssd,fast" and small["provisioningtype"] == "sparse"
    assert small["diskBytesReadRate"] == 10485760 and small["diskIopsWriteRate"] == 300
    assert (small["miniops"], small["maxiops"], small["hypervisorsnapshotreserve"]) == (100, 1000, 10)
    custom = api.listDiskOfferings(name="ans-custom")["diskoffering"][0]
    assert custom["iscustomized"] is True and custom["storagetype"] == "local"
    tiny = api.listServiceOfferings(name="ans-tiny")["serviceoffering"][0]
    assert (tiny["cpunumber"], tiny["memory"], tiny["storagetags"], tiny["hosttags"]) == (1, 512, "ssd", "eco")
    assert tiny["isvolatile"] is True and tiny["diskIopsReadRate"] == 200 and tiny["diskBytesWriteRate"] == 1048576

    _, second = playbook()
    assert second["changed"] == 0 and second["ok"] == 3, second

    _, renamed = playbook(display="Small")
    assert renamed["changed"] == 1, renamed
    assert api.listDiskOfferings(name="ans-small")["diskoffering"][0]["displaytext"] == "Small"

    _, gone = playbook(absent="true")
    assert gone["changed"] == 3, gone
    assert api.listDiskOfferings() == {} and api.listServiceOfferings() == {}
    _, again = playbook(absent="true")
    assert again["changed"] == 0, again
