"""The orphan scan: files on primary pools and image stores that no volume, template, snapshot or transfer names.

Every `storage.orphan.scan.interval` seconds each management server lists every Up pool and image store through a
host and compares the names with what the database says lives there (pools.object_owners, imagestores.objects_on,
plus the destinations of moves under way). A file nobody claims is reported once (event ORPHAN.FILE, WARN) and,
once it has stayed unclaimed for `storage.orphan.grace.period` seconds, removed (ORPHAN.REMOVE) after checking
again that nothing claimed it meanwhile. The time a file was first seen unclaimed is kept in memory: a restarted
server starts the grace period again, which only delays a removal. Half-written copies (`.<name>.part`) are
orphans like any other file once their grace has passed; a copy still being written is younger than the grace.
"""
import logging
import time

from sqlalchemy import select

from volstack.db.image_models import ImageStore
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError
from volstack.services import events, imagestores, pools
from volstack.services import settings as S

log = logging.getLogger("volstack.orphans")
_first_seen: dict[tuple, float] = {}     # (kind, id, file name) -> when it was first seen unclaimed (monotonic)


def _snapshot_copies(s, pool) -> dict:
    """Primary copies kept as files beside their volume (not internal snapshots inside the image)."""
    rows = s.scalars(select(Snapshot).where(Snapshot.pool_id == pool.id, Snapshot.removed.is_(None),
                                            Snapshot.primary_kind.in_(("file", "delta"))))
    return {r.primary_name: ("snapshot", r.uuid, r.name) for r in rows if r.primary_name}


def _move_targets(s, pool) -> dict:
    """A volume being moved to this pool owns its destination image before the move is recorded."""
    out = {}
    for v in s.scalars(select(Volume).where(Volume.removed.is_(None), Volume.state == "Migrating")):
        to = (v.details or {}).get("migrating_to") or {}
        if to.get("pool") == pool.uuid and to.get("path"):
            out[to["path"]] = ("volume", v.uuid, v.name)
    return out


pools.object_owners.extend([_snapshot_copies, _move_targets])


def _claimed_on_pool(s, pool) -> set[str]:
    names = {v.path for v in s.scalars(select(Volume).where(Volume.pool_id == pool.id, Volume.removed.is_(None)))
             if v.path}
    for source in pools.object_owners:
        names.update(source(s, pool))
    return names


def _claimed_on_store(s, store) -> set[str]:
    names = {o[3] for o in imagestores.objects_on(s, store) if len(o) > 3 and o[3]}
    # a backup under way names its file before it exists (BackingUp), as do snapshots kept on this store
    names.update(r.install_path for r in s.scalars(select(Snapshot).where(Snapshot.store_id == store.id))
                 if r.install_path)
    return names


def _places(s) -> list[tuple]:
    """(kind, id, name, spec, channel) of every Up pool and image store a host can list."""
    out = []
    for pool in s.scalars(select(StoragePool).where(StoragePool.state == "Up")):
        hosts = pools.hosts_in_scope(s, pool)
        if hosts:
            out.append(("pool", pool.id, pool.name, driver_for(pool.provider).spec(pool), channel(hosts[0])))
    for store in s.scalars(select(ImageStore).where(ImageStore.removed.is_(None))):
        hosts = imagestores.hosts_for(s, store.zone_id)
        if hosts:
            out.append(("store", store.id, store.name, imagestores.spec(store), channel(hosts[0])))
    return out


def _claimed(s, kind, place_id) -> set[str] | None:
    if kind == "pool":
        pool = s.get(StoragePool, place_id)
        return _claimed_on_pool(s, pool) if pool is not None and pool.state == "Up" else None
    store = s.get(ImageStore, place_id)
    return _claimed_on_store(s, store) if store is not None and store.removed is None else None


def scan(db, ctx, now=None) -> dict:
    """One pass: {"orphans": [(place, name)], "removed": [(place, name)]}. No transaction is open while hosts
    list or delete files."""
    now = time.monotonic() if now is None else now
    grace = S.Settings(db).get(S.ORPHAN_GRACE_PERIOD)
    with db.session(readonly=True) as s:
        places = _places(s)
    found, removed, reports = [], [], []
    seen_now = set()
    for kind, place_id, place_name, spec, ch in places:
        try:
            entries = ch.call("pool_list", pool=spec, path="")["entries"]
        except CloudError as exc:
            log.warning("orphan scan: cannot list %s %s: %s", kind, place_name, exc.text)
            continue
        with db.session(readonly=True) as s:      # read after the listing: a file made meanwhile is claimed now
            claimed = _claimed(s, kind, place_id)
        if claimed is None:
            continue
        for e in entries:
            name = e["name"]
            if e.get("isdirectory") or name in claimed or name.startswith("volstack."):
                continue
            key = (kind, place_id, name)
            seen_now.add(key)
            found.append((place_name, name))
            if key not in _first_seen:
                _first_seen[key] = now
                reports.append((f"{'Storage pool' if kind == 'pool' else 'Image store'} {place_name} holds {name}, "
                                f"which no volume, template, snapshot or transfer names; it is removed if it stays "
                                f"unclaimed for {grace} s (storage.orphan.grace.period)", "WARN", "ORPHAN.FILE"))
            if grace >= 0 and now - _first_seen[key] >= grace:
                with db.session(readonly=True) as s:
                    still = _claimed(s, kind, place_id)
                if still is None or name in still:
                    continue
                try:
                    ch.call("volume_delete", pool=spec, name=name)
                except CloudError as exc:
                    reports.append((f"Orphan {name} on {place_name} could not be removed: {exc.text}", "WARN",
                                    "ORPHAN.REMOVE"))
                    continue
                _first_seen.pop(key, None)
                removed.append((place_name, name))
                reports.append((f"Orphan {name} removed from {place_name} (unclaimed for at least {grace} s)",
                                "INFO", "ORPHAN.REMOVE"))
    for key in [k for k in _first_seen if k not in seen_now]:
        _first_seen.pop(key)            # claimed or gone since: its grace starts again if it comes back
    if reports:
        with db.session() as s:
            for text, level, kind in reports:
                events.record(s, ctx, kind, text, level=level)
    return {"orphans": found, "removed": removed}
