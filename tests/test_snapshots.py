"""Volume snapshots through the API with a real `volstack agent` (simulated guests, real qemu-img images on a
SharedMountPoint pool and a Filesystem image store): the bytes are checked with qemu-io."""
import pytest
from sqlalchemy import select

from support import client
from test_templates import add_store, cloud, error_of, img_info, qemu_io  # noqa: F401  (cloud is a fixture)
from test_volumes_sim import dc  # noqa: F401  (a fixture: a zone of in-memory Simulator hosts)

MIB = 1024 ** 2


def _data_volume(c, vm):
    api = c["api"]
    offering = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vol = api.createVolume(name="data", zoneid=c["zone"]["id"], diskofferingid=offering["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["state"] == "Ready"
    return vol, offering


def _vm(c):
    return c["api"].deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                         rootdisksize=1)["virtualmachine"]


def _set_state(c, model, uuid, state):
    with c["server"].db.session() as s:
        row = s.scalar(select(model).where(model.uuid == uuid))
        row.state = state


def test_snapshot_live_and_stopped_revert_to_any_and_volumes_from_snapshots(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    store = add_store(cloud)
    vm = _vm(cloud)
    vol, offering = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    qemu_io(image, "write -P 0x11 0 1M")

    # 1: live, the VM running: a point-in-time copy of the disk, backed up, nothing left on primary
    s1 = api.createSnapshot(volumeid=vol["id"], name="first")["snapshot"]
    assert (s1["state"], s1["locationtype"], s1["volumeid"], s1["volumetype"]) == \
        ("BackedUp", "SECONDARY", vol["id"], "DATADISK")
    assert s1["datastoreid"] == store["id"] and s1["virtualsize"] == 2 ** 30 and s1["revertable"] is True
    backup = tmp / "store" / f"{s1['id']}.qcow2"
    assert img_info(backup)["format"] == "qcow2" and "backing-filename" not in img_info(backup)
    qemu_io(backup, "read -P 0x11 0 1M")
    assert sorted(p.name for p in (tmp / "primary").iterdir() if "snap" in p.name) == []
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"
    taken = [e["description"] for e in api.listEvents(type="SNAPSHOT.CREATE")["event"]]
    assert any(f"while VM {vm['name']} runs" in d for d in taken), taken

    # 2: the VM stopped: an internal qcow2 snapshot, backed up, then removed from the image
    qemu_io(image, "write -P 0x22 0 1M")
    api.stopVirtualMachine(id=vm["id"])
    s2 = api.createSnapshot(volumeid=vol["id"], name="second")["snapshot"]
    assert s2["state"] == "BackedUp" and "snapshots" not in img_info(image)
    qemu_io(tmp / "store" / f"{s2['id']}.qcow2", "read -P 0x22 0 1M")
    qemu_io(image, "write -P 0x33 0 1M")

    listed = api.listSnapshots(volumeid=vol["id"])["snapshot"]
    assert [x["name"] for x in listed] == ["first", "second"]
    assert api.listSnapshots(id=s2["id"], locationtype="SECONDARY")["count"] == 1
    assert api.listSnapshots(locationtype="PRIMARY") == {}
    assert api.listSnapshots(imagestoreid=store["id"])["count"] == 2

    # revert to either snapshot, not only the newest
    api.revertSnapshot(id=s1["id"])
    qemu_io(image, "read -P 0x11 0 1M")
    api.revertSnapshot(id=s2["id"])
    qemu_io(image, "read -P 0x22 0 1M")
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"

    # a volume from a DATA snapshot keeps the offering; its image comes from the backup on first use
    v1 = api.createVolume(name="from-first", snapshotid=s1["id"])["volume"]
    assert (v1["state"], v1["diskofferingid"], v1["snapshotid"], v1["size"]) == \
        ("Allocated", offering["id"], s1["id"], 2 ** 30)
    api.attachVolume(id=v1["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    v1 = api.listVolumes(id=v1["id"])["volume"][0]
    assert v1["state"] == "Ready"
    qemu_io(tmp / "primary" / v1["path"], "read -P 0x11 0 1M")

    # snapshots survive their volume and still restore
    api.stopVirtualMachine(id=vm["id"])
    api.detachVolume(id=vol["id"])
    api.deleteVolume(id=vol["id"])
    assert not image.exists()
    left = api.listSnapshots(id=s2["id"])["snapshot"][0]
    assert left["volumestate"] == "Expunged" and left["revertable"] is False
    code, text = error_of(lambda: api.revertSnapshot(id=s2["id"]))
    assert code == 431 and "createVolume" in text
    v2 = api.createVolume(name="from-second", snapshotid=s2["id"])["volume"]
    api.attachVolume(id=v2["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    qemu_io(tmp / "primary" / api.listVolumes(id=v2["id"])["volume"][0]["path"], "read -P 0x22 0 1M")

    # the store knows its snapshot backups: browse shows them, delete refuses while they are there
    objs = {o["name"]: o.get("snapshotid") for o in api.listImageStoreObjects(id=store["id"])["datastoreobject"]}
    assert objs == {f"{s1['id']}.qcow2": s1["id"], f"{s2['id']}.qcow2": s2["id"]}
    code, text = error_of(lambda: api.deleteImageStore(id=store["id"]))
    assert code == 431 and "snapshot" in text

    # a backup moves to another store with migrateResourceToAnotherSecondaryStorage
    (tmp / "store2").mkdir()
    other = api.addImageStore(name="b", provider="Filesystem", url=f"file://{tmp / 'store2'}",
                              zoneid=cloud["zone"]["id"])["imagestore"]
    res = api.migrateResourceToAnotherSecondaryStorage(srcpool=store["id"], destpool=other["id"],
                                                       snapshots=s2["id"])["imagestore"]
    assert res["success"] is True
    assert api.listSnapshots(id=s2["id"])["snapshot"][0]["datastoreid"] == other["id"]
    assert not (tmp / "store" / f"{s2['id']}.qcow2").exists()
    qemu_io(tmp / "store2" / f"{s2['id']}.qcow2", "read -P 0x22 0 1M")

    api.deleteSnapshot(id=s1["id"])
    assert not backup.exists() and [x["id"] for x in api.listSnapshots()["snapshot"]] == [s2["id"]]
    api.deleteImageStore(id=store["id"])


def test_root_volume_snapshot_needs_a_large_enough_offering(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    vm = _vm(cloud)
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(tmp / "primary" / root["path"], "write -P 0x44 2M 1M")
    snap = api.createSnapshot(volumeid=root["id"])["snapshot"]
    assert snap["volumetype"] == "ROOT" and snap["name"].startswith(f"{vm['name']}_{root['name']}_")
    code, text = error_of(lambda: api.createVolume(name="r", snapshotid=snap["id"]))
    assert code == 431 and "diskofferingid" in text
    custom = api.createDiskOffering(name="custom", customized=True, displaytext="custom")["diskoffering"]
    code, text = error_of(lambda: api.createVolume(name="r", snapshotid=snap["id"], diskofferingid=custom["id"],
                                                   size=0))
    assert code == 431
    big = api.createDiskOffering(name="d2", disksize=2, displaytext="d2")["diskoffering"]
    vol = api.createVolume(name="r", snapshotid=snap["id"], diskofferingid=big["id"])["volume"]
    assert vol["type"] == "DATADISK" and vol["size"] == 2 * 2 ** 30
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    path = tmp / "primary" / api.listVolumes(id=vol["id"])["volume"][0]["path"]
    qemu_io(path, "read -P 0x44 2M 1M")
    assert img_info(path)["virtual-size"] == 2 * 2 ** 30

    # a template from the ROOT snapshot boots new VMs with the snapshot's disk
    t = api.createTemplate(name="from-snap", snapshotid=snap["id"])["template"]
    assert t["isready"] is True and t["size"] == 2 ** 30
    qemu_io(tmp / "store" / f"{t['id']}.qcow2", "read -P 0x44 2M 1M")
    vm2 = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                   templateid=t["id"])["virtualmachine"]
    root2 = api.listVolumes(virtualmachineid=vm2["id"], type="ROOT")["volume"][0]
    qemu_io(tmp / "primary" / root2["path"], "read -P 0x44 2M 1M")
    code, text = error_of(lambda: api.createTemplate(name="x", snapshotid=snap["id"], volumeid=root["id"]))
    assert code == 431 and "either" in text


def test_snapshot_bad_input_is_refused_with_clear_errors(cloud):
    from volstack.db.snapshot_models import Snapshot
    from volstack.db.storage_models import Volume
    api = cloud["api"]
    vm = _vm(cloud)
    vol, offering = _data_volume(cloud, vm)
    code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"]))
    assert code == 534 and "addImageStore" in text                 # no image store to back up to
    add_store(cloud)
    idle = api.createVolume(name="idle", zoneid=cloud["zone"]["id"], diskofferingid=offering["id"])["volume"]
    code, text = error_of(lambda: api.createSnapshot(volumeid=idle["id"]))
    assert code == 431 and "Allocated" in text and "attach" in text
    for state in ("Migrating", "Resizing"):
        _set_state(cloud, Volume, vol["id"], state)
        code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"]))
        assert code == 431 and state in text and "wait" in text
    _set_state(cloud, Volume, vol["id"], "Ready")
    api.updateConfiguration(name="kvm.snapshot.enabled", value="false")
    code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"]))
    assert code == 431 and "kvm.snapshot.enabled" in text
    assert api.listSnapshots() == {}                                # refused requests leave no row
    api.updateConfiguration(name="kvm.snapshot.enabled", value="true")

    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    code, text = error_of(lambda: api.revertSnapshot(id=snap["id"]))
    assert code == 431 and "stop the VM" in text                     # its VM runs
    api.stopVirtualMachine(id=vm["id"])
    _set_state(cloud, Volume, vol["id"], "RevertSnapshotting")        # its VM waits for a revert to finish
    code, text = error_of(lambda: api.startVirtualMachine(id=vm["id"]))
    assert code == 431 and "RevertSnapshotting" in text
    _set_state(cloud, Volume, vol["id"], "Ready")
    _set_state(cloud, Snapshot, snap["id"], "BackingUp")
    code, text = error_of(lambda: api.revertSnapshot(id=snap["id"]))
    assert code == 431 and "BackingUp" in text and "wait for the backup" in text
    code, text = error_of(lambda: api.deleteSnapshot(id=snap["id"]))
    assert code == 431 and "BackingUp" in text
    _set_state(cloud, Snapshot, snap["id"], "BackedUp")
    code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"], policyid=snap["id"]))
    assert code == 431 and "Unable to find snapshot policy" in text
    # another tenant neither sees nor touches the snapshot
    acc = api.createAccount(username="bob", password="pw-bob", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    bob = client(cloud["server"], keys["apikey"], keys["secretkey"])
    assert bob.listSnapshots() == {} and bob.listSnapshots(listall=True) == {}
    code, _ = error_of(lambda: bob.deleteSnapshot(id=snap["id"]))
    assert code == 531
    code, _ = error_of(lambda: bob.createVolume(name="steal", snapshotid=snap["id"]))
    assert code == 531
    assert api.listSnapshots(id=snap["id"])["snapshot"][0]["state"] == "BackedUp"


def test_failed_backup_keeps_the_primary_copy_and_delete_removes_it(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    store = add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    api.stopVirtualMachine(id=vm["id"])
    image = tmp / "primary" / vol["path"]
    (tmp / "store").rename(tmp / "store-away")          # the store's directory is gone: the backup fails
    code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"], name="kept"))
    assert code == 534 and store["name"] in text
    snap = api.listSnapshots(name="kept")["snapshot"][0]
    assert (snap["state"], snap["locationtype"], snap["revertable"]) == ("CreatedOnPrimary", "PRIMARY", False)
    assert "kept on primary storage" in snap["status"]
    assert [s["name"] for s in img_info(image)["snapshots"]] == [f"snap-{snap['id']}"]
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"
    code, text = error_of(lambda: api.revertSnapshot(id=snap["id"]))
    assert code == 431 and "backed-up" in text
    api.deleteSnapshot(id=snap["id"])
    assert "snapshots" not in img_info(image) and api.listSnapshots() == {}


def test_interrupted_snapshot_jobs_are_settled(cloud):
    from volstack.db.snapshot_models import Snapshot
    from volstack.db.storage_models import Volume
    from volstack.services import snapshots
    from volstack.services.context import system_context
    api = cloud["api"]
    add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    db = cloud["server"].db
    # its backup is complete on the store, so an interrupted BackingUp adopts it (tests/faults/test_backup_adoption.py
    # has the backup that did not finish)
    for was, now in (("Creating", "Error"), ("BackingUp", "BackedUp"), ("Destroying", "BackedUp")):
        _set_state(cloud, Snapshot, snap["id"], was)
        _set_state(cloud, Volume, vol["id"], "Snapshotting")
        snapshots.settle_interrupted(db, system_context(), snap["id"], "createSnapshot")
        with db.session(readonly=True) as s:
            row = s.scalar(select(Snapshot).where(Snapshot.uuid == snap["id"]))
            assert (row.state, s.scalar(select(Volume.state).where(Volume.uuid == vol["id"]))) == (now, "Ready")
            assert "interrupted" in row.error


def test_async_backup_ends_the_job_on_primary_and_backs_up_in_the_background(cloud):
    from agentproc import wait_until
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(tmp / "primary" / vol["path"], "write -P 0x55 0 1M")
    snap = api.createSnapshot(volumeid=vol["id"], asyncbackup=True)["snapshot"]
    assert (snap["state"], snap["locationtype"]) == ("CreatedOnPrimary", "PRIMARY")
    wait_until("the background backup", lambda: api.listSnapshots(id=snap["id"])["snapshot"][0]["state"] == "BackedUp")
    wait_until("the volume released", lambda: api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready")
    qemu_io(tmp / "store" / f"{snap['id']}.qcow2", "read -P 0x55 0 1M")
    assert "snapshots" not in img_info(tmp / "primary" / vol["path"])


@pytest.mark.usefixtures("db_url")       # on SQLite and PostgreSQL
def test_snapshots_on_simulator_hosts(dc):
    """CloudStack's simulator hosts answer every snapshot command at once (no bytes), for control-plane tests."""
    api = dc["api"]
    api.addImageStore(name="sec", provider="NFS", url="nfs://10.0.0.1/sec", zoneid=dc["zone"]["id"])
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=2)["virtualmachine"]
    vol = api.createVolume(name="d", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    assert snap["state"] == "BackedUp" and snap["virtualsize"] == 5 * 2 ** 30
    api.stopVirtualMachine(id=vm["id"])
    assert api.revertSnapshot(id=snap["id"])["snapshot"]["id"] == snap["id"]
    new = api.createVolume(name="n", snapshotid=snap["id"])["volume"]
    assert new["diskofferingid"] == dc["do"]["id"]
    api.attachVolume(id=new["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    assert api.listVolumes(id=new["id"])["volume"][0]["state"] == "Ready"
    api.deleteSnapshot(id=snap["id"])
    assert api.listSnapshots() == {}


def test_users_snapshot_their_own_volumes_within_their_limit(cloud):
    api = cloud["api"]
    add_store(cloud)
    acc = api.createAccount(username="carol", password="pw-carol", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    carol = client(cloud["server"], keys["apikey"], keys["secretkey"])
    api.updateResourceLimit(account=acc["name"], domainid=acc["domainid"], resourcetype=3, max=1)
    vm = _vm(dict(cloud, api=carol))
    root = carol.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    snap = carol.createSnapshot(volumeid=root["id"])["snapshot"]
    assert snap["state"] == "BackedUp" and snap["account"] == "carol"
    code, text = error_of(lambda: carol.createSnapshot(volumeid=root["id"]))
    assert code == 535
    assert carol.listSnapshots()["count"] == 1 and api.listSnapshots() == {}
    assert api.listSnapshots(listall=True)["count"] == 1
    from volstack.db.models import Account
    from volstack.services import limits

    def secondary_bytes():
        with cloud["server"].db.session(readonly=True) as s:
            acc_id = s.scalar(select(Account.id).where(Account.uuid == acc["id"]))
            return limits.usage_of(s, acc_id, "secondary_storage")
    assert secondary_bytes() == snap["physicalsize"] > 0
    carol.deleteSnapshot(id=snap["id"])
    assert secondary_bytes() == 0
    api.updateResourceLimit(account=acc["name"], domainid=acc["domainid"], resourcetype=11, max=0)
    code, text = error_of(lambda: carol.createSnapshot(volumeid=root["id"]))
    assert code == 535 and "secondary" in text.lower()
    api.updateResourceLimit(account=acc["name"], domainid=acc["domainid"], resourcetype=11, max=-1)
    assert carol.createSnapshot(volumeid=root["id"])["snapshot"]["state"] == "BackedUp"
