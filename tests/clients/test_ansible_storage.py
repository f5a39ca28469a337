"""Ansible's cs_storage_pool, cs_disk_offering and cs_volume (ngine_io.cloudstack 2.5.0) against a live volstack
server: tests/clients/playbook_storage.yml manages a cluster-scope NFS pool on a Simulator datacenter, a custom
disk offering and a data volume (create, resize, attach, detach, delete), then walks the pool through disabled,
maintenance and enabled and deletes it. The datacenter and the VM come from the cs library: cs_instance needs
templates, which volstack does not have yet."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_storage.yml")
GIB = 2 ** 30


@pytest.fixture
def playbook(server, tmp_path):
    return playbook_runner(server, tmp_path, PLAYBOOK)


@pytest.fixture
def dc(server):
    """The Simulator datacenter the playbook names: ans-zone / ans-pod / ans-cluster with one Up host."""
    api = client(server)
    dc = add_datacenter(api, "ans-zone", "ans-pod", "ans-cluster", ["http://ans-sim"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    host = dc["host"]
    return dict(api=api, zone=zone, pod=pod, cluster=cl, host=host)


def _pool(api):
    res = api.listStoragePools(name="ans-nfs")
    return res["storagepool"][0] if res else None


def _volume(api):
    res = api.listVolumes(name="ans-vol", type="DATADISK")
    return res["volume"][0] if res else None


@pytest.mark.slow
def test_storage_playbook_pool_offering_volume_lifecycle(dc, playbook):
    api, zone, cl = dc["api"], dc["zone"], dc["cluster"]

    # run 1: pool (created, then its tags converged: see the playbook), offering, volume
    _, first = playbook()
    assert first["changed"] == 4 and first["ok"] == 4, first
    pool = _pool(api)
    assert (pool["state"], pool["scope"], pool["type"], pool["provider"]) == \
        ("Up", "CLUSTER", "NetworkFilesystem", "DefaultPrimary")
    assert (pool["ipaddress"], pool["path"], pool["tags"]) == ("10.0.0.1", "/export/x", "ssd,fast")
    assert (pool["zoneid"], pool["podid"], pool["clusterid"]) == (zone["id"], dc["pod"]["id"], cl["id"])
    offering = api.listDiskOfferings(name="ans-data")["diskoffering"][0]
    assert offering["iscustomized"] is True and offering["tags"] == "ssd"
    vol = _volume(api)
    assert (vol["state"], vol["size"], vol["diskofferingid"]) == ("Allocated", 2 * GIB, offering["id"])
    assert "virtualmachineid" not in vol and "storageid" not in vol

    # run 2: same vars, nothing to do
    _, second = playbook()
    assert second["changed"] == 0 and second["ok"] == 4, second

    # the VM the volume gets attached to (its root disk lands on the only pool)
    so = api.createServiceOffering(name="ans-so", displaytext="ans-so", cpunumber=1, cpuspeed=500,
                                   memory=256)["serviceoffering"]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                  name="ans-vm")["virtualmachine"]
    assert vm["state"] == "Running"

    # resize: a bigger size on state=present
    _, grown = playbook(vol_size=4)
    assert grown["changed"] == 1, grown
    vol = _volume(api)
    assert (vol["size"], vol["state"]) == (4 * GIB, "Allocated")

    # attach: the first attach places the volume on the pool carrying the offering's tag
    _, attached = playbook(vol_size=4, vol_state="attached", vm_name="ans-vm")
    assert attached["changed"] == 1, attached
    vol = _volume(api)
    assert (vol["virtualmachineid"], vol["vmname"], vol["state"]) == (vm["id"], "ans-vm", "Ready")
    assert (vol["storageid"], vol["deviceid"], vol["size"]) == (pool["id"], 1, 4 * GIB)
    assert vol["attached"]            # cs_volume tells attached from detached by this key alone
    _, again = playbook(vol_size=4, vol_state="attached", vm_name="ans-vm")
    assert again["changed"] == 0, again

    # detach
    _, detached = playbook(vol_size=4, vol_state="detached")
    assert detached["changed"] == 1, detached
    vol = _volume(api)
    assert vol["state"] == "Ready" and vol["storageid"] == pool["id"]
    assert "virtualmachineid" not in vol and "attached" not in vol and "deviceid" not in vol
    _, again = playbook(vol_size=4, vol_state="detached")
    assert again["changed"] == 0, again

    # delete
    _, deleted = playbook(vol_size=4, vol_state="absent")
    assert deleted["changed"] == 1, deleted
    assert _volume(api) is None
    _, again = playbook(vol_size=4, vol_state="absent")
    assert again["changed"] == 0, again

    # the pool's allocation state: disabled, maintenance (stops the VM), enabled (restarts it)
    _, disabled = playbook(vol_state="absent", pool_allocation="disabled")
    assert disabled["changed"] == 1, disabled
    assert _pool(api)["state"] == "Disabled"
    _, again = playbook(vol_state="absent", pool_allocation="disabled")
    assert again["changed"] == 0, again

    _, maint = playbook(vol_state="absent", pool_allocation="maintenance")
    assert maint["changed"] == 1, maint
    assert _pool(api)["state"] == "Maintenance"
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"

    _, enabled = playbook(vol_state="absent", pool_allocation="enabled")
    assert enabled["changed"] == 1, enabled
    assert _pool(api)["state"] == "Up"
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"

    # absent: the VM's root disk must go first (CloudStack refuses to delete a pool with live volumes)
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    _, gone = playbook(vol_state="absent", pool_absent="true")
    assert gone["changed"] == 1, gone
    assert _pool(api) is None
    _, again = playbook(vol_state="absent", pool_absent="true")
    assert again["changed"] == 0, again
