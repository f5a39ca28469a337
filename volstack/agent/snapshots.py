"""Volume snapshots on the host: take on primary, back up to an image store, delete, revert.

A snapshot's primary copy is one of two kinds:

- `internal`: a qcow2 internal snapshot inside the volume image (`qemu-img snapshot -c`), for a volume no
  running guest uses. Taking it copies nothing; reading it later (`qemu-img convert -l snapshot.name=`)
  gives exactly the data of that instant.
- `file`: a flat qcow2 file beside the volume in its pool, for a volume attached to a running guest (a
  point-in-time copy made by QEMU's block-backup job, sync=full: the guest keeps running and is never
  paused for its memory, unlike CloudStack's KVM path) and for raw images (which have no internal snapshots).

The backup is always a flat qcow2 (no backing file) on the image store, so it restores with the primary
pool gone. Every command is idempotent: a repeated take finds its snapshot, a repeated delete succeeds.
"""
import json
import time

from volstack.agent import images
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound

KINDS = ("internal", "file")


def _qcow2(pool, name: str) -> str:
    """qemu-img snapshot has no -f: the format is given as image options (commas in names doubled)."""
    return f"driver=qcow2,file.filename={pool.target(name).replace(',', ',,')}"


def _internal_names(pool, name: str) -> list[str]:
    info = json.loads(images.qemu_img(["info", "-U", "--output=json", "-f", "qcow2", pool.target(name)],
                                      f"volume {name}", timeout=60, pools=(pool,)))
    return [s["name"] for s in info.get("snapshots") or []]


def take(hv, pool, name: str, fmt: str, snapshot: str, vm: str | None, serial: str | None, progress,
         speed: int = 0) -> dict:
    """The primary copy of volume `name` as snapshot `snapshot`: {"kind", "name", "size"}. speed: bytes per
    second the live copy of a running guest's disk may use (0: unlimited)."""
    images.check_name(name), images.check_name(snapshot), images.check_format(fmt)
    if not pool.exists(name):
        raise NotFound(f"volume {name} does not exist in pool {pool.uuid}")
    user = hv.in_use(pool.uuid, name)
    if user is not None:
        if user != vm or not serial:
            raise Busy(f"volume {name} is attached to running VM {user}; ask for a live snapshot of that VM's disk")
        file_name = f"{snapshot}.qcow2"
        if not pool.exists(file_name):
            backup_disk(hv, vm, serial, pool, file_name, progress, speed)
        return {"kind": "file", "name": file_name, "size": images.info(pool, file_name, "qcow2")["size"]}
    if fmt == "qcow2" and "qcow2" in pool.formats:
        if snapshot not in _internal_names(pool, name):
            images.qemu_img(["snapshot", "-q", "-c", snapshot, "--image-opts", _qcow2(pool, name)],
                            f"snapshot volume {name}", pools=(pool,))
        return {"kind": "internal", "name": snapshot, "size": images.info(pool, name, "qcow2")["size"]}
    file_name = f"{snapshot}.qcow2"
    if not pool.exists(file_name):
        images.copy(pool, name, pool, file_name, "qcow2", progress, fmt)
    return {"kind": "file", "name": file_name, "size": images.info(pool, file_name, "qcow2")["size"]}


def backup(pool, name: str, fmt: str, kind: str, primary: str, dst, dst_name: str, progress) -> dict:
    """Copy the primary copy to dst/dst_name as a flat qcow2; a finished copy is returned as it is."""
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}")
    images.check_name(dst_name)
    if dst.exists(dst_name):
        have = images.info(dst, dst_name, "qcow2")
        return {"path": dst_name, "size": have["size"], "physical_size": have["physical_size"], "format": "qcow2"}
    if kind == "internal":
        if primary not in _internal_names(pool, images.check_name(name)):
            raise NotFound(f"volume {name} has no snapshot {primary} in pool {pool.uuid}")
        return images.copy(pool, name, dst, dst_name, "qcow2", progress, images.check_format(fmt), snapshot=primary)
    return images.copy(pool, images.check_name(primary), dst, dst_name, "qcow2", progress, "qcow2")


def delete_primary(hv, pool, name: str, kind: str, primary: str) -> dict:
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}")
    if kind == "file":
        return {"removed": pool.remove(images.check_name(primary))}
    images.check_name(name), images.check_name(primary)
    if not pool.exists(name) or primary not in _internal_names(pool, name):
        return {"removed": False}
    user = hv.in_use(pool.uuid, name)
    if user is not None:
        raise Busy(f"volume {name} is in use by running VM {user}; its internal snapshot {primary} is removed "
                   "when the VM stops")
    images.qemu_img(["snapshot", "-q", "-d", primary, "--image-opts", _qcow2(pool, name)],
                    f"delete snapshot {primary} of {name}", pools=(pool,))
    return {"removed": True}


def revert(hv, pool, name: str, fmt: str, src, src_name: str, progress) -> dict:
    """Replace volume `name` by the backup src/src_name (in the volume's format), atomically by rename."""
    images.check_name(name), images.check_format(fmt)
    user = hv.in_use(pool.uuid, name)
    if user is not None:
        raise Busy(f"volume {name} is attached to running VM {user}; stop the VM to revert it")
    staged = f"{name}.revert"
    pool.remove(staged)
    res = images.copy(src, images.check_name(src_name), pool, staged, fmt, progress, "qcow2")
    pool.rename(staged, name)
    return {**res, "path": name}


def backup_disk(hv, vm: str, serial: str, dst, dst_name: str, progress, speed: int = 0) -> dict:
    """A point-in-time flat qcow2 copy of a running guest's disk, the guest running on."""
    own = getattr(hv, "backup_disk", None)
    if own is not None:                  # the simulator: no guest writes, a plain copy is consistent
        return own(vm, serial, dst, dst_name, progress)
    return _qemu_backup(hv, vm, serial, dst, dst_name, progress, speed)


def _qemu_backup(hv, vm: str, serial: str, dst, dst_name: str, progress, speed: int) -> dict:
    """QMP blockdev-backup sync=full into a new qcow2 node: copy-before-write keeps the image of the instant
    the job started while the guest goes on writing; the copy is renamed into place when the job concluded."""
    from volstack.agent.qmp import QmpError
    part = images.part_name(dst_name)
    dst.remove(part)
    job = f"backup-{serial}"
    with hv._lock(vm):
        rec = hv._running(hv._need(vm))
        disk = hv._disk(rec, serial)
        with hv._qmp(rec) as q:
            size = hv._inserted(q, rec, disk)["image"]["virtual-size"]
        images.qemu_img(["create", "-q", "-f", "qcow2", dst.target(part), str(size)], f"create {dst_name}")
        node = hv._new_node(rec)
        hv._save(rec)
        try:
            with hv._qmp(rec) as q:
                q.execute("blockdev-add", {"driver": "qcow2", "node-name": node, "file": dst.blockdev(part)})
                q.execute("blockdev-backup", {"job-id": job, "device": disk["node"], "target": node, "sync": "full",
                                              "auto-dismiss": False, **({"speed": speed} if speed > 0 else {})})
        except QmpError as e:
            dst.remove(part)
            raise Failed(f"cannot start the backup of disk {serial} of VM {vm}: {e.desc}") from None
    error = None
    while True:
        with hv._lock(vm), hv._qmp(rec) as q:
            state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
            if state is None or state["status"] == "concluded":
                error = "the backup job vanished" if state is None else state.get("error")
                if state is not None:
                    q.execute("job-dismiss", {"id": job})
                break
            if state.get("total-progress"):
                progress(min(99, int(state["current-progress"] * 100 / state["total-progress"])))
        time.sleep(0.1)
    with hv._lock(vm), hv._qmp(rec) as q:
        try:
            q.execute("blockdev-del", {"node-name": node})
        except QmpError:
            pass
    if error:
        dst.remove(part)
        raise Failed(f"the backup of disk {serial} of VM {vm} failed: {error}")
    dst.rename(part, dst_name)
    return {"path": dst_name}
