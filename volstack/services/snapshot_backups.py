"""Failed snapshot backups are retried (CloudStack's backup.retry / backup.retry.interval).

A backup that fails leaves the snapshot CreatedOnPrimary with its primary copy. `failed()` counts the failure in
`backup_attempts` and, while fewer than `backup.retry` retries were made, sets `backup_retry_at` to now +
`backup.retry.interval`; after the last one the snapshot stays CreatedOnPrimary with the reason (delete it, or take
a new snapshot). The management servers' periodic task `submit_due()` claims each due retry with a conditional
UPDATE (so one server submits it) and queues the `snapshotBackup` task in the same transaction: the retry waits for
the volume's other jobs and takes a per-host snapshot slot like any snapshot job. Nothing sleeps: a retry is a row
with a time, and a crash between failure and retry loses nothing.
"""
from datetime import timedelta

from sqlalchemy import select, update

from volstack.db.image_models import ImageStore
from volstack.db.models import utcnow
from volstack.db.snapshot_models import Snapshot
from volstack.errors import CloudError, ResourceUnavailable
from volstack.services import events, imagestores
from volstack.services import settings as S
from volstack.services.lifecycle import SNAPSHOT


def failed(s, ctx, snap: Snapshot, text: str) -> None:
    """snap's backup failed (it is CreatedOnPrimary): schedule the next retry, or give up after backup.retry."""
    limit = max(0, S.Settings.value_in(s, S.BACKUP_RETRY) or 0)
    interval = max(0, S.Settings.value_in(s, S.BACKUP_RETRY_INTERVAL) or 0)
    snap.backup_attempts = (snap.backup_attempts or 0) + 1
    reason = snap.error or f"backup failed (the snapshot is kept on primary storage): {text}"
    retried = snap.backup_attempts - 1
    if retried < limit:
        snap.backup_retry_at = utcnow() + timedelta(seconds=interval)
        snap.error = (f"{reason}; retry {retried + 1} of {limit} (backup.retry) at "
                      f"{snap.backup_retry_at:%Y-%m-%d %H:%M:%S} UTC")
        level = "WARN"
    else:
        snap.backup_retry_at = None
        snap.error = reason + (f"; no retry left after {limit} (backup.retry)" if limit else "") + \
            ": delete the snapshot or take a new one"
        level = "ERROR"
    events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {snap.name}: {snap.error}", level=level,
                  resource_type="Snapshot", resource_uuid=snap.uuid)


def target_store(s, snap: Snapshot) -> ImageStore:
    """The writable image store with the most free space in the snapshot's zone, for a full backup."""
    stores = imagestores.writable_stores(s, snap.zone_id)
    if not stores:
        raise ResourceUnavailable("No writable image store in the zone to back the snapshot up to; the snapshot "
                                  "stays on primary storage")
    return stores[0]


def copy_failed(s, snap: Snapshot, store: ImageStore, kept_on: str, exc: CloudError) -> None:
    """BackingUp → CreatedOnPrimary with the reason; the caller re-raises, and failed() schedules the retry."""
    SNAPSHOT.fire(s, snap, "OperationFailed", store_id=None, install_path=None,
                  error=f"backup to image store {store.name} failed (the snapshot is kept on {kept_on}): {exc.text}")


def attempt(snap: Snapshot) -> None:
    """A backup attempt begins: the last one's reason is replaced by this one's outcome."""
    snap.error, snap.backup_retry_at = None, None


def submit_due(db, ctx, submit) -> int:
    """Queue the retries that are due; submit(s, ctx, snap) adds the snapshotBackup task in the caller's session.
    Returns how many were queued."""
    now = utcnow()
    with db.session(readonly=True) as s:
        due = s.execute(select(Snapshot.id, Snapshot.backup_retry_at).where(
            Snapshot.state == "CreatedOnPrimary", Snapshot.removed.is_(None), Snapshot.backup_retry_at <= now)).all()
    queued = 0
    for sid, at in due:
        with db.session() as s:
            claimed = s.execute(update(Snapshot).where(Snapshot.id == sid, Snapshot.backup_retry_at == at,
                                                       Snapshot.state == "CreatedOnPrimary")
                                .values(backup_retry_at=None)).rowcount
            if claimed != 1:
                continue                   # another server took it, or the snapshot changed meanwhile
            snap = s.get(Snapshot, sid)
            submit(s, ctx, snap)
            events.record(s, ctx, "SNAPSHOT.BACKUP", f"Snapshot {snap.name}: backup retry {snap.backup_attempts} "
                          "queued", resource_type="Snapshot", resource_uuid=snap.uuid)
            queued += 1
    return queued
