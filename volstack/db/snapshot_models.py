"""Volume snapshots (CloudStack's `snapshots` table, with its primary and image-store locations inline).

A snapshot is taken on the volume's primary pool (`pool_id` + `primary_name`: an internal qcow2 snapshot
of the volume image, or a file beside it) and backed up to an image store as a flat qcow2 (`store_id` +
`install_path`). `parent_id` is reserved for incremental chains.
"""
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base
from volstack.db.storage_models import OwnedEntity


class Snapshot(OwnedEntity, Base):
    __tablename__ = "snapshots"
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
    error: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[datetime | None] = mapped_column(DateTime)
