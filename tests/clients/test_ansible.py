"""Ansible (ansible 12.3.0, ngine_io.cloudstack 2.5.0) modules against a live volstack server:
tests/clients/playbook.yml builds a zone, pod, cluster, Simulator host, account and two settings."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import client

PLAYBOOK = Path(__file__).with_name("playbook.yml")


@pytest.fixture
def playbook(server, tmp_path):
    return playbook_runner(server, tmp_path, PLAYBOOK)


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
