"""Incremental snapshot backups and per-host snapshot throttling through the API, with a real `volstack agent`
(simulated guests, real qcow2 images on a SharedMountPoint pool and a Filesystem image store). Bytes are checked
with qemu-io on the images and the store's files."""
import json
import subprocess

from sqlalchemy import select

from helpers import wait_job
from support import client
from test_snapshots import _data_volume, _vm
from test_templates import add_store, cloud, img_info, qemu_io  # noqa: F401  (cloud is a fixture)
from test_volumes_sim import dc  # noqa: F401  (a fixture: a zone of in-memory Simulator hosts)

MIB = 1024 ** 2


def _bitmaps(path):
    return [b["name"] for b in img_info(path)["format-specific"]["data"].get("bitmaps") or []]


def _chain(path):
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return [img["filename"].rsplit("/", 1)[-1] for img in json.loads(out)]


def _incremental_on(api):
    api.updateConfiguration(name="kvm.incremental.snapshot", value="true")


def test_incremental_chain_small_deltas_delete_middle_newest_and_full_restore_without_primary(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    _incremental_on(api)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)                       # 1 GiB, its VM running
    image, store = tmp / "primary" / vol["path"], tmp / "store"
    qemu_io(image, "write -P 0x11 0 256M")

    s1 = api.createSnapshot(volumeid=vol["id"], name="s1")["snapshot"]
    assert "parent" not in s1 and _chain(store / f"{s1['id']}.qcow2") == [f"{s1['id']}.qcow2"]
    assert _bitmaps(image) == [f"volstack-{s1['id']}"]
    qemu_io(image, "write -P 0x22 16M 10M")                 # 1 % of the volume changes
    s2 = api.createSnapshot(volumeid=vol["id"], name="s2")["snapshot"]
    assert (s2["parent"], s2["parentname"]) == (s1["id"], "s1")
    assert s2["physicalsize"] < 12 * MIB and s2["physicalsize"] * 20 < s1["physicalsize"], (s1, s2)
    api.stopVirtualMachine(id=vm["id"])                    # the next one is taken offline (qemu-storage-daemon)
    qemu_io(image, "write -P 0x33 64M 1M")
    s3 = api.createSnapshot(volumeid=vol["id"], name="s3")["snapshot"]
    assert s3["parent"] == s2["id"] and s3["physicalsize"] < 2 * MIB
    assert s3["chainsize"] == s1["physicalsize"] + s2["physicalsize"] + s3["physicalsize"]
    assert _chain(store / f"{s3['id']}.qcow2") == [f"{x['id']}.qcow2" for x in (s3, s2, s1)]
    assert sorted(p.name for p in (tmp / "primary").iterdir() if "snap" in p.name) == []

    # revert to the second of three: exactly its data
    api.revertSnapshot(id=s2["id"])
    for cmd in ("read -P 0x11 0 16M", "read -P 0x22 16M 10M", "read -P 0x11 26M 230M"):
        qemu_io(image, cmd)
    assert _bitmaps(image) == []                            # a reverted image is new: the next snapshot is full

    # deleting the middle merges it into its child; then the newest goes alone; the rest stays whole
    api.deleteSnapshot(id=s2["id"])
    assert not (store / f"{s2['id']}.qcow2").exists()
    s3 = api.listSnapshots(id=s3["id"])["snapshot"][0]
    assert s3["parent"] == s1["id"] and _chain(store / f"{s3['id']}.qcow2") == [f"{x['id']}.qcow2" for x in (s3, s1)]
    for cmd in ("read -P 0x11 0 16M", "read -P 0x22 16M 10M", "read -P 0x33 64M 1M", "read -P 0x11 65M 191M"):
        qemu_io(store / f"{s3['id']}.qcow2", cmd)
    api.deleteSnapshot(id=s3["id"])
    qemu_io(store / f"{s1['id']}.qcow2", "read -P 0x11 0 256M")
    assert [x["name"] for x in api.listSnapshots(volumeid=vol["id"])["snapshot"]] == ["s1"]

    # deleting the oldest (the full one) makes its child full
    s4 = api.createSnapshot(volumeid=vol["id"], name="s4")["snapshot"]
    assert "parent" not in s4                               # after the revert: full
    qemu_io(image, "write -P 0x44 128M 64k")
    s5 = api.createSnapshot(volumeid=vol["id"], name="s5")["snapshot"]
    assert s5["parent"] == s4["id"]
    api.deleteSnapshot(id=s4["id"])
    assert "parent" not in api.listSnapshots(id=s5["id"])["snapshot"][0]
    assert _chain(store / f"{s5['id']}.qcow2") == [f"{s5['id']}.qcow2"]

    # the backups need nothing on primary: the volume and every file of it gone, a new volume from s5 restores
    api.detachVolume(id=vol["id"])
    api.deleteVolume(id=vol["id"])
    assert sorted(p.name for p in (tmp / "primary").iterdir() if vol["path"] in p.name or "snap" in p.name) == []
    new = api.createVolume(name="restored", snapshotid=s5["id"])["volume"]
    api.attachVolume(id=new["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    restored = tmp / "primary" / api.listVolumes(id=new["id"])["volume"][0]["path"]
    for cmd in ("read -P 0x11 0 16M", "read -P 0x22 16M 10M", "read -P 0x11 26M 102M", "read -P 0x44 128M 64k"):
        qemu_io(restored, cmd)


def test_incremental_is_off_by_default_and_a_full_comes_every_delta_max(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    api.stopVirtualMachine(id=vm["id"])
    plain = [api.createSnapshot(volumeid=vol["id"])["snapshot"] for _ in range(2)]
    assert all("parent" not in x for x in plain) and _bitmaps(image) == []      # kvm.incremental.snapshot=false

    _incremental_on(api)
    api.updateConfiguration(name="snapshot.delta.max", value="2")
    parents = []
    for i in range(5):
        qemu_io(image, f"write -P {0x50 + i} {i}M 64k")
        parents.append(api.createSnapshot(volumeid=vol["id"])["snapshot"].get("parent"))
    assert [p is not None for p in parents] == [False, True, True, False, True]

    # a backup its incremental child still reads stays on its store; a leaf moves (flattened)
    (tmp / "store2").mkdir()
    src = api.listImageStores()["imagestore"][0]
    other = api.addImageStore(name="b", provider="Filesystem", url=f"file://{tmp / 'store2'}",
                              zoneid=cloud["zone"]["id"])["imagestore"]
    api.migrateSecondaryStorageData(srcpool=src["id"], destpools=other["id"], migrationtype="Complete")
    snaps = api.listSnapshots(volumeid=vol["id"])["snapshot"]
    moved = [x for x in snaps if x.get("datastoreid") == other["id"]]
    assert moved and all("parent" not in x for x in moved)
    for x in moved:
        assert _chain(tmp / "store2" / f"{x['id']}.qcow2") == [f"{x['id']}.qcow2"]
    newest = snaps[-1]
    assert newest in moved
    qemu_io(tmp / "store2" / f"{newest['id']}.qcow2", "read -P 0x54 4M 64k")
    qemu_io(tmp / "store2" / f"{newest['id']}.qcow2", "read -P 0x53 3M 64k")


def test_snapshot_jobs_queue_per_host_and_expire(cloud):
    """concurrent.snapshots.threshold.perhost: a snapshot job waits (pending) while its host's slots are taken,
    runs when one frees, and fails with the reason after job.expire.minutes; jobs of one volume share its key."""
    from datetime import timedelta

    from volstack.db.models import AsyncJob, JobLock, utcnow
    from volstack.db.snapshot_models import Snapshot
    api, server = cloud["api"], cloud["server"]
    add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    api.updateConfiguration(name="concurrent.snapshots.threshold.perhost", value="1")
    slot = f"snapshothost:{cloud['host']['id']}#0"
    raw = client(server, fetch_result=False)

    def hold_slot():            # as a running snapshot job of the same host does
        with server.db.session() as s:
            s.add(JobLock(sync_key=slot, job_id=0))

    hold_slot()
    queued = raw.createSnapshot(volumeid=vol["id"], name="queued")
    assert server.jobs._claim() is None                    # nothing may start: the host's one slot is taken
    job = raw.queryAsyncJobResult(jobid=queued["jobid"])
    assert job["jobstatus"] == 0 and job["jobinstanceid"] == queued["id"]
    with server.db.session(readonly=True) as s:
        row = s.scalar(select(AsyncJob).where(AsyncJob.uuid == queued["jobid"]))
        assert (row.sync_key, row.queue_key, row.running) == (f"Volume:{vol['id']}",
                                                              f"snapshothost:{cloud['host']['id']}", False)
    with server.db.session() as s:
        s.delete(s.get(JobLock, slot))
    server.jobs.wake()
    assert wait_job(server, queued["jobid"])["jobstatus"] == 1
    assert api.listSnapshots(id=queued["id"])["snapshot"][0]["state"] == "BackedUp"

    hold_slot()
    late = raw.createSnapshot(volumeid=vol["id"], name="late")
    with server.db.session() as s:
        s.scalar(select(AsyncJob).where(AsyncJob.uuid == late["jobid"])).created = utcnow() - timedelta(days=2)
    server.jobs.expire()
    job = raw.queryAsyncJobResult(jobid=late["jobid"])
    assert (job["jobstatus"], job["jobresultcode"]) == (2, 534)
    assert "concurrent.snapshots.threshold.perhost" in job["jobresult"]["errortext"]
    with server.db.session(readonly=True) as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == late["id"]))
        assert snap.state == "Error" and "job.expire.minutes" in snap.error
    assert [x["name"] for x in api.listSnapshots()["snapshot"]] == ["queued"]
    with server.db.session() as s:
        s.delete(s.get(JobLock, slot))

    # unlimited again (the setting's default, null): both run
    api.updateConfiguration(name="concurrent.snapshots.threshold.perhost", value="")
    assert api.createSnapshot(volumeid=vol["id"])["snapshot"]["state"] == "BackedUp"


def test_snapshots_of_one_volume_wait_for_each_other_and_for_the_volume(cloud):
    """Two createSnapshot calls on one volume queue on the volume's key rather than failing or interleaving;
    a snapshot's parent is never still being backed up; asyncbackup's backup runs before the next job."""
    api, server = cloud["api"], cloud["server"]
    add_store(cloud)
    _incremental_on(api)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    raw = client(server, fetch_result=False)
    first = raw.createSnapshot(volumeid=vol["id"], name="a")
    second = raw.createSnapshot(volumeid=vol["id"], name="b")
    assert wait_job(server, first["jobid"])["jobstatus"] == 1
    assert wait_job(server, second["jobid"])["jobstatus"] == 1
    b = api.listSnapshots(id=second["id"])["snapshot"][0]
    assert b["state"] == "BackedUp" and b["parent"] == first["id"]
    api.deleteSnapshot(id=first["id"])                     # its child takes its data in
    assert "parent" not in api.listSnapshots(id=second["id"])["snapshot"][0]


def test_an_interrupted_delete_of_a_parent_is_never_used_again_but_still_deletes(cloud):
    from volstack.db.snapshot_models import Snapshot
    from volstack.services import snapshots
    from volstack.services.context import system_context
    api, tmp, server = cloud["api"], cloud["tmp"], cloud["server"]
    add_store(cloud)
    _incremental_on(api)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x11 0 8M")
    a = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    qemu_io(image, "write -P 0x22 0 64k")
    b = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    with server.db.session() as s:
        s.scalar(select(Snapshot).where(Snapshot.uuid == a["id"])).state = "Destroying"
    snapshots.settle_interrupted(server.db, system_context(), a["id"], "deleteSnapshot")
    with server.db.session(readonly=True) as s:
        row = s.scalar(select(Snapshot).where(Snapshot.uuid == a["id"]))
        assert row.state == "Error" and "merged into its incremental child" in row.error
    assert [x["id"] for x in api.listSnapshots()["snapshot"]] == [b["id"]]
    api.deleteSnapshot(id=a["id"])                          # an administrator finishes it: the child stays whole
    assert _chain(tmp / "store" / f"{b['id']}.qcow2") == [f"{b['id']}.qcow2"]
    qemu_io(tmp / "store" / f"{b['id']}.qcow2", "read -P 0x22 0 64k")
    qemu_io(tmp / "store" / f"{b['id']}.qcow2", "read -P 0x11 64k 8128k")

    # interrupted after the store's merge, before the database heard of it: the next delete only tidies up
    qemu_io(image, "write -P 0x33 0 64k")
    c = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    assert c["parent"] == b["id"]
    store = {"uuid": "s", "type": "Filesystem", "path": str(tmp / "store")}
    cloud["agent"].client.call("snapshot_merge", pool=store, name=f"{c['id']}.qcow2", parent=f"{b['id']}.qcow2")
    with server.db.session() as s:
        s.scalar(select(Snapshot).where(Snapshot.uuid == b["id"])).state = "Destroying"
    snapshots.settle_interrupted(server.db, system_context(), b["id"], "deleteSnapshot")
    api.deleteSnapshot(id=b["id"])
    assert api.listSnapshots()["snapshot"] == [api.listSnapshots(id=c["id"])["snapshot"][0]]
    assert "parent" not in api.listSnapshots(id=c["id"])["snapshot"][0]
    qemu_io(tmp / "store" / f"{c['id']}.qcow2", "read -P 0x33 0 64k")
    qemu_io(tmp / "store" / f"{c['id']}.qcow2", "read -P 0x11 64k 8128k")


def test_backups_on_an_nfs_store_stay_full(dc):
    """Chains need a store reached as a directory (QEMU's NFS driver misreads bare backing names)."""
    api = dc["api"]
    api.addImageStore(name="sec", provider="NFS", url="nfs://10.0.0.1/sec", zoneid=dc["zone"]["id"])
    _incremental_on(api)
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=2)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    snaps = [api.createSnapshot(volumeid=root["id"])["snapshot"] for _ in range(2)]
    assert all(x["state"] == "BackedUp" and "parent" not in x for x in snaps)
