"""Snapshots kept on primary storage only (`location_type` PRIMARY): services/snapshots.py hands them over here.

Where a snapshot lives is decided when it is requested: createSnapshot's `locationtype`, else the global setting
`snapshot.backup.to.secondary` (CloudStack's; false keeps KVM snapshots on primary). Such a snapshot is taken as
any other (an internal qcow2 snapshot of an idle volume, a file copy beside a running guest's disk, a native
snapshot on RBD) but never starts or continues an incremental chain, and goes Creating → BackedUp at once
(CloudStack's OperationNotPerformed): there is nothing to back up.

- revertSnapshot rolls the image back from primary (`qemu-img snapshot -a`, the file copy written over the image,
  or `rbd snap rollback`); createVolume copies it from primary (the realizing host must reach its pool; on RBD a
  clone, on the snapshot's own pool only); createTemplate copies it to the store (file pools).
- It is lost with its volume: deleting the volume destroys it (CloudStack #5433/#6057), and a volume with
  snapshots only on primary cannot be migrated (CloudStack's SnapshotHelper refuses it too): they would be lost.
"""
from types import SimpleNamespace

from sqlalchemy import select

from volstack.db.models import Host, utcnow
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.default import serial_of
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import events, snapshots_rbd, volumes
from volstack.services import settings as S
from volstack.services.lifecycle import SNAPSHOT

PRIMARY, SECONDARY = "PRIMARY", "SECONDARY"


def location(s, locationtype: str | None) -> str:
    """Where a new snapshot is to live: the request's locationtype, else snapshot.backup.to.secondary."""
    if locationtype:
        loc = locationtype.strip().upper()
        if loc not in (PRIMARY, SECONDARY):
            raise InvalidParameter(f"locationtype must be PRIMARY (kept on primary storage only) or SECONDARY "
                                   f"(backed up to an image store), not {locationtype}")
        return loc
    return SECONDARY if S.Settings.value_in(s, S.SNAPSHOT_BACKUP_TO_SECONDARY) else PRIMARY


def kept(snap: Snapshot) -> bool:
    return snap.location_type == PRIMARY


def only_on_primary():
    """SQL condition: a live snapshot whose data is on primary storage only (kept there, or not backed up yet)."""
    return (Snapshot.removed.is_(None), Snapshot.store_id.is_(None), Snapshot.pool_id.isnot(None),
            Snapshot.state.in_(("CreatedOnPrimary", "BackedUp")))


def finish(s, ctx, snap: Snapshot, pool: StoragePool, taken: str, res: dict) -> None:
    """The take's last step for a PRIMARY snapshot: Creating → BackedUp, on primary only."""
    SNAPSHOT.fire(s, snap, "OperationNotPerformed", pool_id=pool.id, primary_kind=res["kind"],
                  primary_name=res["name"], size=res.get("size") or snap.size, parent_id=None, error=None)
    events.record(s, ctx, "SNAPSHOT.CREATE", f"{taken}; kept on storage pool {pool.name} only (locationtype "
                  "PRIMARY, no backup)", resource_type="Snapshot", resource_uuid=snap.uuid)


def _pool_of(s, snap: Snapshot) -> StoragePool:
    pool = s.get(StoragePool, snap.pool_id) if snap.pool_id else None
    if pool is None:
        raise ResourceUnavailable(f"Snapshot {snap.name} was kept on a primary storage pool that no longer exists")
    return pool


def _hosts(s, pool: StoragePool) -> list[Host]:
    from volstack.services.pools import hosts_in_scope
    return hosts_in_scope(s, pool)


def _host_reaching(s, pool: StoragePool) -> Host:
    hosts = _hosts(s, pool)
    if not hosts:
        raise ResourceUnavailable(f"No Up host reaches storage pool {pool.name}")
    return hosts[0]


def revert(s, ctx, snap: Snapshot, vol: Volume, pool: StoragePool, host: Host, progress=None) -> dict:
    """The agent's revert of a file pool's volume to its snapshot kept on primary; returns the image's info."""
    if snap.pool_id != vol.pool_id:
        raise InvalidParameter(f"Snapshot {snap.name} is kept on another storage pool than volume {vol.name} now "
                               "uses; it cannot be reverted to")
    spec = driver_for(pool.provider).spec(pool)
    if snap.primary_kind == "internal":
        return channel(host).call("snapshot_revert", pool=spec, name=vol.path, format=vol.format.lower(),
                                  snapshot=snap.primary_name)
    return run_long(channel(host), "snapshot_revert", progress, pool=spec, name=vol.path,
                    format=vol.format.lower(), src_pool=spec, src_name=snap.primary_name)


def _copy_out(s, snap: Snapshot, host: Host, dst_spec: dict, dst_name: str, out_format: str, progress) -> dict:
    """The snapshot's data from its primary copy into dst (a pool or a store), on host."""
    pool = _pool_of(s, snap)
    src = s.get(Volume, snap.volume_id)
    return run_long(channel(host), "snapshot_backup", progress, pool=driver_for(pool.provider).spec(pool),
                    name=src.path, format=src.format.lower(), kind=snap.primary_kind, primary=snap.primary_name,
                    dst_pool=dst_spec, dst_name=dst_name, out_format=out_format)


def copy_to_primary(s, ctx, vol: Volume, snap: Snapshot, pool: StoragePool, host: Host, progress=None) -> dict:
    """createVolume snapshotid= of a snapshot kept on primary: its first image, copied on host from the snapshot's
    pool (an RBD snapshot is cloned, on its own pool only)."""
    src_pool = _pool_of(s, snap)
    if snapshots_rbd.owns(snap):
        if pool.id != src_pool.id:
            raise ResourceUnavailable(f"Snapshot {snap.name} is kept only on RBD pool {src_pool.name}: a volume from "
                                      f"it can only be created on that pool, not on {pool.name} (use a disk offering "
                                      "whose tags select it)")
        return snapshots_rbd.copy_to_primary(s, ctx, vol, snap, pool, host, progress)
    if not any(h.id == host.id for h in _hosts(s, src_pool)):
        raise ResourceUnavailable(f"Snapshot {snap.name} is kept only on storage pool {src_pool.name}, which host "
                                  f"{host.name} (where volume {vol.name} is being created) does not reach: attach the "
                                  "volume to a VM on a host of that pool")
    drv = driver_for(pool.provider)
    if snapshots_rbd.native(pool):
        vol.format = "RAW"
    res = _copy_out(s, snap, host, drv.spec(pool), vol.path, vol.format.lower(), progress)
    vol.format = res["format"].upper()
    if vol.size > res.get("size", vol.size):
        res = {**res, **drv.resize_volume(channel(host), pool, vol, vol.size, False)}
    return res


def check_template_source(snap: Snapshot) -> None:
    if kept(snap) and snapshots_rbd.owns(snap):
        raise InvalidParameter(f"Snapshot {snap.name} is kept only on an RBD pool: templates are made from backed-up "
                               "snapshots there; take one with locationtype=SECONDARY")


def copy_to_store(s, snap: Snapshot, dst_spec: dict, dst_name: str, progress) -> dict:
    """createTemplate snapshotid= of a snapshot kept on a file pool: a flat qcow2 on the store."""
    return _copy_out(s, snap, _host_reaching(s, _pool_of(s, snap)), dst_spec, dst_name, "qcow2", progress)


def remove_copy(s, snap: Snapshot) -> None:
    """deleteSnapshot's removal of the copy on a file pool. An internal snapshot of a running guest's disk is
    deleted through the guest's QEMU (the VM snapshot command's path), as qemu-img cannot open the image."""
    pool = _pool_of(s, snap)
    vol = s.get(Volume, snap.volume_id)
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    spec = driver_for(pool.provider).spec(pool)
    if snap.primary_kind == "internal" and vm is not None and vm.state == "Running" and vol.pool_id == pool.id:
        ch = channel(s.get(Host, vm.host_id))
        s.commit()
        ch.call("vm_snapshot_delete", vm=vm.uuid, tag=snap.primary_name, running=True,
                disks=[{"pool": spec, "name": vol.path, "format": vol.format.lower(),
                        "serial": serial_of(vol)}])
        return
    ch = channel(_host_reaching(s, pool))
    s.commit()
    ch.call("snapshot_delete_primary", pool=spec, name=vol.path, kind=snap.primary_kind, primary=snap.primary_name)


# ---------------------------------------------------------------- what is lost with the volume

def _no_migration(s, op: str, vm, vol: Volume | None) -> None:
    """volumes.operation_checks: a volume with snapshots only on primary does not move (they would be lost)."""
    if op != "migrate" or vol is None:
        return
    names = list(s.scalars(select(Snapshot.name).where(Snapshot.volume_id == vol.id, *only_on_primary())
                           .order_by(Snapshot.id)))
    if names:
        raise InvalidParameter(f"Volume {vol.name} has snapshots only on primary storage ({', '.join(names)}), which "
                               "a migration would lose: delete them (or wait for their backup retries) first")


volumes.operation_checks.append(_no_migration)


def _lost_with_volume(s, vol: Volume) -> None:
    """volumes.expunge_hooks: snapshots only on primary go with their volume (CloudStack marks them Destroyed);
    internal and RBD snapshots went with the image, file copies beside it are removed here. The hook has no
    caller context: the events go to the snapshot's owner."""
    for snap in s.scalars(select(Snapshot).where(Snapshot.volume_id == vol.id, *only_on_primary())):
        owner = SimpleNamespace(account_id=snap.account_id, domain_id=snap.domain_id, user_id=None, job_uuid=None)
        if snap.primary_kind in ("file", "delta"):
            try:
                pool = _pool_of(s, snap)
                channel(_host_reaching(s, pool)).call("snapshot_delete_primary", pool=driver_for(pool.provider)
                                                      .spec(pool), name=vol.path, kind=snap.primary_kind,
                                                      primary=snap.primary_name)
            except CloudError as exc:
                events.record(s, owner, "SNAPSHOT.DELETE", f"Snapshot {snap.name}: its copy {snap.primary_name} could "
                              f"not be removed with volume {vol.name}: {exc.text}", level="WARN",
                              resource_type="Snapshot", resource_uuid=snap.uuid)
        SNAPSHOT.fire(s, snap, "DestroyRequested")
        SNAPSHOT.fire(s, snap, "OperationSucceeded", removed=utcnow(), backup_retry_at=None,
                      error=f"volume {vol.name} was deleted and the snapshot was only on primary storage")
        events.record(s, owner, "SNAPSHOT.DELETE", f"Snapshot {snap.name} deleted with volume {vol.name} (it was only "
                      "on primary storage)", resource_type="Snapshot", resource_uuid=snap.uuid)


volumes.expunge_hooks.insert(0, _lost_with_volume)
