"""A cold volume copy (migrateVolume of a detached volume) whose job died with its management server: settling
cancels the copy on the host, or adopts it when it had finished. A real `volstack agent` (simulated guests, real
qemu-img) and two SharedMountPoint pools."""
import os
import uuid

from sqlalchemy import select

from agentproc import wait_until
from helpers import migration_interrupted, pool_spec
from test_templates import cloud, qemu_io  # noqa: F401  (cloud is a fixture)
from volstack.db.storage_models import Volume
from volstack.services import volumes
from volstack.services.context import system_context

MIB = 1024 ** 2


def _detached_volume(c):
    """A 1 GiB data volume on the first pool holding 16 MiB of data, and a second pool to move it to."""
    api, tmp = c["api"], c["tmp"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    offering = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vol = api.createVolume(name="data", zoneid=c["zone"]["id"], diskofferingid=offering["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.detachVolume(id=vol["id"])
    qemu_io(tmp / "primary" / vol["path"], "write -P 0x5a 0 16M")
    (tmp / "primary2").mkdir()
    pool2 = api.createStoragePool(name="primary2", url=f"SharedMountPoint://localhost{tmp / 'primary2'}",
                                  zoneid=c["zone"]["id"], podid=c["pool"]["podid"],
                                  clusterid=c["pool"]["clusterid"])["storagepool"]
    return vol, pool2


def _details(server, vol_uuid):
    with server.db.session(readonly=True) as s:
        return s.scalar(select(Volume).where(Volume.uuid == vol_uuid)).details or {}


def _recorded_task(server, vol_uuid):
    return _details(server, vol_uuid)["migrating_to"]["task"]


def _recovered(api):
    return [e["description"] for e in api.listEvents(type="VOLUME.RECOVER", listall=True).get("event", [])]


def test_an_interrupted_cold_copy_is_cancelled_or_adopted(cloud):
    api, server, tmp, agent = cloud["api"], cloud["server"], cloud["tmp"], cloud["agent"].client
    vol, pool2 = _detached_volume(cloud)
    src, dst = tmp / "primary" / vol["path"], tmp / "primary2" / vol["path"]
    copy = dict(src_pool=pool_spec(server, cloud["pool"]["id"]), src_name=vol["path"],
                dst_pool=pool_spec(server, pool2["id"]), dst_name=vol["path"], format="qcow2",
                src_format="qcow2")

    # 1. the job died while the host copies (1 MiB/s: 16 s): the copy is stopped, its partial image removed
    migration_interrupted(server, vol["id"], pool2["id"], vol["path"], "qcow2", live=False, task=str(uuid.uuid4()))
    task = agent.call_async("volume_copy", **copy, speed=MIB, _task=_recorded_task(server, vol["id"]))
    wait_until("the copy to make progress", lambda: agent.task(task)["progress"] > 0)
    volumes.settle_interrupted(server.db, system_context(), vol["id"], "migrateVolume")
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert (after["state"], after["storageid"]) == ("Ready", cloud["pool"]["id"])
    assert "interrupted" in after["status"] and "stopped its copy" in after["status"]
    state = agent.task(task)
    assert state["state"] == "failed" and state["error"].startswith("cancelled: migrateVolume was interrupted")
    assert os.listdir(tmp / "primary2") == [] and src.exists()
    assert any("stopped its copy to" in d and "Ready again on its old pool" in d for d in _recovered(api))

    # 2. the copy had finished when the job died: the volume is recorded on the new pool, the old image goes
    #    (a record without the task's id: the host finds the copy by its destination)
    migration_interrupted(server, vol["id"], pool2["id"], vol["path"], "qcow2", live=False)
    agent.wait_task(agent.call_async("volume_copy", **copy))
    volumes.settle_interrupted(server.db, system_context(), vol["id"], "migrateVolume")
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert (after["state"], after["storageid"]) == ("Ready", pool2["id"])
    assert not src.exists() and dst.exists()
    qemu_io(dst, "read -P 0x5a 0 16M")
    assert any("had finished the copy to primary2, where the volume is now" in d for d in _recovered(api))

    # 3. nothing was started on the host: the volume simply stays where it is
    migration_interrupted(server, vol["id"], cloud["pool"]["id"], vol["path"], "qcow2", live=False)
    volumes.settle_interrupted(server.db, system_context(), vol["id"], "migrateVolume")
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert (after["state"], after["storageid"]) == ("Ready", pool2["id"]) and dst.exists()
    assert "no host had a copy of it under way" in after["status"]

    # 4. a migration that runs to its end (its copy a task named by the server) leaves no marker behind
    moved = api.migrateVolume(volumeid=vol["id"], storageid=cloud["pool"]["id"])["volume"]
    assert moved["storageid"] == cloud["pool"]["id"] and src.exists() and not dst.exists()
    assert "migrating_to" not in _details(server, vol["id"])
