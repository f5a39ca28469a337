"""Ansible's cs_vmsnapshot (ngine_io.cloudstack) against a live volstack server with a real `volstack agent`
and a real QEMU guest (TCG, the tiny test kernel): tests/clients/playbook_vmsnapshot.yml creates a VM snapshot
with memory (again without change), reverts the running VM to it and removes it (again without change)."""
import json
import subprocess
from pathlib import Path

import pytest

from agentproc import AgentProcess
from clienttools import playbook_runner
from guest import guest_image_dir
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_vmsnapshot.yml")


@pytest.fixture
def vm(server, tmp_path):
    agent = AgentProcess(tmp_path / "agent", name="ans-kvm").start()
    api = client(server)
    dc = add_datacenter(api, "ans-vms-zone", "ans-vms-pod", "ans-vms-cluster", [agent])
    (tmp_path / "primary").mkdir()
    api.createStoragePool(name="ans-vms-pool", url=f"SharedMountPoint://localhost{tmp_path / 'primary'}", **dc["at"])
    so = api.createServiceOffering(name="ans-small", cpunumber=1, cpuspeed=500, memory=256,
                                   displaytext="small")["serviceoffering"]
    image = guest_image_dir()
    yield api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=so["id"], rootdisksize=1, name="ans-vm",
                                   **{"details[0].kernel": str(image / "vmlinuz"),
                                      "details[0].initrd": str(image / "initrd.img"),
                                      "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    agent.kill_guests()
    agent.stop()


def _internal_snapshots(path) -> dict:
    """name -> size of the guest state it holds, read from the qcow2 itself."""
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)
    return {s["name"]: s.get("vm-state-size", 0) for s in info.get("snapshots", [])}


@pytest.mark.slow
def test_vm_snapshot_playbook_create_revert_remove(vm, server, tmp_path):
    api, play = client(server), playbook_runner(server, tmp_path, PLAYBOOK)
    _, first = play()
    assert first["changed"] == 1, first
    snap = api.listVMSnapshot(virtualmachineid=vm["id"])["vmSnapshot"]
    assert [(s["displayname"], s["type"], s["state"], s["description"]) for s in snap] == \
        [("before-upgrade", "DiskAndMemory", "Ready", "taken by Ansible")]
    root = tmp_path / "primary" / api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]["path"]
    assert _internal_snapshots(root).get(snap[0]["id"], 0) > 0, "QEMU saved the guest's memory in the ROOT disk"

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
    assert snap[0]["id"] not in _internal_snapshots(root)
    proc, again = play(snap_state="absent")
    assert again["changed"] == 0, proc.stdout
