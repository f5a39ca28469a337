"""VM snapshots on the host: a qcow2 internal snapshot named `tag` in every disk image of a VM.

- A running QEMU guest, disk only: one QMP `transaction` of `blockdev-snapshot-internal-sync` over all its disks,
  so every disk holds the same instant; QEMU drains the guest's I/O for it but does not pause the guest.
- A running QEMU guest with memory: QEMU's `snapshot-save` job (QEMU >= 6) writes the guest's state into the ROOT
  disk's snapshot; the guest is paused while its memory is written. Reverting is `snapshot-load` on the running
  guest, which goes on running from the snapshot's instant.
- Disks no guest runs on (a stopped VM): `qemu-img snapshot -c / -a / -d` on each image. A failed create removes
  what it made; a revert first checks that every disk holds the snapshot.
- Guests of the simulator adapter never write, so their images are handled as at rest (there is no memory).

Every command is idempotent: a create finding the snapshot on every disk succeeds, a delete of a missing one too.
"""
import json
import time
from contextlib import ExitStack

from volstack.agent import images, luks
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound, Unavailable
from volstack.agent.snapshots import _internal_names, drop_bitmaps, drop_node_bitmaps

ACTIONS = ("create", "revert", "delete")


def run(agent, action: str, args: dict, progress) -> dict:
    """vm_snapshot_<action>: args vm, tag, running (the control plane's view of the VM), memory, disks
    [{pool, name, format, serial}] with the ROOT disk first. Without vm the disks are taken as at rest (a
    destroyed VM's former data disks; each is still refused while a running guest uses it)."""
    from volstack.agent.args import arg
    assert action in ACTIONS
    vm, tag = arg(args, "vm", str, None), images.check_name(arg(args, "tag"))
    vm = images.check_name(vm) if vm is not None else None
    disks, keys = [], {}
    for d in arg(args, "disks", list):
        if not isinstance(d, dict) or images.check_format(d.get("format")) != "qcow2":
            raise InvalidArgument("each disk must be an object with pool, name, format qcow2 and serial")
        disks.append((agent.pool(d), images.check_name(d.get("name")), d.get("serial")))
        keys[(disks[-1][0].uuid, disks[-1][1])] = luks.check(d.get("encryption"))   # an encrypted disk at rest
    if not disks:
        raise InvalidArgument("a VM snapshot needs at least one disk")
    memory, running = arg(args, "memory", bool, False), arg(args, "running", bool, False)
    if vm is None and (running or action != "delete"):
        raise InvalidArgument("vm is required unless deleting a VM snapshot from disks at rest")
    with ExitStack() as held:
        for pool, name, _ in disks:
            held.enter_context(agent.hold(pool, name, f"in a VM snapshot {action}"))
        rec = _guest(agent.hv, vm, running) if vm is not None else None
        if rec is None:
            return _at_rest(agent.hv, action, disks, tag, memory, keys)
        return _live(agent.hv, action, rec, disks, tag, memory, progress)


def _guest(hv, vm: str, running: bool) -> dict | None:
    """The QEMU record of the running guest whose disks these are, or None when no guest runs on them."""
    from volstack.agent.qemu import QemuHypervisor
    if not isinstance(hv, QemuHypervisor):
        return None
    rec = hv._load(vm)
    live = rec is not None and hv._pid(rec) is not None
    if running and not live:
        raise Unavailable(f"VM {vm} is not running on host {hv.hostname}; its state changed, ask again")
    if live and not running:
        raise Busy(f"VM {vm} is running on host {hv.hostname}; stop it for this VM snapshot operation")
    return rec if live else None


# ---------------------------------------------------------------- disks at rest

def _at_rest(hv, action, disks, tag, memory, keys=None) -> dict:
    keys = keys or {}
    from volstack.agent.qemu import QemuHypervisor
    if memory and action != "delete" and isinstance(hv, QemuHypervisor):
        raise Failed("a VM snapshot with memory needs the running guest")
    for pool, name, _ in disks:
        user = hv.in_use(pool.uuid, name)
        if user is not None and isinstance(hv, QemuHypervisor):
            raise Busy(f"volume {name} is in use by running VM {user}")
    if action == "delete":
        for pool, name, _ in disks:
            if pool.exists(name) and tag in _internal_names(pool, name):
                _img(pool, name, "-d", tag, keys.get((pool.uuid, name)))
        return {"disks": [serial for _, _, serial in disks]}
    have = {(pool.uuid, name): tag in _internal_names(pool, name) if pool.exists(name) else None
            for pool, name, _ in disks}
    missing = [name for (_, name), ok in have.items() if ok is None]
    if missing:
        raise NotFound(f"volume(s) {', '.join(missing)} do not exist")
    if action == "revert":
        lacking = [name for (_, name), ok in have.items() if not ok]
        if lacking:
            raise NotFound(f"volume(s) {', '.join(lacking)} do not hold VM snapshot {tag}; nothing was reverted")
        for pool, name, _ in disks:
            drop_bitmaps(pool, name)
            _img(pool, name, "-a", tag, keys.get((pool.uuid, name)))
        return {"disks": [serial for _, _, serial in disks]}
    made = []
    try:
        for pool, name, _ in disks:
            if not have[(pool.uuid, name)]:
                _img(pool, name, "-c", tag, keys.get((pool.uuid, name)))
                made.append((pool, name))
    except Exception:
        for pool, name in made:       # all disks or none
            try:
                _img(pool, name, "-d", tag, keys.get((pool.uuid, name)))
            except Exception:
                pass
        raise
    return {"disks": [serial for _, _, serial in disks]}


def _img(pool, name: str, op: str, tag: str, enc: dict | None = None) -> None:
    """qemu-img snapshot has no -f: the image is named as a json: spec, qcow2 over the pool's own protocol node
    (nfs:// included), so nothing is probed. enc: the image is encrypted (its passphrase as a secret object)."""
    what = {"-c": "create", "-a": "apply", "-d": "delete"}[op]
    if enc:
        key = images.Key(enc, name)
        images.qemu_img(["snapshot", "-q", op, tag, luks.target(pool, name, "qcow2", key.id)],
                        f"{what} VM snapshot {tag} on volume {name}", pools=(pool, key))
        return
    spec = "json:" + json.dumps({"driver": "qcow2", "file": pool.blockdev(name)})
    images.qemu_img(["snapshot", "-q", op, tag, spec], f"{what} VM snapshot {tag} on volume {name}", pools=(pool,))


# ---------------------------------------------------------------- a running QEMU guest

def _live(hv, action, rec, disks, tag, memory, progress) -> dict:
    from volstack.agent.qmp import QmpError
    vm = rec["name"]
    with hv._lock(vm):
        rec = hv._running(hv._need(vm))
        nodes = []
        for pool, name, serial in disks:
            d = hv._disk(rec, serial)
            if d["pool_uuid"] != pool.uuid or d["name"] != name:
                raise Failed(f"disk {serial} of VM {vm} is {d['name']} in pool {d['pool_uuid']}, not {name}")
            nodes.append(d)
        root = min(nodes, key=lambda d: d["device_id"])
        with hv._qmp(rec) as q:
            have = {d["node"]: _tags(hv, q, rec, d) for d in nodes}
            holding = [n for n, tags in have.items() if tag in tags]
            try:
                if action == "delete":
                    for node in holding:
                        q.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": tag})
                    return {"disks": [serial for _, _, serial in disks]}
                if action == "create" and len(holding) == len(nodes) and \
                        (not memory or have[root["node"]].get(tag, 0) > 0):
                    return {"disks": [serial for _, _, serial in disks]}
                if action == "revert":
                    if len(holding) != len(nodes) or have[root["node"]].get(tag, 0) <= 0:
                        raise NotFound(f"VM snapshot {tag} with memory is not on every disk of VM {vm}; nothing was "
                                       "reverted")
                else:
                    for node in holding:         # a partial one (an interrupted save): take it anew
                        q.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": tag})
                    if not memory:
                        q.execute("transaction", {"actions": [
                            {"type": "blockdev-snapshot-internal-sync", "data": {"device": d["node"], "name": tag}}
                            for d in nodes]})
                        return {"disks": [serial for _, _, serial in disks]}
                if action == "revert":
                    for d in nodes:
                        drop_node_bitmaps(q, d["node"])
                job = f"vmsnap-{action}-{tag[:8]}"
                q.execute(f"snapshot-{'save' if action == 'create' else 'load'}",
                          {"job-id": job, "tag": tag, "vmstate": root["node"], "devices": [d["node"] for d in nodes]})
            except QmpError as e:
                raise Failed(f"QEMU refused VM snapshot {action} {tag} of VM {vm}: {e.desc}") from None
    error = _wait_job(hv, rec, job, progress)
    with hv._lock(vm), hv._qmp(rec) as q:
        if action == "revert" and q.execute("query-status")["status"] != "running":
            q.execute("cont")        # a load that failed before touching the guest leaves it paused
        if error:
            raise Failed(f"VM snapshot {action} {tag} of VM {vm} failed: {error}")
        if action == "create" and not all(tag in _tags(hv, q, rec, d) for d in nodes):
            raise Failed(f"QEMU finished saving VM snapshot {tag} of VM {vm} but not every disk holds it")
    return {"disks": [serial for _, _, serial in disks]}


def _tags(hv, q, rec, disk) -> dict:
    """The internal snapshots of a guest's disk: {name: size of the memory state it holds}."""
    return {sn["name"]: sn.get("vm-state-size", 0) for sn in hv._inserted(q, rec, disk)["image"].get("snapshots", [])}


def _wait_job(hv, rec, job: str, progress) -> str | None:
    """Poll a snapshot job until it concluded; its error, if any. QEMU's main loop is busy while a save or a load
    runs, so a monitor that does not answer in time is asked again (the guest's QEMU going away ends the wait)."""
    from volstack.agent.qmp import QmpGone
    while True:
        try:
            with hv._lock(rec["name"]), hv._qmp(rec) as q:
                state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
                if state is None:
                    return "the job vanished"
                if state["status"] == "concluded":
                    q.execute("job-dismiss", {"id": job})
                    return state.get("error")
                if state.get("total-progress"):
                    progress(min(99, int(state["current-progress"] * 100 / state["total-progress"])))
        except QmpGone:
            hv._running(rec)
        time.sleep(0.05)
