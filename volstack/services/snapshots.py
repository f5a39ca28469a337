"""Volume snapshots: createSnapshot (taken on primary, backed up to an image store), listSnapshots,
deleteSnapshot, revertSnapshot, and createVolume from a snapshot.

Flow of a snapshot (reference §3.2): Allocated (the row, made with the request) → Creating (the volume is
Snapshotting, committed) → CreatedOnPrimary (an internal qcow2 snapshot of a stopped or detached volume, or a
point-in-time file copy of a running guest's disk made by QEMU's backup job) → BackingUp → BackedUp (a flat
qcow2 `<uuid>.qcow2` on a writable image store of the zone), after which the primary copy is removed. The
volume stays Snapshotting until then, so nothing moves, resizes or reverts it under the backup. A failed
backup goes back to CreatedOnPrimary with the reason (the primary copy is kept) and is retried later
(services/snapshot_backups.py); a failed take is Error. A snapshot kept on primary only (locationtype PRIMARY, or
snapshot.backup.to.secondary false) is never backed up: services/snapshot_primary.py.

Incremental (qcow2 volumes, `kvm.incremental.snapshot`): each snapshot starts a dirty bitmap in the volume
image; the next one copies only what that bitmap marks and is stored beside its parent's backup with the
parent as its backing file (`parent_id`), up to `snapshot.delta.max` incrementals after a full one. Deleting
a snapshot that has a child first merges its data into the child, so no other snapshot loses anything.
"""
from sqlalchemy import select

from volstack.db import aggregate, counters
from volstack.db.models import Host, utcnow
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import DiskOffering, Passphrase, StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.default import serial_of
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, ResourceInUse, ResourceUnavailable
from volstack.services import encryption, events, imagestores, infra, limits, lookup, offerings, snapshots_rbd
from volstack.services import volumes
from volstack.services import snapshot_backups as retries
from volstack.services import snapshot_chains as chains
from volstack.services import snapshot_primary as primary
from volstack.services import templates  # noqa: F401  (registers the secondary-storage counter this one adds to)
from volstack.services import settings as S
from volstack.services.context import check_access, owner_filter
from volstack.services.lifecycle import SNAPSHOT, VOLUME
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

lookup.register_entity("Snapshot", Snapshot)
def _account_counts(s, r):
    if r["removed"] is None and r["state"] not in ("Destroyed", "Error"):
        yield "account", r["account_id"], "snapshot", 1
    if r["removed"] is None and r["store_id"] is not None:
        yield "account", r["account_id"], "secondary_storage", r["physical_size"]


counters.counted(Snapshot, ("account_id", "state", "removed", "store_id", "physical_size"), _account_counts)
limits.register_usage_counter("snapshot", lambda s, acc: aggregate.count(
    s, Snapshot, Snapshot.account_id == acc, Snapshot.removed.is_(None), Snapshot.state.notin_(("Destroyed", "Error"))))
limits.add_usage_counter("secondary_storage", lambda s, acc: aggregate.total(
    s, Snapshot.physical_size, Snapshot.account_id == acc, Snapshot.removed.is_(None), Snapshot.store_id.isnot(None)))
RECURRING = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY")
VISIBLE = ("Allocated", "Creating", "CreatedOnPrimary", "BackingUp", "BackedUp", "Copying", "Destroying")


def get_snapshot(s, ctx, uuid) -> Snapshot:
    snap = s.scalar(select(Snapshot).where(Snapshot.uuid == uuid, Snapshot.removed.is_(None)))
    if snap is None:
        raise InvalidParameter(f"Unable to find snapshot by id {uuid}")
    check_access(s, ctx, snap.account_id, "snapshot")
    return snap


def _vm_of(s, vol) -> VirtualMachine | None:
    return s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None


def _file_pool(s, vol) -> StoragePool:
    return s.get(StoragePool, vol.pool_id)      # RBD pools (native_snapshot) dispatch to snapshots_rbd below


def create(s, ctx, *, volumeid, name=None, policyid=None, locationtype=None, quiescevm=False) -> Snapshot:
    """The snapshot row (Allocated), after every check that can be made before touching a host."""
    vol = volumes.get_volume(s, ctx, volumeid)
    from volstack.services.vm_snapshots import refuse_quiesce
    refuse_quiesce(quiescevm, "a volume snapshot is crash consistent, as a power cut would leave the disk")
    kind = "MANUAL"
    if policyid:
        from volstack.services import snapshot_policies
        kind = snapshot_policies.recurring_type(s, ctx, policyid, vol)
    where = primary.location(s, locationtype)
    if vol.state not in ("Ready", "Snapshotting") or vol.pool_id is None:     # Snapshotting: the job queues behind
        hint = "wait for its operation to finish" if vol.state in ("Migrating", "Resizing", "Snapshotting",
                                                                    "RevertSnapshotting", "Attaching", "Creating",
                                                                    "Copying") \
            else "attach it to a VM (or start its VM) first so it exists on primary storage"
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be snapshotted: {hint}")
    pool = _file_pool(s, vol)
    vm = _vm_of(s, vol)
    volumes.check_operation(s, "snapshot", vm, vol)
    if encryption.is_encrypted(vol) and not snapshots_rbd.native(pool):
        raise InvalidParameter(f"Volume {vol.name} is encrypted: volume snapshots of encrypted volumes are taken on "
                               "RBD pools only (there they stay encrypted); migrate it to an RBD pool or use a VM "
                               "snapshot")
    if vm is not None and vm.state == "Running" and not S.Settings.value_in(s, S.KVM_SNAPSHOT_ENABLED,
                                                                            zone=vol.zone_id):
        raise InvalidParameter(f"Volume {vol.name} is attached to running VM {vm.name} and snapshots of volumes of "
                               "running KVM VMs are disabled (kvm.snapshot.enabled=false); stop the VM or ask an "
                               "administrator to enable them")
    if vm is not None and vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; snapshot its volume when it is Running or Stopped")
    if where == primary.SECONDARY and not imagestores.writable_stores(s, vol.zone_id):
        raise ResourceUnavailable("No writable image store in the volume's zone to back the snapshot up to: add one "
                                  "with addImageStore (or keep the snapshot on primary storage: locationtype=PRIMARY)")
    limits.check_limit(s, vol.account_id, "snapshot")
    if where == primary.SECONDARY:
        limits.check_limit(s, vol.account_id, "secondary_storage", vol.size)
    stamp = f"{utcnow():%Y%m%d%H%M%S}"
    snap = Snapshot(name=name or f"{vm.name + '_' if vm else ''}{vol.name}_{stamp}", volume_id=vol.id,
                    volume_type=vol.volume_type, disk_offering_id=vol.disk_offering_id, zone_id=vol.zone_id,
                    size=vol.size, hypervisor=vol.hypervisor or "KVM", account_id=vol.account_id,
                    domain_id=vol.domain_id, snapshot_type=kind, location_type=where,
                    passphrase_id=vol.passphrase_id, encrypt_format=vol.encrypt_format)
    s.add(snap)
    s.flush()
    events.record(s, ctx, "SNAPSHOT.CREATE", f"Snapshot {snap.name} of volume {vol.name} requested",
                  resource_type="Snapshot", resource_uuid=snap.uuid)
    return snap


def _host_for(s, vol, pool) -> tuple[Host, VirtualMachine | None]:
    """The running guest's host (live snapshot), else any Up host that reaches the pool."""
    vm = _vm_of(s, vol)
    if vm is not None and vm.state == "Running":
        return s.get(Host, vm.host_id), vm
    from volstack.services.pools import hosts_in_scope
    hosts = hosts_in_scope(s, pool)
    if not hosts:
        raise ResourceUnavailable(f"No Up host can reach storage pool {pool.name} to snapshot volume {vol.name}")
    return hosts[0], None


def job_keys(s, snapshot_uuid: str, throttled: bool = False) -> tuple[str, str | None]:
    """(sync key, queue key) of a snapshot job. Every snapshot job of a volume waits for the others (a new
    incremental, a backup and a merge of one chain never interleave) and for the volume's own jobs; a take is
    also queued on its host for concurrent.snapshots.threshold.perhost."""
    snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
    vol = s.get(Volume, snap.volume_id)
    host = None
    if throttled and vol.pool_id is not None:
        try:
            host = _host_for(s, vol, s.get(StoragePool, vol.pool_id))[0]
        except CloudError:
            pass                      # the job says why when it runs
    return f"Volume:{vol.uuid}", host and f"snapshothost:{host.uuid}"


def take(s, ctx, snap: Snapshot, progress=None, start_backup=None) -> Snapshot:
    """The job of createSnapshot: take on primary, back up, remove the primary copy. A copy the take makes
    anyway (a running guest's disk, a delta) is written straight to its place on the store instead, so the
    data moves once (Creating → BackedUp). With start_backup (asyncbackup=true) the job ends at CreatedOnPrimary
    and start_backup() queues the backup as a task; the volume stays Snapshotting until that task is done."""
    vol = s.get(Volume, snap.volume_id)
    try:
        if vol.state != "Ready":
            raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be snapshotted (wait "
                                   "for its operation to finish)")
        pool = _file_pool(s, vol)
        host, vm = _host_for(s, vol, pool)
        VOLUME.fire(s, vol, "SnapshotRequested")
    except CloudError as exc:
        s.rollback()
        SNAPSHOT.fire(s, snap, "CreateRequested")
        SNAPSHOT.fire(s, snap, "OperationFailed", error=exc.text)
        s.commit()
        raise
    kept = primary.kept(snap)          # kept on primary only: no backup, no part in incremental chains
    bitmap, parent = (None, None) if snapshots_rbd.native(pool) or kept else chains.incremental_plan(s, snap, vol)
    if parent is not None and snapshots_rbd.owns(parent):      # the volume moved off RBD: start a qcow2 chain
        parent = None
    store = None
    if start_backup is None and not kept:
        store = chains.store_of(s, parent) if parent else next(iter(imagestores.writable_stores(s, snap.zone_id)), None)
    SNAPSHOT.fire(s, snap, "CreateRequested", pool_id=pool.id)
    s.commit()
    spec = driver_for(pool.provider).spec(pool)
    try:
        if snapshots_rbd.native(pool):
            res = snapshots_rbd.take_on_primary(channel(host), pool, vol, snap)
        else:
            res = run_long(channel(host), "snapshot_take", progress, pool=spec, name=vol.path,
                           format=vol.format.lower(), snapshot=f"snap-{snap.uuid}", vm=vm.uuid if vm else None,
                           serial=serial_of(vol) if vm else None, bitmap=bitmap,
                           parent={"bitmap": f"volstack-{parent.uuid}", "backing": parent.install_path} if parent else None,
                           dst_pool=imagestores.spec(store) if store else None, dst_name=store and f"{snap.uuid}.qcow2")
    except CloudError as exc:
        SNAPSHOT.fire(s, snap, "OperationFailed", error=f"taking the snapshot on {pool.name} failed: {exc.text}")
        volumes.host_work_failed(s, vol, exc, error=f"snapshot {snap.name} failed: {exc.text}")
    incremental = bool(res.get("incremental")) and parent is not None
    taken = (f"Snapshot {snap.name} taken on storage pool {pool.name}" + (f" while VM {vm.name} runs" if vm else "")
             + (f", incremental to snapshot {parent.name}" if incremental else ""))
    if kept:
        primary.finish(s, ctx, snap, pool, taken, res)
        VOLUME.fire(s, vol, "OperationSucceeded")
        return snap
    if res["kind"] == "stored":
        SNAPSHOT.fire(s, snap, "OperationNotPerformed", size=res.get("size") or snap.size, store_id=store.id,
                      install_path=res["name"], physical_size=res.get("physical_size"),
                      parent_id=parent.id if incremental else None)
        events.record(s, ctx, "SNAPSHOT.CREATE", f"{taken}, straight to image store {store.name}",
                      resource_type="Snapshot", resource_uuid=snap.uuid)
        VOLUME.fire(s, vol, "OperationSucceeded")
        return snap
    SNAPSHOT.fire(s, snap, "OperationSucceeded", primary_kind=res["kind"], primary_name=res["name"],
                  size=res.get("size") or snap.size, parent_id=parent.id if incremental else None)
    events.record(s, ctx, "SNAPSHOT.CREATE", taken, resource_type="Snapshot", resource_uuid=snap.uuid)
    s.commit()
    if start_backup is not None:
        start_backup()
        return snap
    try:
        backup(s, ctx, snap, vol, pool, host, progress)
    except CloudError as exc:
        retries.failed(s, ctx, snap, exc.text)
        VOLUME.fire(s, vol, "OperationSucceeded")
        s.commit()
        raise
    VOLUME.fire(s, vol, "OperationSucceeded")
    return snap


def backup_task(s, ctx, snapshot_uuid: str, progress=None, retry: bool = False) -> Snapshot:
    """The snapshotBackup task: back up a CreatedOnPrimary snapshot. After asyncbackup it releases the volume the
    take left Snapshotting; a retry (snapshot_backups) holds a Ready volume Snapshotting while it copies."""
    snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
    vol = s.get(Volume, snap.volume_id)

    def release():
        if vol.state == "Snapshotting" and (not retry or held):
            VOLUME.fire(s, vol, "OperationSucceeded")
    held = False
    if snap.state != "CreatedOnPrimary" or snap.removed is not None:
        release()                     # backed up or deleted meanwhile: nothing to do
        return snap
    if retry and vol.state not in ("Ready", "Snapshotting"):
        retries.failed(s, ctx, snap, f"volume {vol.name} is {vol.state}")
        return snap
    if retry and vol.state == "Ready":
        VOLUME.fire(s, vol, "SnapshotRequested")
        held = True
        s.commit()
    try:
        pool = s.get(StoragePool, snap.pool_id)
        backup(s, ctx, snap, vol, pool, _host_for(s, vol, pool)[0], progress)
    except CloudError as exc:
        retries.failed(s, ctx, snap, exc.text)
        release()
        s.commit()
        raise
    release()
    return snap


def backup(s, ctx, snap: Snapshot, vol: Volume, pool: StoragePool, host: Host, progress=None) -> None:
    """CreatedOnPrimary → BackingUp → BackedUp on the writable store with the most free space (an incremental:
    beside its parent's backup)."""
    retries.attempt(snap)
    if snapshots_rbd.owns(snap):
        return snapshots_rbd.backup(s, ctx, snap, vol, pool, host, progress)
    if snap.parent_id is not None:
        parent = s.get(Snapshot, snap.parent_id)
        store = chains.store_of(s, parent) if parent.state == "BackedUp" else None
        if store is None or store.readonly or store.removed is not None:
            raise ResourceUnavailable(f"Snapshot {snap.name} is incremental to snapshot {parent.name}, whose backup "
                                      "is no longer on a writable image store; the snapshot stays on primary storage "
                                      "(delete it; the next snapshot of the volume is a full one)")
    else:
        store = retries.target_store(s, snap)
    dst_name = f"{snap.uuid}.qcow2"
    SNAPSHOT.fire(s, snap, "BackupToSecondary", store_id=store.id, install_path=dst_name)
    s.commit()
    spec = driver_for(pool.provider).spec(pool)
    try:
        res = run_long(channel(host), "snapshot_backup", progress, pool=spec, name=vol.path,
                       format=vol.format.lower(), kind=snap.primary_kind, primary=snap.primary_name,
                       dst_pool=imagestores.spec(store), dst_name=dst_name)
    except CloudError as exc:
        retries.copy_failed(s, snap, store, "primary storage", exc)
        raise
    SNAPSHOT.fire(s, snap, "OperationSucceeded", physical_size=res.get("physical_size"), size=res["size"],
                  error=None)
    s.commit()          # BackedUp before the primary copy goes: no lock held across that call either
    try:
        channel(host).call("snapshot_delete_primary", pool=spec, name=vol.path, kind=snap.primary_kind,
                           primary=snap.primary_name)
        snap.pool_id, snap.primary_kind, snap.primary_name = None, None, None
    except CloudError as exc:
        events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {snap.name} is backed up but its copy on storage pool "
                      f"{pool.name} could not be removed (deleteSnapshot removes it): {exc.text}", level="WARN",
                      resource_type="Snapshot", resource_uuid=snap.uuid)
    events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {snap.name} backed up to image store {store.name}",
                  resource_type="Snapshot", resource_uuid=snap.uuid)


# the state a snapshot whose delete failed goes back to, by the state it was deleted from
FAILED_DELETE = {"BackedUp": "OperationFailed", "Error": "OperationFailedOnError"}


def delete(s, ctx, snap: Snapshot) -> None:
    """deleteSnapshot: the store copy and any primary copy go, then the row is Destroyed."""
    if snap.state not in ("BackedUp", "CreatedOnPrimary", "Error"):
        raise InvalidParameter(f"Snapshot {snap.name} is {snap.state}; wait for its operation to finish")
    users = [v.name for v in s.scalars(select(Volume).where(Volume.removed.is_(None), Volume.state == "Allocated"))
             if (v.details or {}).get("snapshot") == snap.uuid]
    if users:
        raise ResourceInUse(f"Snapshot {snap.name} is still needed by volume(s) {', '.join(users)} created from it "
                            "and not yet attached; attach or delete them first")
    waiting = [c.name for c in chains.children(s, snap) if c.state != "BackedUp"]
    if waiting:
        raise ResourceInUse(f"Snapshot {snap.name} is the parent of incremental snapshot(s) {', '.join(waiting)}, "
                            "which are not backed up yet; delete them or wait for their backup first")
    was, began = snap.state, []
    SNAPSHOT.fire(s, snap, "DestroyRequested")
    s.commit()
    if snapshots_rbd.owns(snap):
        return snapshots_rbd.delete(s, ctx, snap, was)
    try:
        store = chains.store_of(s, snap)
        if store is not None and snap.install_path:
            chains.merge_into_children(s, snap, store, began)
            ch = channel(imagestores.host_for(s, store))
            s.commit()
            ch.call("volume_delete", pool=imagestores.spec(store), name=snap.install_path)
        if snap.pool_id and snap.primary_name:
            primary.remove_copy(s, snap)
    except CloudError as exc:
        event = "MergeFailed" if began else FAILED_DELETE.get(was, "OperationFailedOnPrimary")
        SNAPSHOT.fire(s, snap, event, error=f"delete failed: {exc.text}" + (
            "; it was being merged into its incremental child and is only kept to be deleted again" if began else ""))
        s.commit()
        raise
    SNAPSHOT.fire(s, snap, "OperationSucceeded", removed=utcnow())
    events.record(s, ctx, "SNAPSHOT.DELETE", f"Snapshot {snap.name} deleted", resource_type="Snapshot",
                  resource_uuid=snap.uuid)


def revert(s, ctx, snap: Snapshot, progress=None) -> Snapshot:
    """revertSnapshot: the volume's image becomes the snapshot's data (any snapshot of the volume)."""
    if snap.state != "BackedUp":
        raise InvalidParameter(f"Snapshot {snap.name} is {snap.state}; only a backed-up snapshot can be reverted to"
                               + (" (wait for the backup to finish)" if snap.state in ("Creating", "BackingUp",
                                                                                       "CreatedOnPrimary") else ""))
    vol = s.scalar(select(Volume).where(Volume.id == snap.volume_id, Volume.removed.is_(None)))
    if vol is None:
        raise InvalidParameter(f"The volume of snapshot {snap.name} has been deleted; create a volume from the "
                               "snapshot instead (createVolume snapshotid=…)")
    vm = _vm_of(s, vol)
    if vm is not None and vm.state != "Stopped":
        raise InvalidParameter(f"Volume {vol.name} is attached to VM {vm.name}, which is {vm.state}; stop the VM "
                               "(or detach the volume) to revert it")
    volumes.check_operation(s, "revertSnapshot", vm, vol)
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be reverted")
    pool = _file_pool(s, vol)
    host, _ = _host_for(s, vol, pool)
    if snapshots_rbd.native(pool) or snapshots_rbd.owns(snap):
        return snapshots_rbd.revert(s, ctx, snap, vol, pool, host, progress)
    store = chains.store_of(s, snap)
    volumes.begin_host_work(s, vol, "RevertSnapshotRequested")
    try:
        if store is None:             # kept on primary
            res = primary.revert(s, ctx, snap, vol, pool, host, progress)
        else:
            res = run_long(channel(host), "snapshot_revert", progress, pool=driver_for(pool.provider).spec(pool),
                           name=vol.path, format=vol.format.lower(), src_pool=imagestores.spec(store),
                           src_name=snap.install_path)
    except CloudError as exc:
        volumes.host_work_failed(s, vol, exc, error=f"revert to snapshot {snap.name} failed: {exc.text}")
    VOLUME.fire(s, vol, "OperationSucceeded", size=res["size"], physical_size=res.get("physical_size"), error=None)
    events.record(s, ctx, "SNAPSHOT.REVERT", f"Volume {vol.name} reverted to snapshot {snap.name}",
                  resource_type="Snapshot", resource_uuid=snap.uuid)
    return snap


def list_snapshots(s, ctx, q: ListQuery, **f):
    stmt = select(Snapshot).where(Snapshot.removed.is_(None), Snapshot.state.in_(VISIBLE),
                                  *owner_filter(s, ctx, Snapshot, listall=q.listall, isrecursive=q.isrecursive,
                                                account=q.account, domain_uuid=q.domainid)).order_by(Snapshot.id)
    stmt = stmt.where(*identity_filter(Snapshot, f))
    if f.get("volumeid"):
        stmt = stmt.where(Snapshot.volume_id == s.scalar(select(Volume.id).where(Volume.uuid == f["volumeid"])))
    if f.get("zoneid"):
        stmt = stmt.where(Snapshot.zone_id == infra.get_zone(s, f["zoneid"]).id)
    if f.get("snapshottype"):
        kind = f["snapshottype"].upper()       # RECURRING: taken by any policy (typed by its interval)
        stmt = stmt.where(Snapshot.snapshot_type.in_(RECURRING) if kind == "RECURRING"
                          else Snapshot.snapshot_type == kind)
    if f.get("intervaltype"):
        stmt = stmt.where(Snapshot.snapshot_type == f["intervaltype"].upper())
    if f.get("storageid"):
        stmt = stmt.where(Snapshot.pool_id == s.scalar(select(StoragePool.id).where(StoragePool.uuid == f["storageid"])))
    if f.get("imagestoreid"):
        stmt = stmt.where(Snapshot.store_id == imagestores.get_store(s, f["imagestoreid"]).id)
    if f.get("locationtype"):
        loc = f["locationtype"].upper()
        if loc not in ("PRIMARY", "SECONDARY"):
            raise InvalidParameter("locationtype must be PRIMARY or SECONDARY")
        stmt = stmt.where(Snapshot.store_id.isnot(None) if loc == "SECONDARY" else Snapshot.store_id.is_(None))
    return paginate(s, stmt.where(*keyword_filter(q, Snapshot.name)), q)


# ---------------------------------------------------------------- volumes from snapshots

def new_volume(s, ctx, *, snapshotid, name=None, zoneid=None, diskofferingid=None, size=None) -> Volume:
    """createVolume snapshotid=: an Allocated volume whose first image comes from the snapshot's store copy
    when it is first attached. DATA snapshots keep their disk offering; ROOT snapshots need one at least as
    large as the snapshot."""
    snap = get_snapshot(s, ctx, snapshotid)
    if snap.state != "BackedUp":
        raise InvalidParameter(f"Snapshot {snap.name} is {snap.state}; volumes are created from backed-up snapshots")
    if zoneid and infra.get_zone(s, zoneid).id != snap.zone_id:
        raise InvalidParameter(f"Snapshot {snap.name} is in another zone; create the volume in the snapshot's zone")
    if snap.volume_type == "ROOT":
        if not diskofferingid:
            raise InvalidParameter(f"Snapshot {snap.name} is of a ROOT volume: pass a diskofferingid whose size is at "
                                   f"least {snap.size} bytes")
        offering = offerings.get_disk_offering(s, ctx, diskofferingid)
    else:
        offering = offerings.get_disk_offering(s, ctx, diskofferingid) if diskofferingid else \
            (s.get(DiskOffering, snap.disk_offering_id) if snap.disk_offering_id else None)
    nbytes = snap.size
    if offering is not None and (size is not None or not offering.customized):
        nbytes = offerings.disk_size_for(offering, size, s=s)
    if nbytes < snap.size:
        raise InvalidParameter(f"The new volume would have {nbytes} bytes, less than snapshot {snap.name} "
                               f"({snap.size} bytes): pick a larger disk offering or size")
    vol = volumes.new_volume(s, ctx, name=name or f"{snap.name}-vol", zone_id=snap.zone_id, size=nbytes,
                             offering=offering)
    if snap.passphrase_id is not None:      # the snapshot's bytes are encrypted: the volume keeps its passphrase
        fresh, vol.passphrase_id = vol.passphrase_id, snap.passphrase_id
        s.flush()
        if fresh is not None:
            s.delete(s.get(Passphrase, fresh))
    vol.details = {"snapshot": snap.uuid}
    events.record(s, ctx, "VOLUME.CREATE", f"Volume {vol.name} created from snapshot {snap.name}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def copy_to_primary(s, ctx, vol: Volume, pool: StoragePool, host, progress=None) -> dict:
    """volumes.realize's hook: the snapshot's store copy becomes the volume's first image on pool."""
    snap = s.scalar(select(Snapshot).where(Snapshot.uuid == vol.details["snapshot"]))
    if snap is not None and snap.state == "BackedUp" and primary.kept(snap):
        return primary.copy_to_primary(s, ctx, vol, snap, pool, host, progress)
    store = chains.store_of(s, snap) if snap is not None and snap.state == "BackedUp" else None
    if store is None:
        raise ResourceUnavailable(f"Snapshot {vol.details['snapshot']} of volume {vol.name} is no longer backed up")
    if snap.passphrase_id is not None and not snapshots_rbd.native(pool):
        raise InvalidParameter(f"Snapshot {snap.name} is encrypted on RBD: a volume from it is made on an RBD pool "
                               f"only, not on {pool.name}")
    if snapshots_rbd.owns(snap):
        return snapshots_rbd.copy_to_primary(s, ctx, vol, snap, pool, host, progress)
    drv = driver_for(pool.provider)
    res = run_long(channel(host), "volume_copy", progress, src_pool=imagestores.spec(store),
                   src_name=snap.install_path, src_format="qcow2", dst_pool=drv.spec(pool), dst_name=vol.path,
                   format=vol.format.lower())
    if vol.size > res.get("size", vol.size):
        res = {**res, **drv.resize_volume(channel(host), pool, vol, vol.size, False)}
    return res


volumes.root_creators.insert(0, (lambda vol: vol.state == "Creating" and bool((vol.details or {}).get("snapshot")),
                                 copy_to_primary))


# ---------------------------------------------------------------- image stores and crash recovery

def store_objects(s, store) -> list[tuple]:
    rows = s.scalars(select(Snapshot).where(Snapshot.store_id == store.id, Snapshot.removed.is_(None)))
    return [("snapshot", r.uuid, r.name, r.install_path) for r in rows]


imagestores.object_sources.append(store_objects)


def _finished_backup(db, snapshot_uuid: str) -> tuple[dict | None, str]:
    """A BackingUp snapshot whose job died: the hosts may have gone on copying. Stop such a copy (task_cancel removes
    its partial file) and say whether the backup had finished: (its size and physical size, or None; what happened).
    No transaction is open while the hosts are asked."""
    with db.session(readonly=True) as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        if snap is None or snap.state != "BackingUp" or not snap.install_path or snap.store_id is None:
            return None, ""
        from volstack.db.image_models import ImageStore
        store, name = s.get(ImageStore, snap.store_id), snap.install_path
        cmd, fmt = ("rbd_export_diff", "raw") if snapshots_rbd.owns(snap) else ("snapshot_backup", "qcow2")
        hosts = imagestores.hosts_for(s, store.zone_id)     # the one that copied is in the store's zone
        try:
            store_host = imagestores.host_for(s, store)
        except CloudError:
            store_host = None
        store_spec = imagestores.spec(store)
    finished = []
    for host in hosts:             # a copy still running is stopped (its partial file removed)
        try:
            task = channel(host).call("task_cancel", command=cmd, match={"dst_name": name},
                                      reason="its job ended with the management server")
        except CloudError:
            continue
        if task.get("state") == "done":
            finished.append(host.name)
    if store_host is None:
        return None, ""
    try:                           # a file under the final name is a finished copy (copies write a .part first)
        have = channel(store_host).call("volume_info", pool=store_spec, name=name, format=fmt)
    except CloudError:
        return None, ""
    return have, (f"host {', '.join(finished)} had finished the backup" if finished else
                  f"its backup {name} was complete on the image store") + "; it is adopted"


def settle_interrupted(db, ctx, snapshot_uuid: str, cmd: str) -> None:
    """A snapshot job died with its management server: stable states with the reason (the primary copy is kept
    when it exists, so the snapshot can still be deleted). A backup that finished on its host meanwhile is
    adopted rather than copied again (its file would otherwise belong to nothing)."""
    back = {"Allocated": "Error", "Creating": "Error", "BackingUp": "CreatedOnPrimary", "Copying": "BackedUp",
            "Destroying": None}
    finished, how = _finished_backup(db, snapshot_uuid)
    with db.session() as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        reason = f"{cmd} was interrupted because the management server running it stopped"
        if snap is not None and snap.state == "BackingUp" and finished is not None:
            SNAPSHOT.fire(s, snap, "OperationSucceeded", size=finished.get("size") or snap.size,
                          physical_size=finished.get("physical_size"), error=f"{reason}; {how}")
            vol = s.get(Volume, snap.volume_id)
            if vol is not None and vol.state == "Snapshotting":
                VOLUME.fire(s, vol, "OperationSucceeded")
            events.record(s, ctx, "SNAPSHOT.RECOVER", f"Snapshot {snap.name}: {reason}; {how} (BackedUp; its copy "
                          "on primary storage stays until the snapshot is deleted)", level="WARN",
                          resource_type="Snapshot", resource_uuid=snap.uuid)
            return
        if snap is not None and snap.state == "CreatedOnPrimary" and cmd == "snapshotBackup":
            _backup_not_done(s, ctx, snap, reason)      # stopped before its copy began
            return
        if snap is None or snap.state not in back:
            return
        to = back[snap.state] or ("BackedUp" if snap.store_id else "CreatedOnPrimary")
        if snap.state == "Destroying" and chains.children(s, snap):
            # a merge into its child may have begun: its file may hold the child's data now, so it is never
            # used again; deleting it (which finishes the merge) is all that remains
            to, reason = "Error", reason + "; it was being merged into its incremental child"
        was = snap.state
        if was == "BackingUp":
            snap.store_id, snap.install_path = None, None
        snap.state, snap.error = to, reason
        vol = s.get(Volume, snap.volume_id)
        if vol is not None and vol.state in ("Snapshotting", "RevertSnapshotting"):
            vol.state, vol.error = "Ready", reason
        events.record(s, ctx, "SNAPSHOT.RECOVER", f"Snapshot {snap.name}: {reason}; it is {to}", level="WARN",
                      resource_type="Snapshot", resource_uuid=snap.uuid)
        if was == "BackingUp":
            retries.failed(s, ctx, snap, reason)


def _backup_not_done(s, ctx, snap: Snapshot, reason: str) -> None:
    """A snapshotBackup task that will not run (interrupted, or expired in its host's queue): the volume an
    asyncbackup left Snapshotting is released and the backup is retried later."""
    vol = s.get(Volume, snap.volume_id)
    if vol is not None and vol.state == "Snapshotting":
        vol.state = "Ready"
    snap.error = None
    retries.failed(s, ctx, snap, reason)


def settle_expired(db, ctx, snapshot_uuid: str, cmd: str, minutes: int) -> str:
    """A snapshot job that waited for a slot of its host longer than job.expire.minutes: the snapshot becomes
    Error with the reason, which is also the job's error text."""
    with db.session() as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        text = (f"{cmd} waited more than {minutes} minutes (job.expire.minutes) for one of the snapshot slots of its "
                "host (concurrent.snapshots.threshold.perhost) and was cancelled; take the snapshot again later")
        if snap is not None and snap.state == "CreatedOnPrimary" and cmd == "snapshotBackup":
            text = text.replace("take the snapshot again later", "the backup is retried later (backup.retry)")
            _backup_not_done(s, ctx, snap, text)
        if snap is not None and snap.state == "Allocated":
            snap.state, snap.error = "Error", text
            events.record(s, ctx, "SNAPSHOT.CREATE", f"Snapshot {snap.name}: {text}", level="ERROR",
                          resource_type="Snapshot", resource_uuid=snap.uuid)
        return text


def _movable(s, store) -> list:
    from volstack.services.store_migration import Item
    rows = s.scalars(select(Snapshot).where(Snapshot.store_id == store.id, Snapshot.state == "BackedUp",
                                            Snapshot.removed.is_(None)))
    # a backup its incremental children still read stays until they have moved (the copy of a leaf is flat); an
    # RBD diff is copied byte for byte (RAW) and restored through its chain wherever each file is
    return [Item("snapshot", r.id, r.uuid, r.name, r.install_path, r.physical_size or r.size,
                 "RAW" if snapshots_rbd.owns(r) else "QCOW2") for r in rows
            if snapshots_rbd.owns(r) or not chains.children(s, r)]


def _repoint(s, item, src, dst) -> bool:
    snap = s.get(Snapshot, item.ref_id)
    if snap.state != "BackedUp" or snap.removed is not None:
        raise InvalidParameter(f"it became {snap.state} while being copied; its copy on {dst.name} is not used")
    snap.store_id, snap.parent_id = dst.id, None      # the copy reads through the chain: a full backup now
    return True


def _register_migration() -> None:
    from volstack.services import store_migration
    store_migration.KINDS["snapshot"] = (_movable, _repoint)


_register_migration()
