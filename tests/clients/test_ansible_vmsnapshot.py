"""Ansible's cs_vmsnapshot (ngine_io.cloudstack) against a live volstack server, on a Simulator datacenter:
tests/clients/playbook_vmsnapshot.yml creates a VM snapshot with memory (again without change), reverts the
running VM to it and removes it (again without change)."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_vmsnapshot.yml")


@pytest.fixture
def vm(server):
    api = client(server)
    dc = add_datacenter(api, "ans-vms-zone", "ans-vms-pod", "ans-vms-cluster", ["http://ans-vms"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    api.createStoragePool(name="ans-vms-nfs", url="nfs://10.0.0.1/vms", zoneid=zone["id"], podid=pod["id"],
                          clusterid=cl["id"])
    so = api.createServiceOffering(name="ans-small", cpunumber=1, cpuspeed=500, memory=256,
                                   displaytext="small")["serviceoffering"]
    return api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                    name="ans-vm")["virtualmachine"]


@pytest.mark.slow
def test_vm_snapshot_playbook_create_revert_remove(vm, server, tmp_path):
    api, play = client(server), playbook_runner(server, tmp_path, PLAYBOOK)
    _, first = play()
    assert first["changed"] == 1, first
    snap = api.listVMSnapshot(virtualmachineid=vm["id"])["vmSnapshot"]
    assert [(s["displayname"], s["type"], s["state"], s["description"]) for s in snap] == \
        [("before-upgrade", "DiskAndMemory", "Ready", "taken by Ansible")]

    proc, again = play()
    assert again["changed"] == 0, proc.stdout

    _, reverted = play(snap_state="revert")
    assert reverted["changed"] == 1, reverted
    events = [e["description"] for e in api.listEvents(type="VMSNAPSHOT.REVERTTO")["event"]]
    assert any("reverted to VM snapshot before-upgrade" in d for d in events), events
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"

    _, gone = play(snap_state="absent")
    assert gone["changed"] == 1, gone
    assert api.listVMSnapshot(virtualmachineid=vm["id"]) == {}
    proc, again = play(snap_state="absent")
    assert again["changed"] == 0, proc.stdout
