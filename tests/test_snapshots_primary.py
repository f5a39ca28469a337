"""Snapshots kept on primary storage only (locationtype PRIMARY, snapshot.backup.to.secondary), automatic retries of
failed backups (backup.retry, backup.retry.interval) and the per-host slot of background backups, through the API
with a real `volstack agent` (simulated guests, real qcow2 images on a SharedMountPoint pool, a Filesystem store)."""
from datetime import timedelta

from sqlalchemy import select

from agentproc import wait_until
from helpers import wait_job
from support import client
from test_snapshots import _data_volume, _vm
from test_snapshots_incremental import _bitmaps, _incremental_on
from test_templates import add_store, cloud, error_of, img_info, qemu_io  # noqa: F401  (cloud is a fixture)

MIB = 1024 ** 2


def _internal(path):
    return [x["name"] for x in img_info(path).get("snapshots") or []]


def _events(api, kind):
    return [e["description"] for e in api.listEvents(type=kind, listall=True).get("event", [])]


def _status(api, snap_id):
    return api.listSnapshots(id=snap_id)["snapshot"][0]


def test_kept_on_primary_revert_volume_template_migration_and_deletion(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x11 0 1M")
    code, text = error_of(lambda: api.createSnapshot(volumeid=vol["id"], locationtype="tape"))
    assert code == 431 and "PRIMARY" in text and api.listSnapshots() == {}

    # no image store at all: a snapshot kept on primary needs none. Idle volume: an internal qcow2 snapshot
    p1 = api.createSnapshot(volumeid=vol["id"], name="p1", locationtype="primary")["snapshot"]
    assert (p1["state"], p1["locationtype"], p1["datastoretype"], p1["revertable"]) == \
        ("BackedUp", "PRIMARY", "Primary", True)
    assert "datastoreid" not in p1 and any("kept on storage pool primary only" in d
                                           for d in _events(api, "SNAPSHOT.CREATE"))
    qemu_io(image, "write -P 0x22 0 1M")
    api.updateConfiguration(name="snapshot.backup.to.secondary", value="false")      # CloudStack's global switch
    p2 = api.createSnapshot(volumeid=vol["id"], name="p2")["snapshot"]
    assert (p2["state"], p2["locationtype"]) == ("BackedUp", "PRIMARY")
    assert _internal(image) == [f"snap-{p1['id']}", f"snap-{p2['id']}"]

    # a running guest's disk: a file copy beside the image
    api.startVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x33 0 1M")
    p3 = api.createSnapshot(volumeid=vol["id"], name="p3")["snapshot"]
    assert p3["locationtype"] == "PRIMARY" and (tmp / "primary" / f"snap-{p3['id']}.qcow2").exists()
    assert api.listSnapshots(locationtype="PRIMARY")["count"] == 3 and api.listSnapshots(locationtype="SECONDARY") == {}
    code, text = error_of(lambda: api.revertSnapshot(id=p1["id"]))
    assert code == 431 and "stop the VM" in text
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x44 0 1M")

    # revert from primary, to any of them; the file copy is written in place so the internal ones survive
    api.revertSnapshot(id=p1["id"])
    qemu_io(image, "read -P 0x11 0 1M")
    api.revertSnapshot(id=p3["id"])
    qemu_io(image, "read -P 0x33 0 1M")
    assert _internal(image) == [f"snap-{p1['id']}", f"snap-{p2['id']}"]
    api.revertSnapshot(id=p2["id"])
    qemu_io(image, "read -P 0x22 0 1M")

    # a migration would lose them: refused, naming them
    cl = api.listClusters()["cluster"][0]
    (tmp / "primary2").mkdir()
    other = api.createStoragePool(name="primary2", url=f"SharedMountPoint://localhost{tmp / 'primary2'}",
                                  zoneid=cloud["zone"]["id"], podid=cl["podid"], clusterid=cl["id"])["storagepool"]
    code, text = error_of(lambda: api.migrateVolume(volumeid=vol["id"], storageid=other["id"]))
    assert code == 431 and "p1, p2, p3" in text and "only on primary" in text

    # a volume and a template from a snapshot kept on primary
    new = api.createVolume(name="from-p2", snapshotid=p2["id"])["volume"]
    api.attachVolume(id=new["id"], virtualmachineid=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    new = api.listVolumes(id=new["id"])["volume"][0]
    qemu_io(_image_of(tmp, new), "read -P 0x22 0 1M")
    add_store(cloud)
    t = api.createTemplate(name="from-p1", snapshotid=p1["id"])["template"]
    assert t["isready"] is True
    qemu_io(tmp / "store" / f"{t['id']}.qcow2", "read -P 0x11 0 1M")

    # deleting one while the guest runs: its internal snapshot goes through the guest's side
    api.deleteSnapshot(id=p2["id"])
    assert _internal(image) == [f"snap-{p1['id']}"]

    # deleting the volume takes the snapshots only on primary with it (CloudStack marks them Destroyed)
    api.stopVirtualMachine(id=vm["id"])
    api.detachVolume(id=vol["id"])
    api.deleteVolume(id=vol["id"])
    assert api.listSnapshots(volumeid=vol["id"]) == {}
    assert not (tmp / "primary" / f"snap-{p3['id']}.qcow2").exists()
    gone = [d for d in _events(api, "SNAPSHOT.DELETE") if "deleted with volume" in d]
    assert len(gone) == 2, gone


def _image_of(tmp, vol):
    pools = {"primary": tmp / "primary", "primary2": tmp / "primary2"}
    return pools[vol["storage"]] / vol["path"]


def test_snapshots_kept_on_primary_do_not_break_the_incremental_chain(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    _incremental_on(api)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x11 0 8M")
    s1 = api.createSnapshot(volumeid=vol["id"], name="s1")["snapshot"]
    assert _bitmaps(image) == [f"volstack-{s1['id']}"]
    qemu_io(image, "write -P 0x22 0 1M")
    p = api.createSnapshot(volumeid=vol["id"], name="p", locationtype="PRIMARY")["snapshot"]
    assert _bitmaps(image) == [f"volstack-{s1['id']}"], "a snapshot kept on primary leaves the bitmaps alone"
    qemu_io(image, "write -P 0x33 4M 1M")
    s2 = api.createSnapshot(volumeid=vol["id"], name="s2")["snapshot"]
    assert s2["parent"] == s1["id"], "incremental to the last backed-up snapshot, across the one kept on primary"
    assert (tmp / "store" / f"{s2['id']}.qcow2").stat().st_size < 4 * MIB
    qemu_io(tmp / "store" / f"{s2['id']}.qcow2", "read -P 0x22 0 1M")
    qemu_io(tmp / "store" / f"{s2['id']}.qcow2", "read -P 0x33 4M 1M")
    api.revertSnapshot(id=p["id"])               # an internal rollback: the bitmaps go, the next backup is full
    qemu_io(image, "read -P 0x22 0 1M")
    qemu_io(image, "read -P 0x11 4M 1M")
    s3 = api.createSnapshot(volumeid=vol["id"], name="s3")["snapshot"]
    assert "parent" not in s3
    qemu_io(tmp / "store" / f"{s3['id']}.qcow2", "read -P 0x11 4M 1M")


def test_failed_backups_are_retried_then_given_up_and_background_backups_take_a_host_slot(cloud):
    from volstack.db.models import AsyncJob, JobLock, utcnow
    from volstack.db.snapshot_models import Snapshot
    api, tmp, server = cloud["api"], cloud["tmp"], cloud["server"]
    add_store(cloud)
    vm = _vm(cloud)
    vol, _ = _data_volume(cloud, vm)
    image = tmp / "primary" / vol["path"]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x11 0 1M")
    api.updateConfiguration(name="backup.retry", value="2")
    api.updateConfiguration(name="backup.retry.interval", value="1")

    # the store comes back after the first failure: the retry backs the snapshot up
    (tmp / "store").rename(tmp / "store-away")
    code, _ = error_of(lambda: api.createSnapshot(volumeid=vol["id"], name="flaky"))
    assert code == 534
    flaky = api.listSnapshots(name="flaky")["snapshot"][0]
    assert flaky["state"] == "CreatedOnPrimary" and "retry 1 of 2" in flaky["status"], flaky
    (tmp / "store-away").rename(tmp / "store")
    wait_until("the retried backup", lambda: _status(api, flaky["id"])["state"] == "BackedUp", timeout=60, interval=0.1)
    assert "status" not in _status(api, flaky["id"])
    qemu_io(tmp / "store" / f"{flaky['id']}.qcow2", "read -P 0x11 0 1M")
    assert _internal(image) == [] and api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"
    assert any("flaky: backup retry 1 queued" in d for d in _events(api, "SNAPSHOT.BACKUP"))

    # the store stays away: two retries, then the snapshot stays on primary with the reason
    (tmp / "store").rename(tmp / "store-away")
    error_of(lambda: api.createSnapshot(volumeid=vol["id"], name="doomed"))
    doomed = wait_until("the last retry", lambda: (lambda x: "no retry left" in x.get("status", "") and x)(
        _status(api, api.listSnapshots(name="doomed")["snapshot"][0]["id"])), timeout=60, interval=0.1)
    assert doomed["state"] == "CreatedOnPrimary" and "after 2 (backup.retry)" in doomed["status"]
    assert _internal(image) == [f"snap-{doomed['id']}"]
    backups = [d for d in _events(api, "SNAPSHOT.BACKUP") if d.startswith("Snapshot doomed")]
    assert sum("queued" in d for d in backups) == 2 and sum("retry" in d and "of 2" in d for d in backups) == 2
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"

    # a retry takes a snapshot slot of its host (concurrent.snapshots.threshold.perhost), and one that waited past
    # job.expire.minutes is simply retried later
    (tmp / "store-away").rename(tmp / "store")
    api.updateConfiguration(name="backup.retry", value="5")
    api.updateConfiguration(name="concurrent.snapshots.threshold.perhost", value="1")
    slot = f"snapshothost:{cloud['host']['id']}#0"
    with server.db.session() as s:
        s.add(JobLock(sync_key=slot, job_id=0))
        s.scalar(select(Snapshot).where(Snapshot.uuid == doomed["id"])).backup_retry_at = utcnow()

    def queued_retry():
        with server.db.session(readonly=True) as s:
            return s.scalar(select(AsyncJob).where(AsyncJob.cmd == "snapshotBackup", AsyncJob.status == 0,
                                                   AsyncJob.instance_uuid == doomed["id"]))
    job = wait_until("the queued retry", queued_retry, timeout=60, interval=0.1)
    assert (job.queue_key, job.running) == (f"snapshothost:{cloud['host']['id']}", False)
    assert server.jobs._claim() is None
    with server.db.session() as s:
        s.get(AsyncJob, job.id).created = utcnow() - timedelta(days=2)
    server.jobs.expire()
    res = client(server, fetch_result=False).queryAsyncJobResult(jobid=job.uuid)
    assert res["jobresultcode"] == 534 and "retried later" in res["jobresult"]["errortext"]
    assert "retry 4 of 5" in _status(api, doomed["id"])["status"]
    with server.db.session() as s:
        s.delete(s.get(JobLock, slot))
    wait_until("the retry after the slot freed", lambda: _status(api, doomed["id"])["state"] == "BackedUp",
               timeout=60, interval=0.1)

    # asyncbackup's background backup takes the same slot as the snapshot job
    snap = api.createSnapshot(volumeid=vol["id"], asyncbackup=True)["snapshot"]
    wait_until("the background backup", lambda: _status(api, snap["id"])["state"] == "BackedUp", interval=0.1)
    with server.db.session(readonly=True) as s:
        task = s.scalar(select(AsyncJob).where(AsyncJob.cmd == "snapshotBackup", AsyncJob.instance_uuid == snap["id"]))
        assert (task.sync_key, task.queue_key) == (f"Volume:{vol['id']}", f"snapshothost:{cloud['host']['id']}")
    assert wait_job(server, task.uuid)["jobstatus"] == 1
