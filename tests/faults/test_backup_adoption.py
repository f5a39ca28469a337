"""Seen point 3 of issue 12: a snapshot backup that finished on its host after its job died with the management
server is adopted (BackedUp), not done again and left as an orphan file on the store. A real `volstack agent`
(simulated guests, real qemu-img), a SharedMountPoint pool and a file image store."""
import shutil

from sqlalchemy import select

from tests.test_migration_settle import _detached_volume
from tests.test_templates import add_store, cloud, qemu_io  # noqa: F401  (cloud is a fixture)
from volstack.db.image_models import ImageStore
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import Volume
from volstack.services import imagestores, snapshots
from volstack.services.context import system_context
from tests.helpers import pool_spec


def _backing_up(server, snap_uuid, store_id=None):
    """What the job commits before the host copies: BackingUp, with the store and the file name."""
    with server.db.session() as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snap_uuid))
        snap.state, snap.store_id = "BackingUp", snap.store_id or store_id
        snap.install_path = f"{snap.uuid}.qcow2"
        return imagestores.spec(s.get(ImageStore, snap.store_id)), snap.install_path, snap.store_id


def _recovered(api):
    return [e["description"] for e in api.listEvents(type="SNAPSHOT.RECOVER", listall=True).get("event", [])]


def test_a_backup_that_finished_after_its_job_died_is_adopted(cloud):
    api, server, tmp, agent = cloud["api"], cloud["server"], cloud["tmp"], cloud["agent"].client
    add_store(cloud)
    vol, _ = _detached_volume(cloud)
    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    assert snap["state"] == "BackedUp"
    store_spec, name, store_id = _backing_up(server, snap["id"])
    with server.db.session() as s:            # the job holds the volume Snapshotting until its backup is done
        s.scalar(select(Volume).where(Volume.uuid == vol["id"])).state = "Snapshotting"
    backup = tmp / "store" / name
    assert backup.exists()

    # 1. the host's backup had finished when the job died: adopted, not copied again nor orphaned
    snapshots.settle_interrupted(server.db, system_context(), snap["id"], "createSnapshot")
    after = api.listSnapshots(id=snap["id"])["snapshot"][0]
    assert after["state"] == "BackedUp", after
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"
    assert any("had finished the backup; it is adopted" in d for d in _recovered(api)), _recovered(api)

    # 2. a later backup task (a retry) finished after the job died: its result is adopted
    shutil.move(backup, tmp / "saved.qcow2")
    _backing_up(server, snap["id"], store_id)
    shutil.copy(tmp / "primary" / vol["path"], tmp / "primary" / "copy.qcow2")
    task = agent.call_async("snapshot_backup", pool=pool_spec(server, cloud["pool"]["id"]), name=vol["path"],
                            format="qcow2", kind="file", primary="copy.qcow2", dst_pool=store_spec, dst_name=name)
    agent.wait_task(task)
    (tmp / "primary" / "copy.qcow2").unlink()
    snapshots.settle_interrupted(server.db, system_context(), snap["id"], "createSnapshot")
    assert api.listSnapshots(id=snap["id"])["snapshot"][0]["state"] == "BackedUp"
    assert len([d for d in _recovered(api) if "had finished the backup; it is adopted" in d]) == 2
    qemu_io(backup, "read -P 0x5a 0 16M")

    # 3. nothing reached the store: the snapshot is CreatedOnPrimary again, its backup retried later
    backup.unlink()
    _backing_up(server, snap["id"], store_id)
    snapshots.settle_interrupted(server.db, system_context(), snap["id"], "createSnapshot")
    assert api.listSnapshots(id=snap["id"])["snapshot"][0]["state"] == "CreatedOnPrimary"

    # an adopted backup is deleted with its snapshot: nothing stays on the store
    shutil.move(tmp / "saved.qcow2", backup)
    _backing_up(server, snap["id"], store_id)
    snapshots.settle_interrupted(server.db, system_context(), snap["id"], "createSnapshot")
    api.deleteSnapshot(id=snap["id"])
    assert not backup.exists()
