"""Volume snapshots (CloudStack's `snapshots` table, with its primary and image-store locations inline).

A snapshot is taken on the volume's primary pool (`pool_id` + `primary_name`: an internal qcow2 snapshot
of the volume image, or a file beside it) and backed up to an image store as a flat qcow2 (`store_id` +
`install_path`). `parent_id` links an incremental backup to its parent. `location_type` PRIMARY: the snapshot
stays on primary only (services/snapshot_primary.py); a failed backup is retried at `backup_retry_at`
(services/snapshot_backups.py).
"""
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base, Entity, utcnow
from volstack.db.storage_models import OwnedEntity


class Snapshot(OwnedEntity, Base):
    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_account", "account_id", "id"), Index("ix_snapshots_volume", "volume_id"),
                      Index("ix_snapshots_parent", "parent_id"), Index("ix_snapshots_state", "state"))
    name: Mapped[str] = mapped_column(String(255))
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id"))
    volume_type: Mapped[str] = mapped_column(String(16))                 # ROOT, DATADISK (kept after the volume goes)
    disk_offering_id: Mapped[int | None] = mapped_column(ForeignKey("disk_offering.id"))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    snapshot_type: Mapped[str] = mapped_column(String(16), default="MANUAL")   # MANUAL, RECURRING
    state: Mapped[str] = mapped_column(String(32), default="Allocated")
    size: Mapped[int] = mapped_column(BigInteger)                        # virtual size of the volume, bytes
    physical_size: Mapped[int | None] = mapped_column(BigInteger)        # bytes of the backup on the store
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("storage_pool.id"))
    primary_kind: Mapped[str | None] = mapped_column(String(16))         # internal (in the volume image) or file
    primary_name: Mapped[str | None] = mapped_column(String(1024))
    store_id: Mapped[int | None] = mapped_column(ForeignKey("image_store.id"))
    install_path: Mapped[str | None] = mapped_column(String(1024))
    parent_id: Mapped[int | None] = mapped_column(Integer)
    location_type: Mapped[str | None] = mapped_column(String(16))        # PRIMARY: kept on primary only, never backed up
    backup_attempts: Mapped[int] = mapped_column(Integer, default=0)     # failed backups so far (backup.retry)
    backup_retry_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)   # when the next retry is due
    error: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[datetime | None] = mapped_column(DateTime)
    passphrase_id: Mapped[int | None] = mapped_column(ForeignKey("passphrase.id"))   # of an encrypted volume
    encrypt_format: Mapped[str | None] = mapped_column(String(16))


class SnapshotPolicy(Entity, Base):
    """A recurring snapshot schedule of one volume (CloudStack's `snapshot_policy`): at most one per interval.

    `next_at` is the next slot the scheduler fires (UTC); claiming a slot moves it forward with a conditional
    UPDATE, so one slot is fired by one management server only. `inactive_since` is when the volume last stopped
    being written (its VM left Running, or it was detached from a running VM)."""
    __tablename__ = "snapshot_policy"
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id"))
    schedule: Mapped[str] = mapped_column(String(100))                    # as given: MM, MM:HH, MM:HH:D, MM:HH:DD
    timezone: Mapped[str] = mapped_column(String(100))
    interval: Mapped[int] = mapped_column(Integer)                        # 0 HOURLY, 1 DAILY, 2 WEEKLY, 3 MONTHLY
    max_snaps: Mapped[int] = mapped_column(Integer)
    display: Mapped[bool] = mapped_column(Boolean, default=True)          # false: not scheduled (fordisplay)
    next_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    inactive_since: Mapped[datetime | None] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("volume_id", "interval"),)


class SnapshotSchedule(Base):
    """One fired slot of a policy (CloudStack's `snapshot_schedule`): unique per (policy, slot) as a second guard
    against firing a slot twice; `snapshot_id` links the recurring snapshot it took (retention counts these),
    `skipped` says why none was taken."""
    __tablename__ = "snapshot_schedule"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("snapshot_policy.id", ondelete="CASCADE"))
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id"))
    scheduled_at: Mapped[datetime] = mapped_column(DateTime)
    fired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id"))
    job_uuid: Mapped[str | None] = mapped_column(String(40))
    skipped: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("policy_id", "scheduled_at"),)
