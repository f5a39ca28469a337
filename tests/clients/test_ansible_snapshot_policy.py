"""Ansible's cs_snapshot_policy (ngine_io.cloudstack) against a live volstack server: tests/clients/
playbook_snapshot_policy.yml creates a daily policy on a data volume, runs again without changes (the module compares
schedule, maxsnaps and timezone with listSnapshotPolicies, whose intervaltype is a number), changes maxsnaps, then
removes the policy."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_snapshot_policy.yml")


@pytest.fixture
def volume(server):
    api = client(server)
    dc = add_datacenter(api, "ans-snap-zone", "ans-snap-pod", "ans-snap-cluster", ["http://ans-snap"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    api.createStoragePool(name="ans-snap-pool", url="nfs://10.0.0.1/pool", zoneid=zone["id"], podid=pod["id"],
                          clusterid=cl["id"])
    so = api.createServiceOffering(name="ans-small", cpunumber=1, cpuspeed=500, memory=256,
                                   displaytext="small")["serviceoffering"]
    do = api.createDiskOffering(name="ans-d1", disksize=1, displaytext="d1")["diskoffering"]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                  name="ans-vm")["virtualmachine"]
    vol = api.createVolume(name="ans-data", zoneid=zone["id"], diskofferingid=do["id"])["volume"]
    return dict(api=api, volume=api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"])


@pytest.mark.slow
def test_snapshot_policy_playbook(volume, server, tmp_path):
    api, play = volume["api"], playbook_runner(server, tmp_path, PLAYBOOK)
    _, first = play()
    assert first["changed"] == 1, first
    policy = api.listSnapshotPolicies(volumeid=volume["volume"]["id"])["snapshotpolicy"]
    assert [(p["intervaltype"], p["schedule"], p["timezone"], p["maxsnaps"]) for p in policy] == \
        [(1, "30:2", "Europe/Zurich", 3)]

    proc, again = play()
    assert again["changed"] == 0, proc.stdout

    _, more = play(max_snaps=5)
    assert more["changed"] == 1, more
    updated = api.listSnapshotPolicies(volumeid=volume["volume"]["id"])["snapshotpolicy"]
    assert [(p["id"], p["maxsnaps"]) for p in updated] == [(policy[0]["id"], 5)]

    _, gone = play(policy_state="absent")
    assert gone["changed"] == 1, gone
    assert api.listSnapshotPolicies(volumeid=volume["volume"]["id"]) == {}
    _, still = play(policy_state="absent")
    assert still["changed"] == 0, still
