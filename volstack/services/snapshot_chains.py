"""Incremental snapshot chains: which snapshot a new one is incremental to, and merging a backup into the
backups that read it before it goes (services/snapshots.py uses both; docs/architecture.md, Snapshots)."""
import os

from sqlalchemy import func, select

from volstack.db.image_models import ImageStore
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool
from volstack.drivers.hosts import channel, run_long
from volstack.services import imagestores
from volstack.services import settings as S


def store_of(s, snap) -> ImageStore | None:
    return s.get(ImageStore, snap.store_id) if snap.store_id else None


def holds_chains(store) -> bool:
    # Chains name their parent by a bare file name; QEMU 7.2's userspace NFS driver resolves such a name against
    # the image's own URL (nfs://h/e/top.qcow2/parent.qcow2), so chains live only on stores reached as directories.
    return imagestores.spec(store)["type"] != "NetworkFilesystem"


def depth(s, snap) -> int:
    """Incrementals from snap down to its full backup."""
    n = 0
    while snap is not None and snap.parent_id is not None:
        n, snap = n + 1, s.get(Snapshot, snap.parent_id)
    return n


def children(s, snap) -> list[Snapshot]:
    return list(s.scalars(select(Snapshot).where(Snapshot.parent_id == snap.id, Snapshot.removed.is_(None),
                                                 Snapshot.state.notin_(("Destroyed", "Error")))))


def incremental_plan(s, snap, vol) -> tuple[str | None, Snapshot | None]:
    """(the dirty bitmap to start with this snapshot, the snapshot to be incremental to). The agent checks the
    parent's bitmap is really in the image; here: the newest snapshot of the volume, backed up on a writable
    store that holds chains, with fewer than snapshot.delta.max incrementals above its full backup."""
    pool = s.get(StoragePool, vol.pool_id)
    cluster = pool.cluster_id if pool is not None else None
    if vol.format.lower() != "qcow2" or not S.Settings.value_in(s, S.KVM_INCREMENTAL_SNAPSHOT, cluster=cluster,
                                                                zone=vol.zone_id):
        return None, None
    bitmap = f"volstack-{snap.uuid}"
    # snapshots kept on primary leave the bitmaps alone, so the chain goes on past them
    last = s.scalar(select(Snapshot).where(Snapshot.volume_id == vol.id, Snapshot.id != snap.id,
                                           Snapshot.removed.is_(None), Snapshot.state.notin_(("Allocated", "Error")),
                                           func.coalesce(Snapshot.location_type, "SECONDARY") != "PRIMARY")
                    .order_by(Snapshot.id.desc()).limit(1))
    store = store_of(s, last) if last is not None and last.state == "BackedUp" else None
    if store is None or store.readonly or store.removed is not None or not holds_chains(store):
        return bitmap, None
    if depth(s, last) + 1 > S.Settings.value_in(s, S.SNAPSHOT_DELTA_MAX):
        return bitmap, None
    return bitmap, last


def merge_into_children(s, snap, store, began: list) -> None:
    """Before snap's backup goes, every backup that reads it takes in the data it still needs (the child's
    backing becomes snap's own). Who reads whom comes from the files' headers, so a merge interrupted between
    the store and the database is finished rather than undone; parent_id follows the headers afterwards.
    `began` gets an entry once a merge has started (from then on snap's file may hold its child's data)."""
    sibs = list(s.scalars(select(Snapshot).where(Snapshot.volume_id == snap.volume_id, Snapshot.store_id == store.id,
                                                 Snapshot.removed.is_(None), Snapshot.state == "BackedUp",
                                                 Snapshot.id != snap.id)))
    if not any(r.parent_id is not None for r in [snap, *sibs]):
        return                                            # no incremental of this volume here: nothing reads snap
    ch, spec = channel(imagestores.host_for(s, store)), imagestores.spec(store)

    def backing(r):
        b = ch.call("volume_info", pool=spec, name=r.install_path, format="qcow2").get("backing")
        return b and os.path.basename(b)
    by_path = {r.install_path: r for r in sibs}
    children = [r for r in sibs if backing(r) == snap.install_path]
    new = backing(snap) if children else None
    for child in children:
        began.append(child)
        res = run_long(ch, "snapshot_merge", None, pool=spec, name=child.install_path, parent=snap.install_path,
                       backing=new)
        child.physical_size = res.get("physical_size") or child.physical_size
    for r in sibs:
        if r.parent_id == snap.id or r in children:
            b = backing(r)
            r.parent_id = by_path[b].id if b in by_path else None
    s.commit()
