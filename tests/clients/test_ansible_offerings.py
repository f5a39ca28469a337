"""Ansible's cs_disk_offering and cs_service_offering (ngine_io.cloudstack 2.5.0) against a live volstack
server: tests/clients/playbook_offerings.yml creates two disk offerings and a service offering."""
import re
from pathlib import Path

import pytest

from clienttools import ANSIBLE_PLAYBOOK, CLIENTS_PYTHON, cs_env, describe, run
from support import client

PLAYBOOK = Path(__file__).with_name("playbook_offerings.yml")
RECAP = re.compile(r"^localhost\s*:\s*(.*)$", re.M)


def recap(proc) -> dict:
    lines = RECAP.findall(proc.stdout)
    assert len(lines) == 1, describe(proc)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[0])}


@pytest.fixture
def playbook(server, tmp_path):
    env = cs_env(server, tmp_path / "home",
                 ANSIBLE_PYTHON_INTERPRETER=CLIENTS_PYTHON,
                 ANSIBLE_LOCAL_TEMP=tmp_path / "ansible-local", ANSIBLE_REMOTE_TEMP=tmp_path / "ansible-remote",
                 ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                 ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")

    def play(**extra_vars):
        args = [ANSIBLE_PLAYBOOK, "-i", "localhost,", PLAYBOOK]
        for k, v in extra_vars.items():
            args += ["-e", f"{k}={v}"]
        proc = run(args, env=env, cwd=tmp_path, timeout=300)
        counts = recap(proc)
        assert proc.returncode == 0 and counts["failed"] == 0 and counts["unreachable"] == 0, describe(proc)
        return proc, counts
    return play


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
