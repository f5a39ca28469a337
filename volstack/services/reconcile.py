"""One reconciliation of hosts and database: which guests each host runs, with which disks, against the records.

Each host check (every agent reconnect, right after a management server starts, then periodically) asks the
host for its guests (`vm_list`: each guest's state and disk set, serial and image) and compares them with the
database. A difference is one of the declared situations of RULES, each with one action and one event that
gives the reason. The pass itself only looks; the action runs as the task `reconcileVirtualMachine`, on the
VM's sync key, so it never interleaves with a start, stop, migration or snapshot of that VM, and it looks
again (host and database) before acting. VMs and volumes with a job pending, or one that finished since the
host was asked, are left to that job.

The pass also records which images each host's guests have open (`host.details.open_images`);
`check_not_open` refuses to give such an image to another VM, delete it or move it.
"""
import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select

from volstack.db.models import AsyncJob, Host, utcnow
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.default import serial_of
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, ResourceInUse
from volstack.services import events
from volstack.services.lifecycle import VM

log = logging.getLogger("volstack.reconcile")
ALIVE = ("Running", "Incoming")
NOT_RUNNING = ("Stopped", "Destroyed", "Error")


@dataclass(frozen=True)
class Rule:
    situation: str       # what the host reports against what the database records
    action: str
    event: str
    level: str


RULES = {r.situation: r for r in (
    Rule("lost_guest", "record the VM Stopped", "VM.STOP", "WARN"),
    Rule("stale_guest", "stop the guest (forced)", "VM.STOP", "WARN"),
    Rule("orphan_guest", "stop the guest and remove it from the host", "VM.STOP", "WARN"),
    Rule("misplaced_guest", "stop this copy of the guest (forced)", "VM.STOP", "WARN"),
    Rule("interrupted_start", "adopt the guest: record the VM Running on the host", "VM.START", "WARN"),
    Rule("interrupted_start_other_disks", "stop the guest, record the VM Stopped", "VM.STOP", "WARN"),
    Rule("extra_disk", "detach the disk from the guest", "VOLUME.DETACH", "WARN"),
    Rule("missing_disk", "hot-plug the disk into the guest", "VOLUME.ATTACH", "WARN"),
    Rule("other_image", "report it on the volume (an operator decides)", "VOLUME.RECOVER", "ERROR"),
)}


def _serial_prefix(serial: str) -> str:
    """A volume's uuid begins with this (the serial is the uuid without dashes, cut at 20 characters)."""
    return f"{serial[:8]}-{serial[8:12]}-{serial[12:16]}-{serial[16:20]}"


def _volume_by_serial(s, serial: str) -> Volume | None:
    if len(serial) != 20:
        return None
    return s.scalar(select(Volume).where(Volume.uuid.like(_serial_prefix(serial) + "%"), Volume.removed.is_(None)))


def _on_primary(s, vm) -> dict[str, Volume]:
    """The VM's volumes that have an image, by serial."""
    return {serial_of(v): v for v in s.scalars(select(Volume).where(
        Volume.vm_id == vm.id, Volume.removed.is_(None), Volume.pool_id.isnot(None),
        Volume.state.notin_(("Allocated", "Uploaded", "Creating"))))}


def _images(guest) -> dict[str, dict]:
    return {i["serial"]: i for i in (guest or {}).get("images", [])}


def _same_image(s, vol: Volume, image: dict) -> bool:
    pool = s.get(StoragePool, vol.pool_id)
    return pool is not None and pool.uuid == image["pool_uuid"] and vol.path == image["name"]


def diagnose(s, host: Host, name: str, guest: dict | None) -> list[tuple[str, str | None]]:
    """The situations (RULES keys, with the serial for disk ones) of guest `name` on host against the database."""
    vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == name))
    alive = guest is not None and guest["state"] in ALIVE
    if vm is None or vm.removed is not None:
        return [("orphan_guest", None)] if alive else []
    if vm.state in NOT_RUNNING:
        return [("stale_guest", None)] if alive else []
    if vm.state == "Starting" and alive and guest["state"] == "Running":
        db, have = _on_primary(s, vm), _images(guest)
        same = db.keys() == have.keys() and all(_same_image(s, v, have[k]) for k, v in db.items())
        return [("interrupted_start" if same else "interrupted_start_other_disks", None)]
    if vm.state != "Running":
        return []                  # Stopping, Migrating, Expunging: their job (or the transitional sweep) settles
    if vm.host_id != host.id:
        return [("misplaced_guest", None)] if alive else []      # an Incoming one too: no migration is under way
    if not alive:
        return [("lost_guest", None)]
    if guest["state"] != "Running":
        return []
    db, have = _on_primary(s, vm), _images(guest)
    out = [("extra_disk", k) for k in sorted(have.keys() - db.keys())]
    out += [("missing_disk", k) for k in sorted(db.keys() - have.keys()) if db[k].state == "Ready"]
    out += [("other_image", k) for k in sorted(db.keys() & have.keys())
            if db[k].state == "Ready" and not _same_image(s, db[k], have[k])]
    return out


def _related(s, name: str, guest: dict | None) -> list[str]:
    """Uuids of the VM and of every volume the database or the host associates with it."""
    uuids = [name]
    vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == name))
    if vm is not None:
        uuids += list(s.scalars(select(Volume.uuid).where(Volume.vm_id == vm.id, Volume.removed.is_(None))))
    for serial in _images(guest):
        vol = _volume_by_serial(s, serial)
        if vol is not None:
            uuids.append(vol.uuid)
    return uuids


def busy(s, uuids: list[str], since, exclude_job: str | None = None) -> bool:
    """A job works on one of these objects (pending, or finished since `since`, when the host was asked), or a
    storage pool maintenance job (it stops and starts VMs) is under way."""
    keys = [f"{kind}:{u}" for u in uuids for kind in ("VirtualMachine", "Volume")]
    stmt = select(AsyncJob.id).where(or_(
        and_(or_(AsyncJob.status == 0, AsyncJob.completed >= since),
             or_(AsyncJob.instance_uuid.in_(uuids), AsyncJob.sync_key.in_(keys))),
        and_(AsyncJob.status == 0, AsyncJob.instance_type == "StoragePool")))
    if exclude_job:
        stmt = stmt.where(AsyncJob.uuid != exclude_job)
    return s.scalar(stmt.limit(1)) is not None


def _guests(host: Host) -> dict[str, dict]:
    return {g["name"]: g for g in channel(host).call("vm_list")["vms"]}


# ---------------------------------------------------------------- the periodic pass

def reconcile_host(db, host: Host, submit) -> list[str]:
    """One pass over a live host: records its open images and submits a reconcileVirtualMachine task (submit(s,
    name, host_uuid)) for each guest or VM that differs from the database. Returns those names."""
    asked = utcnow()
    try:
        guests = _guests(host)
    except CloudError:
        return []                       # the heartbeat decides about an unreachable host
    open_images = {f"{i['pool_uuid']}/{i['name']}": g["name"] for g in guests.values() if g["state"] in ALIVE
                   for i in g.get("images", [])}
    with db.session(readonly=True) as s:          # only looks: no write lock unless there is something to write
        row = s.get(Host, host.id)
        if row is None:
            return []
        changed = (row.details or {}).get("open_images") != open_images
        recorded = set(s.scalars(select(VirtualMachine.uuid).where(VirtualMachine.host_id == host.id,
                                                                   VirtualMachine.state == "Running",
                                                                   VirtualMachine.removed.is_(None))))
        todo = [name for name in sorted(set(guests) | recorded)
                if diagnose(s, row, name, guests.get(name)) and not busy(s, _related(s, name, guests.get(name)), asked)]
    if changed or todo:
        with db.session() as s:
            row = s.get(Host, host.id)
            if changed:
                row.details = {**(row.details or {}), "open_images": open_images}
            for name in todo:               # the task looks again under the VM's sync key before acting
                submit(s, name, row.uuid)
    return todo


# ---------------------------------------------------------------- the task: look again, then act

def apply(s, ctx, host_uuid: str, name: str) -> list[str]:
    """Runs on the VM's sync key. Returns the situations acted on."""
    host = s.scalar(select(Host).where(Host.uuid == host_uuid))
    s.commit()                          # no transaction stays open across an agent call
    if host is None or host.state != "Up":
        return []
    asked = utcnow()
    try:
        guest = _guests(host).get(name)
    except CloudError:
        return []                       # unreachable again: the next host check submits the task again
    findings = diagnose(s, host, name, guest)
    if not findings or busy(s, _related(s, name, guest), asked, exclude_job=ctx.job_uuid):
        s.commit()
        return []
    vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == name))
    s.commit()
    for situation, serial in findings:
        _ACTIONS[situation](s, ctx, host, name, vm, guest, serial)
        s.commit()
    return [f for f, _ in findings]


def _event(s, ctx, situation: str, text: str, kind: str, uuid: str, level: str | None = None) -> None:
    rule = RULES[situation]
    events.record(s, ctx, rule.event, f"{text} (reconciliation: {rule.action})", level=level or rule.level,
                  resource_type=kind, resource_uuid=uuid)


def _failed(s, ctx, situation, what, exc, kind, uuid) -> None:
    _event(s, ctx, situation, f"{what} failed: {exc.text}; the next host check tries again", kind, uuid, "ERROR")


def _stop(s, ctx, host, name, vm, guest, serial, situation=None) -> bool:
    situation = situation or ("orphan_guest" if vm is None or vm.removed is not None else "stale_guest")
    label = f"VM {vm.name}" if vm is not None else f"guest {name}"
    why = {"orphan_guest": "no VM record owns it (expunged or unknown)",
           "stale_guest": f"the database records the VM {vm.state if vm else ''} (a stop or destroy the host did "
                          "not receive, or a start whose record was undone)",
           "misplaced_guest": "the database records the VM Running on another host",
           "interrupted_start_other_disks": "the VM's start was interrupted and the guest does not have the disks "
                                            "the database records"}[situation]
    disks = ", ".join(sorted(_images(guest))) or "none"
    s.commit()
    try:
        channel(host).call("vm_stop", name=name, forced=True)
        if situation == "orphan_guest":
            channel(host).call("vm_destroy", name=name)
    except CloudError as exc:
        _failed(s, ctx, situation, f"Stopping {label} on host {host.name}", exc, "VirtualMachine", name)
        return False
    _event(s, ctx, situation, f"{label} was running on host {host.name} with disks {disks} although {why}; "
           "it was stopped there", "VirtualMachine", name)
    return True


def _misplaced(s, ctx, host, name, vm, guest, serial):
    _stop(s, ctx, host, name, vm, guest, serial, "misplaced_guest")


def _adopt(s, ctx, host, name, vm, guest, serial):
    vm = s.get(VirtualMachine, vm.id)
    VM.fire(s, vm, "OperationSucceeded", host_id=host.id, last_host_id=host.id)
    _event(s, ctx, "interrupted_start", f"VM {vm.name} was Starting with no job working on it and host {host.name} "
           "runs it with the disks the database records; it is Running there", "VirtualMachine", name)


def _undo_start(s, ctx, host, name, vm, guest, serial):
    if _stop(s, ctx, host, name, vm, guest, serial, "interrupted_start_other_disks"):
        vm = s.get(VirtualMachine, vm.id)
        VM.fire(s, vm, "OperationFailed", host_id=None)


def _lost(s, ctx, host, name, vm, guest, serial):
    vm = s.get(VirtualMachine, vm.id)
    VM.fire(s, vm, "AgentReportStopped", host_id=None, last_host_id=host.id)
    _event(s, ctx, "lost_guest", f"VM {vm.name} is no longer running on host {host.name} (the host reports it "
           "powered off); recorded as Stopped", "VirtualMachine", name)


def _detach(s, ctx, host, name, vm, guest, serial):
    vol = _volume_by_serial(s, serial)
    label = f"volume {vol.name}" if vol is not None else f"disk {serial} (no volume has this serial)"
    where = (f"the database records it attached to VM {s.get(VirtualMachine, vol.vm_id).name}" if vol is not None
             and vol.vm_id else "the database records it detached" if vol is not None else "it belongs to nothing")
    s.commit()
    try:
        channel(host).call("disk_detach", vm=name, serial=serial)
    except CloudError as exc:
        _failed(s, ctx, "extra_disk", f"Detaching {label} from VM {vm.name}", exc, "Volume",
                vol.uuid if vol else name)
        return
    _event(s, ctx, "extra_disk", f"VM {vm.name} on host {host.name} had {label} plugged in although {where}; it "
           "was detached from the guest", "Volume", vol.uuid if vol else name)


def _plug(s, ctx, host, name, vm, guest, serial):
    from volstack.services.volumes import qos_for
    vol = _on_primary(s, vm)[serial]
    pool = s.get(StoragePool, vol.pool_id)
    disk = driver_for(pool.provider).disk(pool, vol, vol.device_id, qos_for(s, vol))
    s.commit()
    try:
        channel(host).call("disk_attach", vm=name, disk=disk)
    except CloudError as exc:
        _failed(s, ctx, "missing_disk", f"Plugging volume {vol.name} into VM {vm.name}", exc, "Volume", vol.uuid)
        return
    _event(s, ctx, "missing_disk", f"Volume {vol.name} is attached to VM {vm.name} in the database but the guest "
           f"on host {host.name} did not have it; it was hot-plugged", "Volume", vol.uuid)


def _other_image(s, ctx, host, name, vm, guest, serial):
    vol = _on_primary(s, vm)[serial]
    img = _images(guest)[serial]
    text = (f"VM {vm.name} on host {host.name} uses image {img['name']} of pool {img['pool_uuid']} for volume "
            f"{vol.name}, which the database records at {vol.path}")
    if vol.error != text:            # reported once, not at every host check
        vol.error = text
        _event(s, ctx, "other_image", text, "Volume", vol.uuid)


_ACTIONS = {"lost_guest": _lost, "stale_guest": _stop, "orphan_guest": _stop, "misplaced_guest": _misplaced,
            "interrupted_start": _adopt, "interrupted_start_other_disks": _undo_start, "extra_disk": _detach,
            "missing_disk": _plug, "other_image": _other_image}
assert _ACTIONS.keys() == RULES.keys()


# ---------------------------------------------------------------- open images are never given away

def check_not_open(s, vol: Volume, for_vm: VirtualMachine | None, what: str) -> None:
    """Refuse `what` (attach, delete, migrate) while a guest other than for_vm has the volume's image open, as the
    hosts last reported; a hit is confirmed with the host first, so a report older than a stop does not refuse."""
    if vol.pool_id is None or not vol.path:
        return
    pool = s.get(StoragePool, vol.pool_id)
    key = f"{pool.uuid}/{vol.path}"
    for host in s.scalars(select(Host).where(Host.hypervisor == "KVM")):
        holder = ((host.details or {}).get("open_images") or {}).get(key)
        if holder is None or (for_vm is not None and holder == for_vm.uuid):
            continue
        try:
            guest = _guests(host).get(holder)
        except CloudError:
            guest = {"state": "Running", "images": [{"pool_uuid": pool.uuid, "name": vol.path, "serial": ""}]}
        if guest is None or guest["state"] not in ALIVE or not any(
                i["pool_uuid"] == pool.uuid and i["name"] == vol.path for i in guest.get("images", [])):
            continue
        owner = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == holder))
        label = f"VM {owner.name} ({owner.state} in the database)" if owner is not None else f"guest {holder}"
        raise ResourceInUse(f"Cannot {what} volume {vol.name}: its image is open in {label} on host {host.name}. "
                            "Reconciliation stops guests the database does not record there; try again after it "
                            "has (within a host check interval)")
