"""Snapshots of volumes on RBD pools through the API (issue 5 item 4) on a real one-node Ceph cluster, `volstack
agent` processes with real QEMU and a Filesystem image store; and the acceptance: a TCG guest's data survives
snapshot -> revert -> migrate RBD -> NFS -> RBD."""
import hashlib
import json
import os

import pytest
from cs import CloudStackApiException

from guest import guest_image_dir, pattern_sha256
from test_rbd_pools import create_rbd_pool, kvm, paused_vm  # noqa: F401  (kvm is a fixture)
from test_storage_real import boot, serial
from volstack.agent.rbd import RbdPool

MIB = 2 ** 20
GIB = 2 ** 30
pytestmark = pytest.mark.slow


def _store(kvm, tmp_path):
    (tmp_path / "store").mkdir()
    kvm["api"].addImageStore(name="store", provider="Filesystem", url=f"file://{tmp_path / 'store'}",
                             zoneid=kvm["zone"]["id"])
    return tmp_path / "store"


def _rbd_volume(kvm, ceph, vm, name="data", gib=1):
    api = kvm["api"]
    off = api.createDiskOffering(name=f"rbd-{name}", displaytext="rbd", customized=True, tags="RBD")["diskoffering"]
    vol = api.createVolume(diskofferingid=off["id"], name=name, zoneid=kvm["zone"]["id"], size=gib)["volume"]
    return api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"], off


def _write(spec, image, seed: int, mib: int, offset_mib: int = 0) -> bytes:
    data = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32) * mib
    with RbdPool(spec, "test").image(image) as img:
        img.write(data, offset_mib * MIB)
    return data


def _read(spec, image, mib: int, offset_mib: int = 0) -> bytes:
    with RbdPool(spec, "test").image(image, read_only=True) as img:
        return img.read(offset_mib * MIB, mib * MIB)


def _rbd_snaps(ceph, image) -> list[str]:
    return [s["name"] for s in json.loads(ceph.rbd("snap", "ls", "--format", "json", f"{ceph.pool}/{image}"))]


def _events(api, kind) -> list[str]:
    return [e["description"] for e in api.listEvents(type=kind, listall=True).get("event", [])]


def test_rbd_snapshots_incremental_backups_revert_clones_templates_and_deletion(kvm, ceph, tmp_path):
    api = kvm["api"]
    store = _store(kvm, tmp_path)
    pool = create_rbd_pool(kvm, ceph, name="snaps")
    spec = ceph.spec(uuid=pool["id"])
    vm = paused_vm(kvm)
    vol, off = _rbd_volume(kvm, ceph, vm)
    a = _write(spec, vol["path"], seed=1, mib=8)

    # 1: taken while the guest runs, backed up in full as an export-diff file
    s1 = api.createSnapshot(volumeid=vol["id"], name="s1")["snapshot"]
    assert (s1["state"], s1["locationtype"], s1["virtualsize"]) == ("BackedUp", "SECONDARY", GIB)
    assert (store / f"{s1['id']}.rbddiff").exists()
    assert _rbd_snaps(ceph, vol["path"]) == [f"snap-{s1['id']}"], "the newest snapshot stays on primary"
    b = _write(spec, vol["path"], seed=2, mib=1, offset_mib=3)

    # 2: only the changes since s1 go to the store; s1 leaves primary
    s2 = api.createSnapshot(volumeid=vol["id"], name="s2")["snapshot"]
    assert s2["state"] == "BackedUp"
    assert (store / f"{s2['id']}.rbddiff").stat().st_size < 4.5 * MIB < (store / f"{s1['id']}.rbddiff").stat().st_size
    assert any("changes since snapshot s1" in d for d in _events(api, "SNAPSHOT.BACKUP"))
    assert _rbd_snaps(ceph, vol["path"]) == [f"snap-{s2['id']}"]
    at_s2 = a[:3 * MIB] + b + a[4 * MIB:]
    _write(spec, vol["path"], seed=3, mib=8)

    # revert needs the guest stopped or the volume detached (as CloudStack)
    with pytest.raises(CloudStackApiException) as e:
        api.revertSnapshot(id=s1["id"])
    assert e.value.error["errorcode"] == 431 and "stop the VM" in e.value.error["errortext"]
    api.detachVolume(id=vol["id"])
    api.revertSnapshot(id=s1["id"])                          # no longer on primary: restored from the store
    assert _read(spec, vol["path"], 8) == a
    api.revertSnapshot(id=s2["id"])                          # still on primary: rbd snap rollback
    assert _read(spec, vol["path"], 8) == at_s2
    reverts = _events(api, "SNAPSHOT.REVERT")
    assert any("restored from its backup" in d for d in reverts) and any("rolled back" in d for d in reverts)
    assert _rbd_snaps(ceph, vol["path"]) == [f"snap-{s2['id']}"], "a restore keeps the image's snapshots"

    # volumes from snapshots: a clone of s2 on the same pool, a restore of s1's backup
    v2 = api.createVolume(name="from-s2", snapshotid=s2["id"])["volume"]
    v2 = api.attachVolume(id=v2["id"], virtualmachineid=vm["id"])["volume"]
    parent = ceph.image_info(v2["path"])["parent"]
    assert (parent["image"], parent["snapshot"]) == (vol["path"], f"snap-{s2['id']}")
    assert _read(spec, v2["path"], 8) == at_s2
    v1 = api.createVolume(name="from-s1", snapshotid=s1["id"])["volume"]
    v1 = api.attachVolume(id=v1["id"], virtualmachineid=vm["id"])["volume"]
    assert "parent" not in ceph.image_info(v1["path"]) and _read(spec, v1["path"], 8) == a

    # a template from the incremental snapshot: the chain restored into a flat qcow2 on the store
    ostype = api.listOsTypes(description="Debian GNU/Linux 12")["ostype"][0]["id"]
    t = api.createTemplate(name="from-s2", displaytext="t", snapshotid=s2["id"], ostypeid=ostype)["template"]
    raw = tmp_path / "t.raw"
    qcow = next(p for p in store.iterdir() if p.name.startswith(t["id"]))
    assert os.system(f"qemu-img convert -f qcow2 -O raw {qcow} {raw}") == 0
    with open(raw, "rb") as f:
        assert f.read(8 * MIB) == at_s2

    # deleting s1 keeps its file while s2 builds on it; deleting the volume keeps the snapshots (backups) and
    # flattens the clone of s2; a volume from s2 then comes from the store
    api.deleteSnapshot(id=s1["id"])
    assert [x["name"] for x in api.listSnapshots(volumeid=vol["id"])["snapshot"]] == ["s2"]
    assert (store / f"{s1['id']}.rbddiff").exists()
    api.deleteVolume(id=vol["id"])
    assert vol["path"] not in ceph.images()
    assert "parent" not in ceph.image_info(v2["path"]) and _read(spec, v2["path"], 8) == at_s2
    left = api.listSnapshots(id=s2["id"])["snapshot"][0]
    assert left["volumestate"] == "Expunged" and left["locationtype"] == "SECONDARY"
    v3 = api.createVolume(name="from-s2-again", snapshotid=s2["id"], diskofferingid=off["id"], size=1)["volume"]
    v3 = api.attachVolume(id=v3["id"], virtualmachineid=vm["id"])["volume"]
    assert _read(spec, v3["path"], 8) == at_s2
    api.deleteSnapshot(id=s2["id"])
    assert not list(store.glob("*.rbddiff")), "the last snapshot of the chain takes the kept backup with it"


def test_delta_max_zero_makes_every_backup_full_and_a_rollback_needs_no_store(kvm, ceph, tmp_path):
    api = kvm["api"]
    store = _store(kvm, tmp_path)
    pool = create_rbd_pool(kvm, ceph, name="full")
    spec = ceph.spec(uuid=pool["id"])
    vm = paused_vm(kvm)
    vol, _ = _rbd_volume(kvm, ceph, vm, name="f")
    api.updateConfiguration(name="snapshot.delta.max", value="0")
    _write(spec, vol["path"], seed=4, mib=4)
    s1 = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    _write(spec, vol["path"], seed=5, mib=1)
    s2 = api.createSnapshot(volumeid=vol["id"], asyncbackup="true")["snapshot"]
    assert s2["state"] in ("CreatedOnPrimary", "BackingUp", "BackedUp")
    from agentproc import wait_until
    wait_until("the background backup", lambda: api.listSnapshots(id=s2["id"])["snapshot"][0]["state"] == "BackedUp",
               timeout=60, interval=0.2)
    sizes = [(store / f"{s['id']}.rbddiff").stat().st_size for s in (s1, s2)]
    assert min(sizes) > 3.5 * MIB, f"both backups are full: {sizes}"
    assert not any("changes since" in d for d in _events(api, "SNAPSHOT.BACKUP"))


def test_kept_on_primary_rolls_back_clones_and_outlives_later_backups_but_not_its_volume(kvm, ceph, tmp_path):
    api = kvm["api"]
    store = _store(kvm, tmp_path)
    pool = create_rbd_pool(kvm, ceph, name="keep")
    spec = ceph.spec(uuid=pool["id"])
    vm = paused_vm(kvm)
    vol, _ = _rbd_volume(kvm, ceph, vm, name="k")
    a = _write(spec, vol["path"], seed=7, mib=2)
    p = api.createSnapshot(volumeid=vol["id"], name="p", locationtype="PRIMARY")["snapshot"]
    assert (p["state"], p["locationtype"]) == ("BackedUp", "PRIMARY") and not list(store.iterdir())
    _write(spec, vol["path"], seed=8, mib=2)
    s = api.createSnapshot(volumeid=vol["id"], name="s")["snapshot"]       # a backup trims older ones, not p
    assert s["locationtype"] == "SECONDARY" and "parent" not in s
    assert sorted(_rbd_snaps(ceph, vol["path"])) == sorted([f"snap-{p['id']}", f"snap-{s['id']}"])
    with pytest.raises(CloudStackApiException) as e:
        api.createTemplate(name="t", displaytext="t", snapshotid=p["id"])
    assert e.value.error["errorcode"] == 431 and "locationtype=SECONDARY" in e.value.error["errortext"]
    v = api.createVolume(name="from-p", snapshotid=p["id"])["volume"]          # a clone of the kept snapshot
    v = api.attachVolume(id=v["id"], virtualmachineid=vm["id"])["volume"]
    assert ceph.image_info(v["path"])["parent"]["snapshot"] == f"snap-{p['id']}" and _read(spec, v["path"], 2) == a
    api.detachVolume(id=vol["id"])
    api.revertSnapshot(id=p["id"])
    assert _read(spec, vol["path"], 2) == a
    assert any("rolled back" in d for d in _events(api, "SNAPSHOT.REVERT"))
    api.deleteVolume(id=vol["id"])                  # p goes with its image (the clone is flattened), s lives on
    assert [x["name"] for x in api.listSnapshots(listall=True)["snapshot"]] == ["s"]
    assert "parent" not in ceph.image_info(v["path"]) and _read(spec, v["path"], 2) == a


def test_acceptance_guest_data_survives_snapshot_revert_and_migration_rbd_nfs_rbd(kvm, ceph, tmp_path, nfs_pool):
    """Issue 5 acceptance: a TCG guest writes to its RBD data volume; the data survives snapshot -> revert ->
    migrate RBD -> NFS -> RBD, checked by the guest itself each time."""
    api = kvm["api"]
    _store(kvm, tmp_path)
    rbd = create_rbd_pool(kvm, ceph, name="ceph")
    nfs_url, nfs_dir = nfs_pool
    nfs = api.createStoragePool(name="nfs", url=nfs_url, zoneid=kvm["zone"]["id"], podid=kvm["pod"]["id"],
                                clusterid=kvm["cluster"]["id"], tags="NFS")["storagepool"]
    kvm["so"] = api.createServiceOffering(name="guest", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                          displaytext="guest")["serviceoffering"]
    kvm["image"] = guest_image_dir()
    vm, con = boot(kvm, 0)
    vol, _ = _rbd_volume(kvm, ceph, vm, name="acc")
    assert vol["storageid"] == rbd["id"]
    dev = serial(vol)
    con.dev(dev)
    con.write(dev, seed=11, mib=8)
    s1 = api.createSnapshot(volumeid=vol["id"], name="acc-1")["snapshot"]     # the guest runs meanwhile
    assert s1["state"] == "BackedUp"
    con.write(dev, seed=12, mib=2, offset_mib=2)
    s2 = api.createSnapshot(volumeid=vol["id"], name="acc-2")["snapshot"]
    con.write(dev, seed=13, mib=8)                                             # the guest then ruins its data
    assert con.checksum(dev, 8) == pattern_sha256(13, 8)
    at_s2 = hashlib.sha256(_pattern(11, 0, 2) + _pattern(12, 0, 2) + _pattern(11, 4, 4)).hexdigest()

    def check(want, label):
        api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
        con.dev(dev)
        assert con.checksum(dev, 8) == want, label
        api.detachVolume(id=vol["id"])

    api.detachVolume(id=vol["id"])
    api.revertSnapshot(id=s2["id"])                                           # rollback on the image
    check(at_s2, "reverted to s2 by rollback")
    api.revertSnapshot(id=s1["id"])                                           # restored from the store
    check(pattern_sha256(11, 8), "reverted to s1 from its backup")
    moved = api.migrateVolume(volumeid=vol["id"], storageid=nfs["id"])["volume"]
    assert moved["storageid"] == nfs["id"] and (nfs_dir / moved["path"]).exists()
    assert vol["path"] not in ceph.images(), "the image and its snapshots left Ceph"
    check(pattern_sha256(11, 8), "on NFS")
    api.revertSnapshot(id=s2["id"])                                           # an RBD backup onto an NFS volume
    check(at_s2, "reverted to s2 on NFS")
    back = api.migrateVolume(volumeid=vol["id"], storageid=rbd["id"])["volume"]
    assert back["storageid"] == rbd["id"] and back["path"] in ceph.images()
    check(at_s2, "back on RBD")
    s3 = api.createSnapshot(volumeid=vol["id"], name="acc-3")["snapshot"]     # a fresh full backup on the new image
    assert s3["state"] == "BackedUp"
    api.revertSnapshot(id=s1["id"])
    check(pattern_sha256(11, 8), "reverted to s1 on RBD again")


def _pattern(seed: int, first_mib: int, mib: int) -> bytes:
    from guest import pattern_bytes
    return pattern_bytes(seed, first_mib + mib)[first_mib * MIB:]
