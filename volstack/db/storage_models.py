"""Tables of the storage subsystem: primary pools, offerings, volumes, and the VMs that use them."""
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base, Entity, utcnow


class OwnedEntity(Entity):
    """Every tenant resource has an owner account (and its domain)."""
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"))


class StoragePool(Entity, Base):
    __tablename__ = "storage_pool"
    name: Mapped[str] = mapped_column(String(255))
    pool_type: Mapped[str] = mapped_column(String(32))          # NetworkFilesystem, SharedMountPoint, Filesystem, RBD...
    provider: Mapped[str] = mapped_column(String(64), default="DefaultPrimary")
    scope: Mapped[str] = mapped_column(String(16))              # ZONE, CLUSTER, HOST
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    pod_id: Mapped[int | None] = mapped_column(ForeignKey("host_pod_ref.id"))
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("cluster.id"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("host.id"))
    hypervisor: Mapped[str | None] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)                      # secrets inside are kept in `secret`, not here
    host_address: Mapped[str | None] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    port: Mapped[int] = mapped_column(Integer, default=0)
    secret: Mapped[str | None] = mapped_column(Text)            # encrypted at rest
    state: Mapped[str] = mapped_column(String(32), default="Initialized")
    tags: Mapped[str | None] = mapped_column(String(1024))      # comma-separated, or a rule when is_tag_a_rule
    is_tag_a_rule: Mapped[bool] = mapped_column(Boolean, default=False)
    managed: Mapped[bool] = mapped_column(Boolean, default=False)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity_iops: Mapped[int | None] = mapped_column(BigInteger)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    stats_updated: Mapped[datetime | None] = mapped_column(DateTime)


class StoragePoolHost(Base):
    """Which hosts have the pool connected (CloudStack's storage_pool_host_ref)."""
    __tablename__ = "storage_pool_host_ref"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("storage_pool.id", ondelete="CASCADE"))
    host_id: Mapped[int] = mapped_column(ForeignKey("host.id", ondelete="CASCADE"))
    local_path: Mapped[str | None] = mapped_column(String(1024))
    __table_args__ = (UniqueConstraint("pool_id", "host_id"),)


class DiskOffering(Entity, Base):
    __tablename__ = "disk_offering"
    name: Mapped[str] = mapped_column(String(255))
    display_text: Mapped[str | None] = mapped_column(String(4096))
    disk_size: Mapped[int] = mapped_column(BigInteger, default=0)          # bytes; 0 with customized
    customized: Mapped[bool] = mapped_column(Boolean, default=False)
    min_size_gb: Mapped[int | None] = mapped_column(Integer)
    max_size_gb: Mapped[int | None] = mapped_column(Integer)
    tags: Mapped[str | None] = mapped_column(String(4096))
    provisioning_type: Mapped[str] = mapped_column(String(16), default="thin")   # thin, sparse, fat
    storage_type: Mapped[str] = mapped_column(String(16), default="shared")      # shared, local
    cache_mode: Mapped[str | None] = mapped_column(String(16))
    bytes_read_rate: Mapped[int | None] = mapped_column(BigInteger)
    bytes_read_rate_max: Mapped[int | None] = mapped_column(BigInteger)
    bytes_read_rate_max_length: Mapped[int | None] = mapped_column(BigInteger)
    bytes_write_rate: Mapped[int | None] = mapped_column(BigInteger)
    bytes_write_rate_max: Mapped[int | None] = mapped_column(BigInteger)
    bytes_write_rate_max_length: Mapped[int | None] = mapped_column(BigInteger)
    iops_read_rate: Mapped[int | None] = mapped_column(BigInteger)
    iops_read_rate_max: Mapped[int | None] = mapped_column(BigInteger)
    iops_read_rate_max_length: Mapped[int | None] = mapped_column(BigInteger)
    iops_write_rate: Mapped[int | None] = mapped_column(BigInteger)
    iops_write_rate_max: Mapped[int | None] = mapped_column(BigInteger)
    iops_write_rate_max_length: Mapped[int | None] = mapped_column(BigInteger)
    min_iops: Mapped[int | None] = mapped_column(BigInteger)
    max_iops: Mapped[int | None] = mapped_column(BigInteger)
    customized_iops: Mapped[bool] = mapped_column(Boolean, default=False)
    hv_snapshot_reserve: Mapped[int | None] = mapped_column(Integer)
    encrypt: Mapped[bool] = mapped_column(Boolean, default=False)
    disk_size_strictness: Mapped[bool] = mapped_column(Boolean, default=False)
    display_offering: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="Active")     # Active, Inactive
    compute_only: Mapped[bool] = mapped_column(Boolean, default=False)  # the root-disk half of a service offering
    domain_ids: Mapped[str | None] = mapped_column(String(1024))        # public when empty
    zone_ids: Mapped[str | None] = mapped_column(String(1024))          # all zones when empty
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    removed: Mapped[datetime | None] = mapped_column(DateTime)


class ServiceOffering(Entity, Base):
    __tablename__ = "service_offering"
    name: Mapped[str] = mapped_column(String(255))
    display_text: Mapped[str | None] = mapped_column(String(4096))
    cpu: Mapped[int | None] = mapped_column(Integer)
    speed: Mapped[int | None] = mapped_column(Integer)
    ram_size: Mapped[int | None] = mapped_column(Integer)                 # MiB
    customized: Mapped[bool] = mapped_column(Boolean, default=False)
    root_disk_size: Mapped[int] = mapped_column(BigInteger, default=0)    # bytes; 0: not enforced
    is_volatile: Mapped[bool] = mapped_column(Boolean, default=False)
    host_tags: Mapped[str | None] = mapped_column(String(4096))
    disk_offering_id: Mapped[int] = mapped_column(ForeignKey("disk_offering.id"))   # storage side of the offering
    disk_offering_strictness: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="Active")
    domain_ids: Mapped[str | None] = mapped_column(String(1024))
    zone_ids: Mapped[str | None] = mapped_column(String(1024))
    removed: Mapped[datetime | None] = mapped_column(DateTime)


class VirtualMachine(OwnedEntity, Base):
    __tablename__ = "vm_instance"
    # every filter listVirtualMachines offers; (account_id, id) serves a user's page in id order on both databases
    __table_args__ = (Index("ix_vm_instance_account", "account_id", "id"), Index("ix_vm_instance_host", "host_id"),
                      Index("ix_vm_instance_zone", "zone_id"), Index("ix_vm_instance_state", "state"),
                      Index("ix_vm_instance_template", "template_id"))
    name: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), default="Stopped")
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("host.id"))
    last_host_id: Mapped[int | None] = mapped_column(ForeignKey("host.id"))
    service_offering_id: Mapped[int] = mapped_column(ForeignKey("service_offering.id"))
    template_id: Mapped[int | None] = mapped_column(Integer)
    iso_id: Mapped[int | None] = mapped_column(Integer)                 # the ISO in its CD drive (attachIso)
    iso_pool_id: Mapped[int | None] = mapped_column(Integer)            # the pool holding that ISO's cached copy
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime)     # the expunge sweep counts from here
    removed: Mapped[datetime | None] = mapped_column(DateTime)


class Volume(OwnedEntity, Base):
    __tablename__ = "volumes"
    # every filter listVolumes offers (the root admin's listall has no owner filter and walks the primary key)
    __table_args__ = (Index("ix_volumes_account", "account_id", "id"), Index("ix_volumes_pool", "pool_id"),
                      Index("ix_volumes_vm", "vm_id"), Index("ix_volumes_zone", "zone_id"),
                      Index("ix_volumes_state", "state"), Index("ix_volumes_offering", "disk_offering_id"),
                      Index("ix_volumes_name", "name"), Index("ix_volumes_template", "template_id"))
    name: Mapped[str] = mapped_column(String(255))
    volume_type: Mapped[str] = mapped_column(String(16))                 # ROOT, DATADISK
    state: Mapped[str] = mapped_column(String(32), default="Allocated")
    size: Mapped[int] = mapped_column(BigInteger)                        # bytes (virtual)
    physical_size: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16), default="QCOW2")
    path: Mapped[str | None] = mapped_column(String(1024))              # name of the image on its pool
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("storage_pool.id"))
    last_pool_id: Mapped[int | None] = mapped_column(ForeignKey("storage_pool.id"))
    disk_offering_id: Mapped[int | None] = mapped_column(ForeignKey("disk_offering.id"))
    template_id: Mapped[int | None] = mapped_column(Integer)            # ROOT volumes: the template (or ISO) used
    vm_id: Mapped[int | None] = mapped_column(ForeignKey("vm_instance.id"))
    device_id: Mapped[int | None] = mapped_column(Integer)
    hypervisor: Mapped[str | None] = mapped_column(String(32))
    provisioning_type: Mapped[str] = mapped_column(String(16), default="thin")
    min_iops: Mapped[int | None] = mapped_column(BigInteger)
    max_iops: Mapped[int | None] = mapped_column(BigInteger)
    attached: Mapped[datetime | None] = mapped_column(DateTime)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)                     # why the last operation failed
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    removed: Mapped[datetime | None] = mapped_column(DateTime)
    passphrase_id: Mapped[int | None] = mapped_column(ForeignKey("passphrase.id"))   # encrypted volumes only
    encrypt_format: Mapped[str | None] = mapped_column(String(16))      # LUKS once the encrypted image exists


class Passphrase(Base):
    """One encrypted volume's LUKS passphrase (CloudStack's `passphrase`), Fernet-encrypted with the server key;
    shared by the volume and its snapshots, deleted with the last of them."""
    __tablename__ = "passphrase"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    passphrase: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class VolumeStats(Base):
    """Latest block statistics of an attached volume, collected every volume.stats.interval."""
    __tablename__ = "volume_stats"
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True)
    read_ops: Mapped[int] = mapped_column(BigInteger, default=0)
    write_ops: Mapped[int] = mapped_column(BigInteger, default=0)
    read_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    write_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    iops_total: Mapped[float] = mapped_column(Float, default=0)
    collected: Mapped[datetime | None] = mapped_column(DateTime)
