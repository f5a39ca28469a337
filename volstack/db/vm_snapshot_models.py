"""VM snapshots (CloudStack's `vm_snapshots` table): one instant of all of a VM's disks, with or without its memory.

On KVM file pools a VM snapshot is a qcow2 internal snapshot named by the VM snapshot's uuid in every disk
image of the VM (the memory, for DiskAndMemory, lives in the ROOT disk's). `volume_ids` records which
volumes carry it, since a destroyed VM's data disks are detached before its VM snapshots are deleted.
"""
from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base
from volstack.db.storage_models import OwnedEntity


class VMSnapshot(OwnedEntity, Base):
    __tablename__ = "vm_snapshots"
    name: Mapped[str] = mapped_column(String(255))                       # <vm name>_VS_<yyyyMMddHHmmss>
    display_name: Mapped[str] = mapped_column(String(255))               # the user's name, unique per VM
    description: Mapped[str | None] = mapped_column(String(255))
    vm_id: Mapped[int] = mapped_column(ForeignKey("vm_instance.id"))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    state: Mapped[str] = mapped_column(String(32), default="Allocated")
    snapshot_type: Mapped[str] = mapped_column(String(16))               # Disk, DiskAndMemory
    current: Mapped[bool] = mapped_column(Boolean, default=False)        # the one the VM was last taken or reverted to
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("vm_snapshots.id"))
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    volume_ids: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[datetime | None] = mapped_column(DateTime)
