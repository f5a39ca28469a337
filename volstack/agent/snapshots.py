"""Volume snapshots on the host: take on primary, back up to an image store, merge, delete, revert.

A snapshot's primary copy is one of three kinds:

- `internal`: a qcow2 internal snapshot inside the volume image (`qemu-img snapshot -c`), for a volume no
  running guest uses. Taking it copies nothing; reading it later (`qemu-img convert -l snapshot.name=`)
  gives exactly the data of that instant.
- `file`: a flat qcow2 file beside the volume in its pool, for a volume attached to a running guest (a
  point-in-time copy made by QEMU's block-backup job, sync=full: the guest keeps running and is never
  paused for its memory, unlike CloudStack's KVM path) and for raw images (which have no internal snapshots).
- `delta`: an incremental copy beside the volume: a qcow2 holding only the clusters written since the parent
  snapshot, whose header already names the parent's backup (a bare name) as its backing file. Made by
  blockdev-backup sync=incremental from the parent's dirty bitmap, in the guest's QEMU or, for an idle
  volume, in a short-lived qemu-storage-daemon.

Incremental tracking: a qcow2 volume carries at most one persistent dirty bitmap of ours, `volstack-<snapshot
uuid>`: every write since that snapshot's instant. It is created atomically with the snapshot (a QMP
transaction, or offline while the agent holds the image) and only ever used by the snapshot that follows.
A copy of the image without its bitmaps (migration, revert) or an inconsistent bitmap (a guest killed
with the image open) simply has none, and the next snapshot is full: never a wrong incremental.

Backups on the image store are a full flat qcow2, or a delta copied as it is (its backing file is the parent
backup beside it), so a backup restores with the primary pool gone by reading the top of its chain.
Every command is idempotent: a repeated take finds its snapshot, a repeated delete or merge succeeds.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager

from volstack.agent import images, programs
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound, Unavailable
from volstack.agent.qmp import Qmp, QmpError, QmpGone

KINDS = ("internal", "file", "delta")
BITMAP = "volstack-"          # prefix of the dirty bitmaps this agent owns in volume images


def _qcow2(pool, name: str) -> str:
    """qemu-img snapshot has no -f: the format is given as image options (commas in names doubled)."""
    return f"driver=qcow2,file.filename={pool.target(name).replace(',', ',,')}"


def _info_json(pool, name: str) -> dict:
    return json.loads(images.qemu_img(["info", "-U", "--output=json", "-f", "qcow2", pool.target(name)],
                                      f"volume {name}", timeout=60, pools=(pool,)))


def _internal_names(pool, name: str) -> list[str]:
    return [s["name"] for s in _info_json(pool, name).get("snapshots") or []]


def _offline_bitmaps(pool, name: str) -> dict[str, bool]:
    """Our bitmaps in an image nobody has open: name -> usable. "in-use" on a closed image means the QEMU
    that had it open died without storing the bitmap: it no longer covers every write."""
    data = _info_json(pool, name).get("format-specific", {}).get("data", {})
    return {b["name"]: "in-use" not in b.get("flags", ()) and "auto" in b.get("flags", ())
            for b in data.get("bitmaps") or [] if b["name"].startswith(BITMAP)}


def _bitmap_cmd(pool, name: str, *args) -> None:
    images.qemu_img(["bitmap", "-f", "qcow2", *args[:-1], pool.target(name), args[-1]],
                    f"dirty bitmap of volume {name}", pools=(pool,))


def drop_bitmaps(pool, name: str) -> None:
    """Before an image is rolled back in place (a VM snapshot revert): our bitmaps would no longer say what changed
    since the last backup (and qemu-img refuses to apply a snapshot under them), so they go; the volume's next
    snapshot is then a full one."""
    for b in _offline_bitmaps(pool, name):
        _bitmap_cmd(pool, name, "--remove", b)


def drop_node_bitmaps(q: Qmp, node: str) -> None:
    """drop_bitmaps for a disk a running guest has open."""
    for b in _node_bitmaps(q, node):
        q.execute("block-dirty-bitmap-remove", {"node": node, "name": b})


def _described(pool, file_name: str) -> dict:
    have = images.info(pool, file_name, "qcow2")
    return {"kind": "delta" if have["backing"] else "file", "name": file_name, "size": have["size"],
            "physical_size": have["physical_size"], "incremental": bool(have["backing"])}


def take(hv, pool, name: str, fmt: str, snapshot: str, vm: str | None, serial: str | None, progress,
         speed: int = 0, bitmap: str | None = None, parent: dict | None = None, dst=None,
         dst_name: str | None = None) -> dict:
    """The primary copy of volume `name` as snapshot `snapshot`: {"kind", "name", "size", "physical_size",
    "incremental"}. speed: bytes per second the live copy of a running guest's disk may use (0: unlimited).
    bitmap: the dirty bitmap to start at this snapshot (incremental tracking on). parent: {"bitmap", "backing"}
    of the snapshot to be incremental to; when its bitmap is missing or unusable the copy is full. dst/dst_name:
    the backup's place on the image store: a copy that has to be made anyway (live, or a delta) is written
    there at once, so the data moves once (kind "stored", nothing on primary)."""
    images.check_name(name), images.check_name(snapshot), images.check_format(fmt)
    for b in (bitmap, (parent or {}).get("bitmap")):
        if b is not None and not (isinstance(b, str) and b.startswith(BITMAP) and len(b) < 1024):
            raise InvalidArgument(f"bitmap names start with {BITMAP}")
    if parent is not None:
        images.check_name(parent.get("backing"))
    if not pool.exists(name):
        raise NotFound(f"volume {name} does not exist in pool {pool.uuid}")
    if fmt != "qcow2" or "qcow2" not in pool.formats:
        bitmap = parent = None                  # raw images keep no bitmaps
    user = hv.in_use(pool.uuid, name)
    if user is not None and (user != vm or not serial):
        raise Busy(f"volume {name} is attached to running VM {user}; ask for a live snapshot of that VM's disk")
    file_name = f"{snapshot}.qcow2"
    if pool.exists(file_name):                  # a primary copy from an earlier attempt
        return _described(pool, file_name)
    live = user is not None and getattr(hv, "backup_disk", None) is None    # a real QEMU has the image open
    # otherwise nobody holds the image open (an idle volume, or a simulated guest): the agent's hold keeps it still
    have = _offline_bitmaps(pool, name) if not live and (bitmap or parent) else {}
    if live or (parent is not None and have.get(parent["bitmap"])):
        try:
            if dst is not None and dst.exists(images.check_name(dst_name)):
                return {**_described(dst, dst_name), "kind": "stored"}
        except Unavailable:
            dst = None                          # the store is out of reach: the copy stays on primary for now
        where, where_name = (dst, dst_name) if dst is not None else (pool, file_name)
        if live:
            kind = _live_copy(hv, vm, serial, where, where_name, progress, speed, bitmap, parent)
        else:
            _offline_delta(pool, name, where, where_name, bitmap, parent, progress)
            kind = "delta"
        return {**_described(where, where_name), "kind": "stored" if dst is not None else kind}
    for b in have:
        _bitmap_cmd(pool, name, "--remove", b)
    if user is not None:
        hv.backup_disk(vm, serial, pool, file_name, progress)
        out = _described(pool, file_name)
    elif fmt == "qcow2" and "qcow2" in pool.formats:
        if snapshot not in _internal_names(pool, name):
            images.qemu_img(["snapshot", "-q", "-c", snapshot, "--image-opts", _qcow2(pool, name)],
                            f"snapshot volume {name}", pools=(pool,))
        out = {"kind": "internal", "name": snapshot, "size": images.info(pool, name, "qcow2")["size"],
               "incremental": False}
    else:
        images.copy(pool, name, pool, file_name, "qcow2", progress, fmt)
        out = _described(pool, file_name)
    if bitmap:
        _bitmap_cmd(pool, name, "--add", bitmap)
    return out


def backup(pool, name: str, fmt: str, kind: str, primary: str, dst, dst_name: str, progress,
           out_format: str = "qcow2") -> dict:
    """Copy the primary copy to dst/dst_name: a full one as a flat qcow2, a delta as it is (its header names
    the parent backup, which is already in dst). A finished copy is returned as it is. out_format: a full copy
    in another format (a volume made from a snapshot kept on primary lands in its pool's format)."""
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}")
    images.check_name(dst_name), images.check_format(out_format)
    if kind == "delta" and out_format != "qcow2":
        raise InvalidArgument("an incremental copy is only ever a qcow2")
    if out_format not in dst.formats:
        out_format = dst.formats[0]
    if not dst.exists(dst_name):
        if kind == "internal":
            if primary not in _internal_names(pool, images.check_name(name)):
                raise NotFound(f"volume {name} has no snapshot {primary} in pool {pool.uuid}")
            images.copy(pool, name, dst, dst_name, out_format, progress, images.check_format(fmt), snapshot=primary)
        elif kind == "delta":     # the container's bytes, not its data: unallocated clusters must stay so
            images.copy(pool, images.check_name(primary), dst, dst_name, "raw", progress, "raw")
        else:
            images.copy(pool, images.check_name(primary), dst, dst_name, out_format, progress, "qcow2")
    have = images.info(dst, dst_name, out_format)
    return {"path": dst_name, "size": have["size"], "physical_size": have["physical_size"], "format": out_format,
            "backing": have["backing"] and os.path.basename(have["backing"])}


def merge(pool, name: str, parent: str, backing: str | None) -> dict:
    """Backup `name` stops needing its parent backup `parent` (which is about to go): afterwards `name` reads the
    same data with `backing` (the grandparent, a bare name) or nothing behind it. The smaller side is copied:
    - the child's own data into the parent (`qemu-img commit`), then the parent's file is renamed over the
      child's: cheap when the parent is a big full backup and the child a small delta (retention's usual case);
    - the parent's data the child still reads into the child (`qemu-img rebase`), which switches the child's
      header last.
    Either way `name` reads the same bytes at every moment, so an interruption loses nothing (an interrupted
    commit leaves the parent half-merged: it must not be used again, only deleted through this merge)."""
    images.check_name(name), images.check_name(parent)
    if backing is not None:
        images.check_name(backing)
    if not getattr(pool, "holds_chains", False):
        raise InvalidArgument(f"pool {pool.uuid} does not hold backing chains")
    have = images.info(pool, name, "qcow2")
    now = have["backing"] and os.path.basename(have["backing"])
    if now == parent and pool.exists(parent):
        if have["physical_size"] < images.info(pool, parent, "qcow2")["physical_size"]:
            images.qemu_img(["commit", "-q", "-d", "-f", "qcow2", pool.target(name)],
                            f"merge backup {name} into its parent {parent}", timeout=None, pools=(pool,))
            pool.rename(parent, name)
        else:
            images.qemu_img(["rebase", "-q", "-f", "qcow2", *(["-F", "qcow2"] if backing else []), "-b",
                             backing or "", pool.target(name)], f"merge the parent of backup {name} into it",
                            timeout=None, pools=(pool,))
    elif now != backing:
        raise InvalidArgument(f"backup {name} is based on {now or 'nothing'}, not on {parent} or {backing}")
    have = images.info(pool, name, "qcow2")
    return {"path": name, "size": have["size"], "physical_size": have["physical_size"],
            "backing": have["backing"] and os.path.basename(have["backing"])}


def delete_primary(hv, pool, name: str, kind: str, primary: str) -> dict:
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}")
    if kind != "internal":
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
    """Replace volume `name` by the qcow2 src/src_name (a backup, or a snapshot's file copy on primary), atomically
    by rename. An image holding internal snapshots (snapshots kept on primary, VM snapshots) is written in place
    instead, so they survive: not atomic, a failure midway leaves it to be reverted again."""
    images.check_name(name), images.check_format(fmt)
    user = hv.in_use(pool.uuid, name)
    if user is not None:
        raise Busy(f"volume {name} is attached to running VM {user}; stop the VM to revert it")
    if fmt == "qcow2" and pool.exists(name) and _internal_names(pool, name):
        size = images.info(src, images.check_name(src_name), "qcow2")["size"]
        drop_bitmaps(pool, name)      # they would mark the whole rewrite: the next snapshot is a full one
        images.qemu_img(["resize", "-q", "--shrink", "-f", "qcow2", pool.target(name), str(size)],
                        f"resize volume {name} to its snapshot's size", pools=(pool,))
        images.qemu_img(["convert", "-n", "-f", "qcow2", "-O", "qcow2", src.target(src_name), pool.target(name)],
                        f"write snapshot {src_name} into volume {name}", timeout=None, pools=(src, pool))
        have = images.info(pool, name, "qcow2")
        return {"path": name, "size": have["size"], "physical_size": have["physical_size"], "format": fmt}
    staged = f"{name}.revert"
    pool.remove(staged)
    res = images.copy(src, images.check_name(src_name), pool, staged, fmt, progress, "qcow2")
    pool.rename(staged, name)
    return {**res, "path": name}


def revert_internal(hv, pool, name: str, snapshot: str) -> dict:
    """Roll volume `name` back to its internal snapshot `snapshot` (kept on primary); the image's other internal
    snapshots stay. qemu-img refuses to apply a snapshot under dirty bitmaps, so ours go (the next is full)."""
    images.check_name(name), images.check_name(snapshot)
    user = hv.in_use(pool.uuid, name)
    if user is not None:
        raise Busy(f"volume {name} is attached to running VM {user}; stop the VM to revert it")
    if snapshot not in _internal_names(pool, name):
        raise NotFound(f"volume {name} has no snapshot {snapshot} in pool {pool.uuid}")
    drop_bitmaps(pool, name)
    images.qemu_img(["snapshot", "-q", "-a", snapshot, "--image-opts", _qcow2(pool, name)],
                    f"revert volume {name} to snapshot {snapshot}", pools=(pool,))
    have = images.info(pool, name, "qcow2")
    return {"path": name, "size": have["size"], "physical_size": have["physical_size"], "format": "qcow2"}


def backup_disk(hv, vm: str, serial: str, dst, dst_name: str, progress, speed: int = 0) -> dict:
    """A point-in-time flat qcow2 copy of a running guest's disk, the guest running on."""
    own = getattr(hv, "backup_disk", None)
    if own is not None:                  # the simulator: no guest writes, a plain copy is consistent
        return own(vm, serial, dst, dst_name, progress)
    _live_copy(hv, vm, serial, dst, dst_name, progress, speed, None, None)
    return {"path": dst_name}


def _node_bitmaps(q: Qmp, node: str) -> dict[str, bool]:
    """Our bitmaps on a QEMU node: name -> usable (recording and consistent)."""
    for n in q.execute("query-named-block-nodes", {"flat": True}):
        if n.get("node-name") == node:
            return {b["name"]: b.get("recording", True) and not b.get("inconsistent", False)
                    for b in n.get("dirty-bitmaps") or [] if b.get("name", "").startswith(BITMAP)}
    return {}


def _target(dst, part: str, size: int, backing: str | None) -> dict:
    """A new qcow2 to back up into and its QMP node options. A delta's header names its parent backup, which
    QEMU must not open here (it lives on the image store): the job writes whole clusters only."""
    images.qemu_img(["create", "-q", "-f", "qcow2", *(["-u", "-b", backing, "-F", "qcow2"] if backing else []),
                     dst.target(part), str(size)], f"create {part}")
    return {"driver": "qcow2", "file": dst.blockdev(part), **({"backing": None} if backing else {})}


def _run_backup(monitor, device: str, target: str, job: str, have: dict, bitmap, parent, speed: int,
                progress) -> str | None:
    """One QMP transaction starts the backup job and, at the same instant, the new dirty bitmap (and drops
    stale ones); then the job is followed to its end. Returns the job's error, None on success. A failed
    incremental job hands its bits back to the parent bitmap (bitmap-mode on-success), so nothing is lost."""
    stale = [b for b in have if b != (parent or {}).get("bitmap")]
    actions = [{"type": "block-dirty-bitmap-remove", "data": {"node": device, "name": b}} for b in stale]
    if bitmap:
        actions.append({"type": "block-dirty-bitmap-add", "data": {"node": device, "name": bitmap,
                                                                    "persistent": True}})
    backup = {"job-id": job, "device": device, "target": target, "auto-dismiss": False,
              "sync": "incremental" if parent else "full", **({"speed": speed} if speed > 0 else {}),
              **({"bitmap": parent["bitmap"]} if parent else {})}
    actions.append({"type": "blockdev-backup", "data": backup})
    with monitor() as q:
        q.execute("transaction", {"actions": actions})
    pause = 0.01                    # small deltas end within milliseconds; long copies are polled every 0.1 s
    while True:
        with monitor() as q:
            state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
            if state is None or state["status"] == "concluded":
                error = "the backup job vanished" if state is None else state.get("error")
                if state is not None:
                    q.execute("job-dismiss", {"id": job})
                drop = bitmap if error else (parent or {}).get("bitmap")
                if drop:
                    try:
                        q.execute("block-dirty-bitmap-remove", {"node": device, "name": drop})
                    except QmpError:
                        pass
                return error
            if state.get("total-progress"):
                progress(min(99, int(state["current-progress"] * 100 / state["total-progress"])))
        time.sleep(pause)
        pause = min(0.1, pause * 1.5)


def _clear_leftovers(q: Qmp, job: str, dst) -> None:
    """What an agent that died during a live copy left in the guest: the backup job (its id would clash) and
    the copy's target node with its partial file."""
    state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
    if state is not None and state["status"] != "concluded":
        q.execute("job-cancel", {"id": job})
        deadline = time.monotonic() + 30
        while state is not None and state["status"] != "concluded" and time.monotonic() < deadline:
            time.sleep(0.05)
            state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
    if state is not None:
        q.execute("job-dismiss", {"id": job})
    for n in q.execute("query-named-block-nodes", {"flat": True}):
        name = os.path.basename(n.get("file") or "")
        if n.get("drv") == "qcow2" and name.startswith(".") and name.endswith(".part"):      # images.part_name
            try:
                q.execute("blockdev-del", {"node-name": n["node-name"]})
            except QmpError:
                continue
            dst.remove(name)


def _live_copy(hv, vm: str, serial: str, dst, dst_name: str, progress, speed: int, bitmap, parent) -> str:
    """The copy of a running guest's disk by QEMU's backup job (copy-before-write: the guest keeps running and
    writing); incremental when the parent's bitmap is there and usable. Returns the kind made."""
    part = images.part_name(dst_name)
    dst.remove(part)

    @contextmanager
    def monitor():
        with hv._lock(vm), hv._qmp(rec) as q:
            yield q
    job = f"backup-{serial}"
    with hv._lock(vm):
        rec = hv._running(hv._need(vm))
        disk = hv._disk(rec, serial)
        with hv._qmp(rec) as q:
            _clear_leftovers(q, job, dst)
            size = hv._inserted(q, rec, disk)["image"]["virtual-size"]
            have = _node_bitmaps(q, disk["node"]) if bitmap or parent else {}
        if parent is not None and not have.get(parent["bitmap"]):
            parent = None
        spec = _target(dst, part, size, parent and parent["backing"])
        node = hv._new_node(rec)
        hv._save(rec)
        try:
            with hv._qmp(rec) as q:
                q.execute("blockdev-add", {**spec, "node-name": node})
        except QmpError as e:
            dst.remove(part)
            raise Failed(f"cannot start the backup of disk {serial} of VM {vm}: {e.desc}") from None
    try:
        error = _run_backup(monitor, disk["node"], node, job, have, bitmap, parent, speed, progress)
    except QmpError as e:
        error = e.desc
    with monitor() as q:
        try:
            q.execute("blockdev-del", {"node-name": node})
        except QmpError:
            pass
    if error:
        dst.remove(part)
        raise Failed(f"the backup of disk {serial} of VM {vm} failed: {error}")
    dst.rename(part, dst_name)
    return "delta" if parent else "file"


@contextmanager
def _storage_daemon():
    """A qemu-storage-daemon for one job on images no guest has open; its QMP socket's path."""
    tmp = tempfile.mkdtemp(prefix="volstack-qsd-")
    sock = os.path.join(tmp, "qmp.sock")
    try:
        proc = subprocess.Popen([programs.QEMU_STORAGE_DAEMON, "--chardev", f"socket,id=m,path={sock},server=on,wait=off",
                                 "--monitor", "chardev=m"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=images._die_with_agent)
    except FileNotFoundError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Failed(programs.not_installed(programs.QEMU_STORAGE_DAEMON)) from None
    try:
        yield sock
    finally:
        try:
            with Qmp(sock, connect_timeout=2) as q:
                q.execute("quit")
        except (QmpGone, QmpError, OSError):
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _offline_delta(pool, name: str, dst, file_name: str, bitmap, parent: dict, progress) -> None:
    """The incremental copy of an idle volume into dst, by the same backup job in a qemu-storage-daemon; the
    daemon stores the new bitmap in the image when it closes it."""
    part = images.part_name(file_name)
    dst.remove(part)
    size = images.info(pool, name, "qcow2")["size"]
    spec = _target(dst, part, size, parent["backing"])
    with _storage_daemon() as sock:
        def monitor():
            return Qmp(sock)
        with monitor() as q:
            q.execute("blockdev-add", {**images.blockdev_node(pool, name, "qcow2"), "node-name": "vol"})
            q.execute("blockdev-add", {**spec, "node-name": "copy"})
            have = _node_bitmaps(q, "vol")
        try:
            error = _run_backup(monitor, "vol", "copy", "backup", have, bitmap, parent, 0, progress)
        except QmpError as e:
            error = e.desc
        with monitor() as q:
            for node in ("copy", "vol"):
                q.execute("blockdev-del", {"node-name": node})
    if error:
        dst.remove(part)
        raise Failed(f"the incremental copy of volume {name} failed: {error}")
    dst.rename(part, file_name)
