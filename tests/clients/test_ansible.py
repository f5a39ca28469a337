"""Ansible (ansible 12.3.0, ngine_io.cloudstack 2.5.0) modules against a live volstack server:
tests/clients/playbook.yml builds a zone, pod, cluster, Simulator host, account and two settings."""
import re
from pathlib import Path

import pytest

from clienttools import ANSIBLE_PLAYBOOK, CLIENTS_PYTHON, cs_env, describe, run
from support import client

PLAYBOOK = Path(__file__).with_name("playbook.yml")
RECAP = re.compile(r"^localhost\s*:\s*(.*)$", re.M)


def recap(proc) -> dict:
    """The counters of the PLAY RECAP line: {'ok': 7, 'changed': 0, 'failed': 0, ...}."""
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


def _state(api):
    """What the API says about everything the playbook manages."""
    zones = api.listZones(name="ans-zone")
    pods = api.listPods(name="ans-pod")
    clusters = api.listClusters(name="ans-cluster")
    hosts = api.listHosts(name="ans-sim-host")
    accounts = api.listAccounts(name="ans-account", listall=True)
    return zones, pods, clusters, hosts, accounts


@pytest.mark.slow
def test_playbook_is_idempotent_then_changes_state_then_removes_everything(server, playbook):
    api = client(server)

    _, first = playbook()
    assert first["changed"] == 7 and first["ok"] == 7, first
    zones, pods, clusters, hosts, accounts = _state(api)
    zone = zones["zone"][0]
    assert zones["count"] == 1 and zone["networktype"] == "Advanced" and zone["dns1"] == "8.8.8.8"
    assert zone["internaldns1"] == "8.8.8.8" and zone["guestcidraddress"] == "10.1.0.0/16"
    pod = pods["pod"][0]
    assert pod["zoneid"] == zone["id"] and pod["gateway"] == "10.100.0.1" and pod["startip"] == "10.100.0.10"
    cluster = clusters["cluster"][0]
    assert cluster["podid"] == pod["id"] and cluster["hypervisortype"] == "Simulator"
    assert cluster["clustertype"] == "CloudManaged"
    host = hosts["host"][0]
    assert host["clusterid"] == cluster["id"] and host["hypervisor"] == "Simulator" and host["state"] == "Up"
    assert host["resourcestate"] == "Enabled" and sorted(host["hosttags"].split(",")) == ["fast", "ssd"]
    account = accounts["account"][0]
    assert account["state"] == "enabled" and account["accounttype"] == 0
    assert account["user"][0]["username"] == "ans-account-user" and account["user"][0]["email"] == "ops@example.com"
    assert api.listConfigurations(name="expunge.delay")["configuration"][0]["value"] == "3600"
    scoped = api.listConfigurations(name="pool.storage.capacity.disablethreshold", zoneid=zone["id"])
    assert scoped["configuration"][0]["value"] == "0.75"
    assert api.listConfigurations(name="pool.storage.capacity.disablethreshold")["configuration"][0]["value"] == "0.85"

    _, second = playbook()
    assert second["changed"] == 0 and second["ok"] == 7, second

    # state changes: the host goes into maintenance, the account is disabled
    _, third = playbook(host_allocation="maintenance", account_state="disabled")
    assert third["changed"] == 2, third
    _, _, _, hosts, accounts = _state(api)
    assert hosts["host"][0]["resourcestate"] == "Maintenance"
    assert accounts["account"][0]["state"] == "disabled"

    # and back: the host leaves maintenance, the account is enabled again
    _, back = playbook(host_allocation="enabled", account_state="enabled")
    assert back["changed"] == 2, back
    _, _, _, hosts, accounts = _state(api)
    assert hosts["host"][0]["resourcestate"] == "Enabled" and accounts["account"][0]["state"] == "enabled"

    _, gone = playbook(absent="true")
    assert gone["changed"] == 5, gone
    assert _state(api) == ({}, {}, {}, {}, {})
    # settings stay: cs_configuration has no absent state
    assert api.listConfigurations(name="expunge.delay")["configuration"][0]["value"] == "3600"
