"""Volume snapshots on RBD pools: the parts services/snapshots.py hands over at its dispatch points (`native`,
`owns`). The lifecycle, the checks before a host is asked and the listing stay there.

- **Take**: a native RBD snapshot `snap-<uuid>` of the volume's image (librbd), also while a guest runs: a
  crash-consistent point in time, as a power cut would leave the disk. There is no guest agent, so no
  fsfreeze (quiescevm=true is refused, as for file pools).
- **Backup**: `<uuid>.rbddiff` (`rbd export-diff` format) on the writable store with the most free space: the
  whole image, or only the extents changed since the volume's newest backed-up snapshot when that one is still
  on the same image (`parent_id` records it) and the chain of diffs since the last full backup is shorter than
  `snapshot.delta.max` (0: always full). Restores apply the chain, full first; a backup restores with the
  primary pool gone.
- **Kept on primary**: the newest backed-up snapshot of each volume stays on its image, as the base of the next
  diff (and so a revert to it is an instant rollback); each backup removes the volume's older snapshots from
  primary, except those that volumes were cloned from and those kept on primary only (locationtype PRIMARY:
  never backed up, reverted by rollback, cloned for volumes on the same pool; services/snapshot_primary.py).
- **revertSnapshot**: `rbd snap rollback` when the snapshot is still on the volume's image, else the chain is
  written into the image in place (its other snapshots stay). A file pool's qcow2 backup can be reverted onto a
  volume that moved to RBD, and an RBD backup onto a volume that moved to a file pool.
- **createVolume snapshotid=**: on the same RBD pool while the snapshot is on primary, a clone of it (protected
  on first use, flattened past the pool's clonemaxdepth); elsewhere the chain is restored into a new image.
- **deleteSnapshot** removes the RBD snapshot, flattening volumes cloned from it first. Its backup stays on the
  store, hidden, while later snapshots' diffs build on it, and goes with the last of them.
- **Deleting the volume** removes its image's snapshots (the driver flattens their clones first); the
  snapshots live on as their backups.
"""
from sqlalchemy import select

from volstack.db import aggregate
from volstack.db.image_models import ImageStore
from volstack.db.models import utcnow
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, ResourceInUse, ResourceUnavailable
from volstack.services import events, imagestores, volumes
from volstack.services import snapshot_backups as retries
from volstack.services import settings as S
from volstack.services.lifecycle import SNAPSHOT, VOLUME

KIND = "rbd"                 # Snapshot.primary_kind of a native RBD snapshot
DIFF_SUFFIX = ".rbddiff"


def native(pool: StoragePool | None) -> bool:
    """The pool takes snapshots itself (RBD) rather than through qemu-img."""
    return pool is not None and bool(driver_for(pool.provider).CAPABILITIES.get("native_snapshot"))


def owns(snap: Snapshot) -> bool:
    """A snapshot taken on an RBD pool: its primary copy is an RBD snapshot, its backup an export-diff file."""
    return snap.primary_kind == KIND or (snap.install_path or "").endswith(DIFF_SUFFIX)


def _on_image(ch, pool, vol, snap) -> bool:
    """The snapshot is still on the volume's current image (not removed, not left behind by a migration)."""
    return bool(native(pool) and snap.pool_id == pool.id and snap.primary_kind == KIND and snap.primary_name
                and vol.removed is None and snap.primary_name in driver_for(pool.provider).snapshots(ch, pool, vol))


def take_on_primary(ch, pool, vol, snap) -> dict:
    name = f"snap-{snap.uuid}"
    res = driver_for(pool.provider).take_snapshot(ch, pool, vol, name)
    return {"kind": KIND, "name": name, "size": res["size"]}


# ---------------------------------------------------------------- backup

def _depth(s, snap) -> int:
    """How many diffs lie between snap's backup and the full backup under it."""
    n = 0
    while snap.parent_id:
        n, snap = n + 1, s.get(Snapshot, snap.parent_id)
    return n


def _diff_base(s, snap, vol, pool) -> Snapshot | None:
    """The snapshot this one's backup may be a diff from, or None for a full backup."""
    delta_max = S.Settings.value_in(s, S.SNAPSHOT_DELTA_MAX)
    prev = s.scalars(select(Snapshot).where(
        Snapshot.volume_id == vol.id, Snapshot.id != snap.id, Snapshot.state == "BackedUp",
        Snapshot.removed.is_(None), Snapshot.pool_id == pool.id, Snapshot.primary_kind == KIND,
        Snapshot.install_path.like(f"%{DIFF_SUFFIX}")).order_by(Snapshot.id.desc())).first()
    if prev is None or delta_max <= 0 or _depth(s, prev) + 1 > delta_max:
        return None
    return prev


def backup(s, ctx, snap: Snapshot, vol: Volume, pool: StoragePool, host, progress=None) -> None:
    """CreatedOnPrimary → BackingUp → BackedUp: the snapshot, or its changes since the diff base, on a store."""
    store, base = retries.target_store(s, snap), _diff_base(s, snap, vol, pool)
    SNAPSHOT.fire(s, snap, "BackupToSecondary", store_id=store.id, install_path=f"{snap.uuid}{DIFF_SUFFIX}")
    s.commit()
    ch, drv = channel(host), driver_for(pool.provider)
    try:
        res = drv.backup_snapshot(ch, pool, vol, snap.primary_name, imagestores.spec(store), snap.install_path,
                                  since=base.primary_name if base else None, progress=progress)
    except CloudError as exc:
        retries.copy_failed(s, snap, store, f"storage pool {pool.name}", exc)
        raise                         # the caller records it and schedules a retry (snapshot_backups)
    parent = None if res["full"] else base
    SNAPSHOT.fire(s, snap, "OperationSucceeded", physical_size=res["physical_size"], size=res["size"], error=None,
                  parent_id=parent.id if parent else None)
    how = f"changes since snapshot {parent.name}" if parent else "full image"
    events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {snap.name} backed up to image store {store.name} ({how}, "
                  f"{res['data_bytes']} bytes of data)", resource_type="Snapshot", resource_uuid=snap.uuid)
    _trim_primary(s, ctx, ch, pool, vol, keep=snap)


def _trim_primary(s, ctx, ch, pool, vol, keep: Snapshot) -> None:
    """Only the newest backed-up snapshot stays on the image (plus any that volumes were cloned from)."""
    drv = driver_for(pool.provider)
    for old in s.scalars(select(Snapshot).where(Snapshot.volume_id == vol.id, Snapshot.id != keep.id,
                                                Snapshot.state == "BackedUp", Snapshot.pool_id == pool.id,
                                                Snapshot.primary_kind == KIND, Snapshot.store_id.isnot(None))):
        try:
            drv.delete_snapshot(ch, pool, vol, old.primary_name)
        except ResourceInUse:
            continue                  # clones of it exist: it stays until they or it are deleted
        except CloudError as exc:
            events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {old.name} could not be removed from storage pool "
                          f"{pool.name} (its backup is complete): {exc.text}", level="WARN",
                          resource_type="Snapshot", resource_uuid=old.uuid)
            continue
        old.pool_id, old.primary_kind, old.primary_name = None, None, None


# ---------------------------------------------------------------- restores

def chain(s, snap: Snapshot) -> list[dict]:
    """The backup files to apply for snap, full first, as agent arguments."""
    links, cur = [], snap
    while cur is not None:
        if cur.store_id is None or not cur.install_path:
            raise ResourceUnavailable(f"The backup of snapshot {snap.name} builds on snapshot {cur.name}, whose "
                                      "backup is missing")
        links.append(cur)
        cur = s.get(Snapshot, cur.parent_id) if cur.parent_id else None
    return [{"pool": imagestores.spec(s.get(ImageStore, c.store_id)), "name": c.install_path}
            for c in reversed(links)]


def revert(s, ctx, snap: Snapshot, vol: Volume, pool: StoragePool, host, progress=None) -> Snapshot:
    """revertSnapshot after snapshots.revert's checks, for an RBD snapshot or a volume on an RBD pool."""
    ch, drv = channel(host), driver_for(pool.provider)
    rollback = _on_image(ch, pool, vol, snap)
    volumes.begin_host_work(s, vol, "RevertSnapshotRequested")
    try:
        if rollback:
            res = drv.revert_snapshot(ch, pool, vol, snap.primary_name)
        elif owns(snap):
            res = run_long(ch, "rbd_restore", progress, chain=chain(s, snap), dst_pool=drv.spec(pool),
                           dst_name=vol.path, format=vol.format.lower(), replace=True)
        else:                         # a file pool's qcow2 backup, the volume now on RBD
            store = s.get(ImageStore, snap.store_id)
            res = run_long(ch, "rbd_restore", progress, src_pool=imagestores.spec(store), src_name=snap.install_path,
                           src_format="qcow2", dst_pool=drv.spec(pool), dst_name=vol.path, replace=True)
    except CloudError as exc:
        volumes.host_work_failed(s, vol, exc, error=f"revert to snapshot {snap.name} failed: {exc.text}")
    VOLUME.fire(s, vol, "OperationSucceeded", size=res["size"], physical_size=res.get("physical_size"), error=None)
    how = "rolled back on storage pool" if rollback else "restored from its backup onto storage pool"
    events.record(s, ctx, "SNAPSHOT.REVERT", f"Volume {vol.name} reverted to snapshot {snap.name} ({how} "
                  f"{pool.name})", resource_type="Snapshot", resource_uuid=snap.uuid)
    return snap


def copy_to_primary(s, ctx, vol: Volume, snap: Snapshot, pool: StoragePool, host, progress=None) -> dict:
    """createVolume snapshotid='s first image: a clone of the RBD snapshot on its own pool, else a restore."""
    ch, drv = channel(host), driver_for(pool.provider)
    src = s.get(Volume, snap.volume_id)
    if _on_image(ch, pool, src, snap):
        return drv.clone_snapshot(ch, pool, src, snap.primary_name, vol)
    if native(pool):
        vol.format = "RAW"
    res = run_long(ch, "rbd_restore", progress, chain=chain(s, snap), dst_pool=drv.spec(pool), dst_name=vol.path,
                   format=vol.format.lower())
    if vol.size > res["size"]:
        res = {**res, **drv.resize_volume(ch, pool, vol, vol.size, False)}
    return res


def copy_to_store(s, snap: Snapshot, dst: ImageStore, dst_name: str, report) -> dict:
    """createTemplate snapshotid=: the chain restored into a flat qcow2 on an image store."""
    return run_long(channel(imagestores.host_for(s, dst)), "rbd_restore", report, chain=chain(s, snap),
                    dst_pool=imagestores.spec(dst), dst_name=dst_name, format="qcow2")


# ---------------------------------------------------------------- deletion

def _builds_on(s, snap) -> int:
    """Backups (of live snapshots, or kept for theirs) that are diffs on top of snap's."""
    return aggregate.count(s, Snapshot, Snapshot.parent_id == snap.id, Snapshot.install_path.isnot(None))


def _drop_backups(s, ctx, snap) -> None:
    """Remove snap's backup file, then those of deleted ancestors that nothing builds on any more. Once snap's
    own file is gone its delete has succeeded: an ancestor that cannot be removed now stays hidden (a warning;
    deleteImageStore still waits for it) instead of turning snap back into a BackedUp snapshot without a backup."""
    first = snap
    while snap is not None and snap.install_path and snap.store_id:
        store = s.get(ImageStore, snap.store_id)
        try:
            channel(imagestores.host_for(s, store)).call("volume_delete", pool=imagestores.spec(store),
                                                         name=snap.install_path)
        except CloudError as exc:
            if snap is first:
                raise
            events.record(s, ctx, "SNAPSHOT.DELETE", f"The backup {snap.install_path} of deleted snapshot {snap.name} "
                          f"could not be removed from image store {store.name} and stays there: {exc.text}",
                          level="WARN", resource_type="Snapshot", resource_uuid=snap.uuid)
            return
        snap.install_path, snap.store_id = None, None
        parent = s.get(Snapshot, snap.parent_id) if snap.parent_id else None
        snap = parent if parent is not None and parent.removed is not None and not _builds_on(s, parent) else None


def delete(s, ctx, snap: Snapshot, was: str) -> None:
    """deleteSnapshot after snapshots.delete's checks (the snapshot is Destroying, committed)."""
    kept = False
    try:
        vol = s.get(Volume, snap.volume_id)
        if snap.pool_id and snap.primary_name:
            if vol.state == "Snapshotting":
                raise ResourceInUse(f"Volume {vol.name} is being snapshotted and the backup may build on snapshot "
                                    f"{snap.name}; delete it once that is done")
            from volstack.services.pools import hosts_in_scope
            pool = s.get(StoragePool, snap.pool_id)
            hosts = hosts_in_scope(s, pool)
            if not hosts:
                raise ResourceUnavailable(f"No Up host can reach storage pool {pool.name} to remove the snapshot "
                                          "there")
            driver_for(pool.provider).delete_snapshot(channel(hosts[0]), pool, vol, snap.primary_name,
                                                      flatten_children=True)
            snap.pool_id, snap.primary_kind, snap.primary_name = None, None, None
        kept = bool(_builds_on(s, snap))
        if not kept:
            _drop_backups(s, ctx, snap)
    except CloudError as exc:
        SNAPSHOT.fire(s, snap, {"BackedUp": "OperationFailed", "Error": "OperationFailedOnError"}.get(
            was, "OperationFailedOnPrimary"), error=f"delete failed: {exc.text}")
        s.commit()
        raise
    SNAPSHOT.fire(s, snap, "OperationSucceeded", removed=utcnow())
    events.record(s, ctx, "SNAPSHOT.DELETE", f"Snapshot {snap.name} deleted" + (
        "; its backup stays hidden on the image store while later incremental backups build on it" if kept else ""),
        resource_type="Snapshot", resource_uuid=snap.uuid)


def _forget_primary(s, vol: Volume) -> None:
    """volumes.expunge_hooks: the driver removed the image's snapshots with it; those that were only there are
    Destroyed by snapshot_primary's hook, the others live on as their backups."""
    for snap in s.scalars(select(Snapshot).where(Snapshot.volume_id == vol.id, Snapshot.primary_kind == KIND,
                                                 Snapshot.pool_id.isnot(None))):
        snap.pool_id, snap.primary_kind, snap.primary_name = None, None, None


volumes.expunge_hooks.append(_forget_primary)


def _kept_backups(s, store) -> list[tuple]:
    """Backups of deleted snapshots kept for later diffs: deleting the store must wait for them too."""
    rows = s.scalars(select(Snapshot).where(Snapshot.store_id == store.id, Snapshot.removed.isnot(None),
                                            Snapshot.install_path.like(f"%{DIFF_SUFFIX}")))
    return [("snapshot", r.uuid, f"{r.name} (deleted; later incremental backups build on it)", r.install_path)
            for r in rows]


imagestores.object_sources.append(_kept_backups)
