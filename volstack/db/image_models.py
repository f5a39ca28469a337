"""Image stores (secondary storage), templates and ISOs, and where their copies live.

Names follow CloudStack's tables: image_store, vm_template, template_zone_ref, template_store_ref
(a template's copy on an image store) and template_spool_ref (its cached copy on a primary pool).
"""
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base, Entity, utcnow
from volstack.db.storage_models import OwnedEntity


class ImageStore(Entity, Base):
    __tablename__ = "image_store"
    name: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(64))                  # NFS, Filesystem
    protocol: Mapped[str] = mapped_column(String(16))                  # nfs, file
    url: Mapped[str] = mapped_column(Text)
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("data_center.id"))
    scope: Mapped[str] = mapped_column(String(16), default="ZONE")
    role: Mapped[str] = mapped_column(String(16), default="Image")
    host_address: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stats_updated: Mapped[datetime | None] = mapped_column(DateTime)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    removed: Mapped[datetime | None] = mapped_column(DateTime)


class Template(OwnedEntity, Base):
    __tablename__ = "vm_template"
    name: Mapped[str] = mapped_column(String(255))
    display_text: Mapped[str | None] = mapped_column(String(4096))
    format: Mapped[str] = mapped_column(String(16))                    # QCOW2, RAW, ISO
    template_type: Mapped[str] = mapped_column(String(16), default="USER")   # USER, BUILTIN, SYSTEM
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    os_type: Mapped[str] = mapped_column(String(40))                   # uuid of the guest OS type
    url: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(String(255))          # as given: {ALG}hex or hex
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    featured: Mapped[bool] = mapped_column(Boolean, default=False)
    cross_zones: Mapped[bool] = mapped_column(Boolean, default=False)
    bootable: Mapped[bool] = mapped_column(Boolean, default=True)
    extractable: Mapped[bool] = mapped_column(Boolean, default=False)
    password_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    requires_hvm: Mapped[bool] = mapped_column(Boolean, default=True)
    direct_download: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int | None] = mapped_column(BigInteger)               # virtual size, bytes
    physical_size: Mapped[int | None] = mapped_column(BigInteger)
    source_volume_id: Mapped[int | None] = mapped_column(Integer)      # createTemplate from a volume
    source_snapshot_id: Mapped[int | None] = mapped_column(Integer)    # createTemplate from a snapshot
    state: Mapped[str] = mapped_column(String(16), default="Active")   # Active, Inactive
    # a direct-download template registered with a checksum: its source is fetched and hashed once
    verify_state: Mapped[str | None] = mapped_column(String(16))       # None (not asked), Checking, Verified, Failed
    verify_pct: Mapped[int] = mapped_column(Integer, default=0)
    verify_error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    removed: Mapped[datetime | None] = mapped_column(DateTime)


class TemplateZone(Base):
    """The zones a template is registered in (one row per zone; cross-zone templates have one per zone)."""
    __tablename__ = "template_zone_ref"
    __table_args__ = (UniqueConstraint("template_id", "zone_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("vm_template.id", ondelete="CASCADE"))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TemplatePermission(Base):
    """updateTemplatePermissions: accounts a private template is shared with."""
    __tablename__ = "launch_permission"
    __table_args__ = (UniqueConstraint("template_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("vm_template.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))


class TemplateStoreRef(Base):
    """A template's copy on an image store. state follows the object-in-store lifecycle; download_state
    and download_pct are what listTemplates shows."""
    __tablename__ = "template_store_ref"
    __table_args__ = (UniqueConstraint("template_id", "store_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("vm_template.id", ondelete="CASCADE"))
    store_id: Mapped[int] = mapped_column(ForeignKey("image_store.id"))
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    download_state: Mapped[str] = mapped_column(String(32), default="NOT_DOWNLOADED")
    download_pct: Mapped[int] = mapped_column(Integer, default=0)
    install_path: Mapped[str | None] = mapped_column(String(1024))
    size: Mapped[int | None] = mapped_column(BigInteger)
    physical_size: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TemplatePoolRef(Base):
    """A template's cached copy on a primary pool: ROOT volumes there are linked clones of it. The unique
    key makes concurrent deploys of one template to one pool seed it exactly once."""
    __tablename__ = "template_spool_ref"
    __table_args__ = (UniqueConstraint("template_id", "pool_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("vm_template.id", ondelete="CASCADE"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("storage_pool.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="Creating")     # Creating, Ready, Failed, Destroying
    download_state: Mapped[str] = mapped_column(String(32), default="DOWNLOAD_IN_PROGRESS")
    download_pct: Mapped[int] = mapped_column(Integer, default=0)
    install_path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int | None] = mapped_column(BigInteger)
    physical_size: Mapped[int | None] = mapped_column(BigInteger)
    validators: Mapped[dict] = mapped_column(JSON, default=dict)       # ETag/Last-Modified/size of a direct download
    error: Mapped[str | None] = mapped_column(Text)
    last_used: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DirectDownloadCertificate(Entity, Base):
    """A CA certificate hosts trust for direct-download HTTPS sources (uploadTemplateDirectDownloadCertificate)."""
    __tablename__ = "direct_download_certificate"
    __table_args__ = (UniqueConstraint("zone_id", "alias"),)
    alias: Mapped[str] = mapped_column(String(255))
    certificate: Mapped[str] = mapped_column(Text)                     # PEM
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    issuer: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    serial: Mapped[str | None] = mapped_column(String(255))
    validity: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(16))


class DirectDownloadCertificateHost(Base):
    """Where a certificate is installed; revoked rows stay to show the revocation per host."""
    __tablename__ = "direct_download_certificate_host_map"
    __table_args__ = (UniqueConstraint("certificate_id", "host_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("direct_download_certificate.id", ondelete="CASCADE"))
    host_id: Mapped[int] = mapped_column(ForeignKey("host.id", ondelete="CASCADE"))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)



class ImageTransfer(Entity, Base):
    """A transfer URL to or from an image store, served by a host agent (volstack/transfer_signing.py).

    kind "extract": a download URL handed out by extractTemplate/extractIso/extractVolume (CloudStack keeps
    these in template_store_ref/volume_store_ref.extract_url); a volume's URL serves a copy made for it on
    the store (own_copy), removed once the URL expired. kind "upload": the parameters of a browser upload
    (getUploadParamsFor*); state follows the object's NotUploaded → UploadInProgress → Uploaded/UploadError
    or UploadAbandoned, learned from the host agent that took the POST."""
    __tablename__ = "image_transfer"
    kind: Mapped[str] = mapped_column(String(16))                     # extract, upload
    object_type: Mapped[str] = mapped_column(String(16))              # Template, Iso, Volume
    object_id: Mapped[int] = mapped_column(Integer)
    object_uuid: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"))
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("data_center.id"))
    store_id: Mapped[int] = mapped_column(ForeignKey("image_store.id"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("host.id", ondelete="SET NULL"))
    install_path: Mapped[str] = mapped_column(String(1024))
    own_copy: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[str | None] = mapped_column(String(16))              # extract: HTTP_DOWNLOAD
    url: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32))
    expires: Mapped[datetime] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[datetime | None] = mapped_column(DateTime)
