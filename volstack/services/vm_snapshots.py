"""VM snapshots: createVMSnapshot, listVMSnapshot, revertToVMSnapshot, deleteVMSnapshot (reference §3.5).

A VM snapshot is one instant of every disk of a VM, taken in one atomic step, with or without the guest's memory:
a qcow2 internal snapshot named by the VM snapshot's uuid in each disk image (agent/vm_snapshots.py). For a running
guest that is one QMP `transaction` over all its disks (disk only: the guest is not paused for its memory) or QEMU's
`snapshot-save` job (with memory, kept in the ROOT disk); for a stopped VM `qemu-img snapshot -c` on each disk.

CloudStack's rules, kept here: the VM is Running or Stopped; memory needs a Running VM; disk-only snapshots of a
running KVM VM need kvm.vmstoragesnapshot.enabled; every disk is a Ready QCOW2 volume; at most vmsnapshot.max per VM;
one VM snapshot operation at a time and none while a volume snapshot of the VM is under way. Revert: a Running VM
only to a DiskAndMemory snapshot (it goes on running from that state), a Stopped VM only to a Disk one. While a VM
has VM snapshots its volumes cannot be attached, detached, resized or migrated, its service offering cannot change
and its volumes cannot be reverted to volume snapshots (`volumes.operation_checks`). VM snapshots go with the VM's
expunge. The snapshots form a tree as in CloudStack: each new one's parent is the VM's `current` snapshot, a revert
makes its target current, and deleting one hands its children to its parent.
"""
from sqlalchemy import func, or_, select

from volstack.db.models import Host, utcnow
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.db.vm_snapshot_models import VMSnapshot
from volstack.drivers import driver_for
from volstack.drivers.default import serial_of
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import encryption, events, lookup, vms, volumes
from volstack.services import settings as S
from volstack.services.context import check_access, owner_filter
from volstack.services.lifecycle import VM_SNAPSHOT, VOLUME
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

lookup.register_entity("VmSnapshot", VMSnapshot)
ACTIVE = ("Allocated", "Creating", "Reverting", "Expunging")          # CloudStack's hasActiveVMSnapshotTasks
LISTED = ("Ready", "Creating", "Allocated", "Error", "Expunging", "Reverting")   # listVMSnapshot without state=
DELETABLE = ("Ready", "Error", "Expunging", "Hidden")
VOLUME_SNAPSHOT_BUSY = ("Allocated", "Creating", "BackingUp")


def get_vm_snapshot(s, ctx, uuid) -> VMSnapshot:
    snap = s.scalar(select(VMSnapshot).where(VMSnapshot.uuid == uuid, VMSnapshot.removed.is_(None)))
    if snap is None:
        raise InvalidParameter(f"Unable to find the VM snapshot with id {uuid}")
    check_access(s, ctx, snap.account_id, "VM snapshot")
    return snap


def of_vm(s, vm_id: int) -> list[VMSnapshot]:
    return list(s.scalars(select(VMSnapshot).where(VMSnapshot.vm_id == vm_id, VMSnapshot.removed.is_(None))
                          .order_by(VMSnapshot.id)))


def _busy(s, vm, but: VMSnapshot | None = None) -> VMSnapshot | None:
    return next((x for x in of_vm(s, vm.id) if x.state in ACTIVE and x is not but), None)


def _refuse_busy(s, vm, but=None) -> None:
    busy = _busy(s, vm, but)
    if busy is not None:
        raise InvalidParameter(f"VM snapshot {busy.display_name} of VM {vm.name} is {busy.state}; there can be one VM "
                               "snapshot operation at a time on a VM: try again when it has finished")


def _disks(s, vm) -> list[Volume]:
    return list(s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))
                          .order_by(Volume.device_id)))


def _check_disks(s, vm, vols: list[Volume]) -> None:
    """Every disk must be a Ready qcow2 image on a pool that keeps internal snapshots."""
    for vol in vols:
        if vol.state != "Ready" or vol.pool_id is None:
            raise InvalidParameter(f"Volume {vol.name} of VM {vm.name} is {vol.state}; a VM snapshot needs every "
                                   "volume of the VM Ready on primary storage (wait for its operation to finish, "
                                   "or start the VM once so its volumes are created)")
        pool = s.get(StoragePool, vol.pool_id)
        formats = driver_for(pool.provider).CAPABILITIES.get("image_formats", "qcow2")
        if vol.format.upper() != "QCOW2" or "qcow2" not in formats.split(","):
            raise InvalidParameter(f"Volume {vol.name} of VM {vm.name} is a {vol.format} image on {pool.pool_type} "
                                   f"pool {pool.name}: VM snapshots on KVM are qcow2 internal snapshots, so every "
                                   "volume of the VM must be QCOW2 on a file pool (NFS, SharedMountPoint, local)")
    busy = s.scalar(select(Snapshot).where(Snapshot.volume_id.in_([v.id for v in vols]), Snapshot.removed.is_(None),
                                           Snapshot.state.in_(VOLUME_SNAPSHOT_BUSY)))
    if busy is not None:
        raise InvalidParameter(f"Volume snapshot {busy.name} of VM {vm.name} is {busy.state}; try the VM snapshot "
                               "again when it has finished")


def refuse_quiesce(quiescevm, instead: str) -> None:
    """quiescevm=true: freezing the guest's file systems needs the QEMU guest agent, and volstack's guests have no
    guest agent channel volstack drives; refusing beats a snapshot the caller believes is application consistent."""
    if quiescevm:
        raise InvalidParameter(f"quiescevm=true is not supported: quiescing needs the QEMU guest agent inside the VM, "
                               f"which volstack does not drive; omit quiescevm: {instead}")


def create(s, ctx, *, virtualmachineid, name=None, description=None, snapshotmemory=False,
           quiescevm=False) -> VMSnapshot:
    """The VM snapshot row (Allocated) after every check that needs no host."""
    vm = vms.get_vm(s, ctx, virtualmachineid)
    refuse_quiesce(quiescevm, "a VM snapshot holds all disks at one instant (crash consistent)")
    stamp = f"{utcnow():%Y%m%d%H%M%S}"
    internal = f"{vm.name}_VS_{stamp}"
    display = name or internal
    if s.scalar(select(VMSnapshot.id).where(VMSnapshot.vm_id == vm.id, VMSnapshot.display_name == display,
                                            VMSnapshot.removed.is_(None))):
        raise InvalidParameter(f"Creating VM snapshot failed: VM {vm.name} already has a VM snapshot named {display}")
    if vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"Creating VM snapshot failed: VM {vm.name} is {vm.state}, not Running or Stopped")
    if snapshotmemory and vm.state != "Running":
        raise InvalidParameter(f"Can not snapshot memory when VM is not in Running state: VM {vm.name} is {vm.state} "
                               "(omit snapshotmemory for a disk-only VM snapshot)")
    if vm.state == "Running" and not snapshotmemory:
        host = s.get(Host, vm.host_id)
        if not S.Settings.value_in(s, S.KVM_VMSTORAGE_SNAPSHOT, cluster=host.cluster_id if host else None):
            raise InvalidParameter(f"Creating a snapshot of running KVM VM {vm.name} without memory is disabled "
                                   "(kvm.vmstoragesnapshot.enabled=false); pass snapshotmemory=true, stop the VM, or "
                                   "ask an administrator to enable it")
    limit = S.Settings.value_in(s, S.VMSNAPSHOT_MAX)
    have = of_vm(s, vm.id)
    if len(have) >= limit:
        raise InvalidParameter(f"Creating VM snapshot failed: VM {vm.name} already has {len(have)} VM snapshots and a "
                               f"VM can have at most {limit} (vmsnapshot.max); delete old ones")
    vols = _disks(s, vm)
    _check_disks(s, vm, vols)
    if snapshotmemory:
        encryption.refuse_memory_snapshot(vm, vols)
    _refuse_busy(s, vm)
    snap = VMSnapshot(name=internal, display_name=display, description=description, vm_id=vm.id, zone_id=vm.zone_id,
                      snapshot_type="DiskAndMemory" if snapshotmemory else "Disk", hypervisor=vm.hypervisor,
                      volume_ids=[v.id for v in vols], account_id=vm.account_id, domain_id=vm.domain_id)
    s.add(snap)
    s.flush()
    events.record(s, ctx, "VMSNAPSHOT.CREATE", f"VM snapshot {display} of VM {vm.name} requested",
                  resource_type="VmSnapshot", resource_uuid=snap.uuid)
    return snap


# ---------------------------------------------------------------- host work

def _volumes_of(s, snap) -> list[Volume]:
    return list(s.scalars(select(Volume).where(Volume.id.in_(snap.volume_ids or []), Volume.removed.is_(None))
                          .order_by(Volume.device_id, Volume.id)))


def _disk_specs(s, vols) -> list[dict]:
    out = []
    for vol in vols:
        pool = s.get(StoragePool, vol.pool_id)
        out.append({"pool": driver_for(pool.provider).spec(pool), "name": vol.path, "format": vol.format.lower(),
                    "serial": serial_of(vol), **({"encryption": encryption.spec(s, vol)} if vol.passphrase_id else {})})
    return out


def _host(s, vm, vols) -> Host:
    """The running guest's host, else an Up host that reaches every pool of the disks (its last host first)."""
    if vm is not None and vm.state == "Running":
        return s.get(Host, vm.host_id)
    from volstack.services.pools import hosts_in_scope
    hosts = None
    for pool_id in {v.pool_id for v in vols}:
        pool = s.get(StoragePool, pool_id)
        reach = {h.id: h for h in hosts_in_scope(s, pool)}
        hosts = reach if hosts is None else {k: h for k, h in hosts.items() if k in reach}
    if not hosts:
        raise ResourceUnavailable("No Up host reaches every storage pool of the VM's volumes "
                                  f"({', '.join(v.name for v in vols)})")
    last = vm.last_host_id if vm is not None else None
    return hosts.get(last) or hosts[min(hosts)]


def _begin_volumes(s, vols, event: str) -> None:
    for vol in vols:
        VOLUME.fire(s, vol, event)


def _end_volumes(s, vols) -> None:
    for vol in vols:
        if vol.state in ("Snapshotting", "RevertSnapshotting"):
            VOLUME.fire(s, vol, "OperationSucceeded")


def _failed(s, ctx, snap, vols, exc: CloudError, what: str, event: str):
    """Back to a stable state with the reason, committed (the job's failure must not undo it), then raise."""
    _end_volumes(s, vols)
    VM_SNAPSHOT.fire(s, snap, "OperationFailed", error=f"{what} failed: {exc.text}")
    events.record(s, ctx, event, f"VM snapshot {snap.display_name}: {snap.error}", level="ERROR",
                  resource_type="VmSnapshot", resource_uuid=snap.uuid)
    s.commit()
    raise exc


def take(s, ctx, snap: VMSnapshot, progress=None) -> VMSnapshot:
    """The job of createVMSnapshot: Allocated → Creating → Ready (the VM's volumes Snapshotting meanwhile)."""
    vm = s.get(VirtualMachine, snap.vm_id)
    vols = _volumes_of(s, snap)
    memory = snap.snapshot_type == "DiskAndMemory"
    try:
        if vm.removed is not None or vm.state not in ("Running", "Stopped") or (memory and vm.state != "Running"):
            raise InvalidParameter(f"VM {vm.name} is {vm.state} now; a {snap.snapshot_type} VM snapshot needs it "
                                   + ("Running" if memory else "Running or Stopped"))
        if [v.id for v in vols] != [v.id for v in _disks(s, vm)]:
            raise InvalidParameter(f"The volumes of VM {vm.name} changed since the VM snapshot was requested; request "
                                   "it again")
        _check_disks(s, vm, vols)
        host = _host(s, vm, vols)
        _begin_volumes(s, vols, "SnapshotRequested")
        VM_SNAPSHOT.fire(s, snap, "CreateRequested")
    except CloudError as exc:
        s.rollback()             # nothing half-moved: then Allocated → Creating → Error with the reason
        VM_SNAPSHOT.fire(s, snap, "CreateRequested")
        _failed(s, ctx, snap, [], exc, "taking the VM snapshot", "VMSNAPSHOT.CREATE")
    disks = _disk_specs(s, vols)
    s.commit()
    try:
        run_long(channel(host), "vm_snapshot_create", progress, vm=vm.uuid, tag=snap.uuid, memory=memory,
                 running=vm.state == "Running", disks=disks)
    except CloudError as exc:
        _failed(s, ctx, snap, vols, exc, f"taking the VM snapshot on host {host.name}", "VMSNAPSHOT.CREATE")
    _end_volumes(s, vols)
    current = s.scalar(select(VMSnapshot).where(VMSnapshot.vm_id == vm.id, VMSnapshot.current.is_(True),
                                                VMSnapshot.removed.is_(None), VMSnapshot.id != snap.id))
    if current is not None:
        current.current = False
    VM_SNAPSHOT.fire(s, snap, "OperationSucceeded", current=True, parent_id=current.id if current else None,
                     error=None)
    events.record(s, ctx, "VMSNAPSHOT.CREATE", f"VM snapshot {snap.display_name} ({snap.snapshot_type}) of VM "
                  f"{vm.name} taken on host {host.name}", resource_type="VmSnapshot", resource_uuid=snap.uuid)
    return snap


def check_revert(s, snap: VMSnapshot) -> VirtualMachine:
    vm = s.get(VirtualMachine, snap.vm_id)
    if vm is None or vm.removed is not None:
        raise InvalidParameter(f"The VM of VM snapshot {snap.display_name} no longer exists")
    _refuse_busy(s, vm, but=snap if snap.state == "Reverting" else None)
    if vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"VM Snapshot reverting failed: VM {vm.name} is {vm.state}, not Running or Stopped")
    if vm.state == "Running" and snap.snapshot_type == "Disk" or \
            vm.state == "Stopped" and snap.snapshot_type == "DiskAndMemory":
        raise InvalidParameter(f"VM Snapshot revert not allowed: VM {vm.name} is {vm.state} and {snap.display_name} "
                               f"is a {snap.snapshot_type} snapshot; this would change the VM's state. A running VM "
                               "reverts to a disk and memory snapshot, a stopped VM to a disk snapshot")
    if snap.state not in ("Ready", "Reverting"):
        raise InvalidParameter(f"VM Snapshot reverting failed: VM snapshot {snap.display_name} is {snap.state}, "
                               "not Ready")
    attached = {v.id for v in _disks(s, vm)}
    gone = [v.name for v in _volumes_of(s, snap) if v.id not in attached]
    if gone or len(_volumes_of(s, snap)) != len(snap.volume_ids or []):
        raise InvalidParameter(f"VM snapshot {snap.display_name} covers volumes no longer attached to VM {vm.name} "
                               f"({', '.join(gone) or 'deleted ones'}); it cannot be reverted")
    return vm


def revert(s, ctx, snap: VMSnapshot, progress=None) -> VirtualMachine:
    """The job of revertToVMSnapshot: every disk (and, for DiskAndMemory, the running guest) back to the snapshot."""
    vm = check_revert(s, snap)
    vols = _volumes_of(s, snap)
    _check_disks(s, vm, vols)
    host = _host(s, vm, vols)
    VM_SNAPSHOT.fire(s, snap, "RevertRequested")
    _begin_volumes(s, vols, "RevertSnapshotRequested")
    s.commit()
    try:
        run_long(channel(host), "vm_snapshot_revert", progress, vm=vm.uuid, tag=snap.uuid,
                 memory=snap.snapshot_type == "DiskAndMemory", running=vm.state == "Running",
                 disks=_disk_specs(s, vols))
    except CloudError as exc:
        _failed(s, ctx, snap, vols, exc, f"reverting VM {vm.name} on host {host.name}", "VMSNAPSHOT.REVERTTO")
    _end_volumes(s, vols)
    for other in of_vm(s, vm.id):
        other.current = other.id == snap.id
    VM_SNAPSHOT.fire(s, snap, "OperationSucceeded", error=None)
    events.record(s, ctx, "VMSNAPSHOT.REVERTTO", f"VM {vm.name} reverted to VM snapshot {snap.display_name}",
                  resource_type="VmSnapshot", resource_uuid=snap.uuid)
    return vm


def check_delete(s, snap: VMSnapshot) -> None:
    if snap.state not in DELETABLE:
        raise InvalidParameter(f"Can't delete VM snapshot {snap.display_name}: it is {snap.state}, not Ready, Error "
                               "or Expunging (wait for its operation to finish)")
    vm = s.get(VirtualMachine, snap.vm_id)
    _refuse_busy(s, vm, but=snap if snap.state == "Expunging" else None)


def delete(s, ctx, snap: VMSnapshot, progress=None) -> None:
    """The job of deleteVMSnapshot: the snapshot leaves every disk that still exists, then the tree is mended."""
    check_delete(s, snap)
    vm = s.get(VirtualMachine, snap.vm_id)
    vols = [v for v in _volumes_of(s, snap) if v.pool_id is not None]
    VM_SNAPSHOT.fire(s, snap, "ExpungeRequested")
    s.commit()
    # disks at rest name the snapshot's VM unless it runs: the agent checks that no QEMU of it is live
    at_rest_vm = vm.uuid if vm.state != "Running" or vm.removed is not None else None
    try:
        for guest, disks in _by_guest(s, vols):
            ch, specs = channel(_host(s, guest, disks)), _disk_specs(s, disks)
            s.commit()
            ch.call("vm_snapshot_delete", vm=guest.uuid if guest else at_rest_vm, tag=snap.uuid,
                    running=guest is not None, disks=specs)
    except CloudError as exc:
        _failed(s, ctx, snap, [], exc, "deleting the VM snapshot", "VMSNAPSHOT.DELETE")
    for child in s.scalars(select(VMSnapshot).where(VMSnapshot.parent_id == snap.id)):
        child.parent_id = snap.parent_id
    if snap.current and snap.parent_id:
        s.get(VMSnapshot, snap.parent_id).current = True
    VM_SNAPSHOT.fire(s, snap, "OperationSucceeded", current=False, removed=utcnow())
    events.record(s, ctx, "VMSNAPSHOT.DELETE", f"VM snapshot {snap.display_name} of VM {vm.name} deleted",
                  resource_type="VmSnapshot", resource_uuid=snap.uuid)


def _by_guest(s, vols) -> list[tuple[VirtualMachine | None, list[Volume]]]:
    """The disks grouped by the running guest that has them open (None: at rest). A data disk of a destroyed VM
    may since be attached to another VM: that VM's QEMU removes the snapshot from it."""
    groups: dict = {}
    for vol in vols:
        owner = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
        guest = owner if owner is not None and owner.state == "Running" and owner.removed is None else None
        groups.setdefault(guest.id if guest else None, (guest, []))[1].append(vol)
    return list(groups.values())


def _delete_all(s, ctx, vm) -> None:
    """An expunged VM's VM snapshots go with it (newest first, so no child outlives its parent)."""
    for snap in reversed(of_vm(s, vm.id)):
        if snap.state == "Allocated":
            VM_SNAPSHOT.fire(s, snap, "CreateRequested")
            VM_SNAPSHOT.fire(s, snap, "OperationFailed", error="the VM was expunged first")
        delete(s, ctx, snap)


vms.expunge_hooks.append(_delete_all)


def list_vm_snapshots(s, ctx, q: ListQuery, **f):
    stmt = select(VMSnapshot).where(VMSnapshot.removed.is_(None),
                                    *owner_filter(s, ctx, VMSnapshot, listall=q.listall, isrecursive=q.isrecursive,
                                                  account=q.account, domain_uuid=q.domainid)).order_by(VMSnapshot.id)
    if f.get("state"):
        stmt = stmt.where(func.lower(VMSnapshot.state) == f["state"].lower())
    else:
        stmt = stmt.where(VMSnapshot.state.in_(LISTED))
    if f.get("vmsnapshotid"):
        stmt = stmt.where(VMSnapshot.uuid == f["vmsnapshotid"])
    if f.get("vmsnapshotids"):
        stmt = stmt.where(VMSnapshot.uuid.in_(f["vmsnapshotids"]))
    if f.get("virtualmachineid"):
        stmt = stmt.where(VMSnapshot.vm_id == s.scalar(select(VirtualMachine.id).where(
            VirtualMachine.uuid == f["virtualmachineid"])))
    if f.get("name"):            # CloudStack: the snapshot's name or its display name
        name = f["name"].lower()
        stmt = stmt.where(or_(func.lower(VMSnapshot.display_name) == name, func.lower(VMSnapshot.name) == name))
    stmt = stmt.where(*identity_filter(VMSnapshot, {"tags": f.get("tags")}))
    stmt = stmt.where(*keyword_filter(q, VMSnapshot.name, VMSnapshot.display_name, VMSnapshot.description))
    return paginate(s, stmt, q)


# ---------------------------------------------------------------- CloudStack's rules about mixing

def _guard(s, op: str, vm: VirtualMachine | None, vol: Volume | None) -> None:
    snaps = of_vm(s, vm.id) if vm is not None else None
    if not snaps:
        return
    if op == "snapshot":           # a volume snapshot waits only for a VM snapshot operation under way
        busy = _busy(s, vm)
        if busy is not None:
            raise InvalidParameter(f"Volume {vol.name} cannot be snapshotted now: VM snapshot {busy.display_name} of "
                                   f"VM {vm.name} is {busy.state}; try again when it has finished")
        return
    names = ", ".join(x.display_name for x in snaps)
    why = f"VM {vm.name} has VM snapshots ({names}); delete them first (deleteVMSnapshot)"
    text = {"attach": f"Unable to attach volume {vol.name if vol else ''}: {why}",
            "detach": f"Unable to detach volume {vol.name if vol else ''}: {why}",
            "resize": f"Volume {vol.name if vol else ''} cannot be resized: {why}",
            "migrate": f"Volume {vol.name if vol else ''} cannot be migrated: {why}",
            "revertSnapshot": f"Unable to revert volume {vol.name if vol else ''} to a volume snapshot: {why}, as "
                              "reverting the volume would discard them",
            "changeServiceOffering": f"Unable to change the service offering of VM {vm.name}: {why}"}.get(op)
    if text:
        raise InvalidParameter(text)


volumes.operation_checks.append(_guard)


def settle_interrupted(db, ctx, snapshot_uuid: str, cmd: str) -> None:
    """A VM snapshot job died with its management server: stable states with the reason. An interrupted create
    is Error (delete it: the delete removes whatever part of it reached the disks), an interrupted revert Ready
    (the snapshot is intact; revert again), an interrupted delete stays Expunging (delete again)."""
    back = {"Allocated": "Error", "Creating": "Error", "Reverting": "Ready"}
    with db.session() as s:
        snap = s.scalar(select(VMSnapshot).where(VMSnapshot.uuid == snapshot_uuid))
        if snap is None or snap.state not in back:
            return
        reason = f"{cmd} was interrupted because the management server running it stopped"
        snap.state, snap.error = back[snap.state], reason
        for vol in _volumes_of(s, snap):
            if vol.state in ("Snapshotting", "RevertSnapshotting"):
                vol.state, vol.error = "Ready", reason
        events.record(s, ctx, "VMSNAPSHOT.RECOVER", f"VM snapshot {snap.display_name}: {reason}; it is {snap.state}",
                      level="WARN", resource_type="VmSnapshot", resource_uuid=snap.uuid)
