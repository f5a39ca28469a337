"""Resource tags and resource details, and the guest OS types users add (CloudStack's `resource_tags` and its per-type `*_details` tables).

A tag names its resource by CloudStack's resource type (Volume, Template, ISO, ...) and the resource's internal
id; it carries the resource owner's account and domain, as CloudStack's do, so listTags can apply the usual
ownership rules without joining every resource table. Details are key/value pairs set through
addResourceDetail; they live apart from the internal `details` columns of the resource rows, so a user cannot
overwrite what volstack keeps there.
"""
from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from volstack.db.models import Base, Entity


class ResourceTag(Entity, Base):
    __tablename__ = "resource_tags"
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[int] = mapped_column(Integer)
    resource_uuid: Mapped[str] = mapped_column(String(40))
    customer: Mapped[str | None] = mapped_column(String(255))
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"))
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "key"),
                      Index("ix_resource_tags_key_value", "key", "value"))


class ResourceDetail(Base):
    __tablename__ = "resource_details"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(4096))
    display: Mapped[bool] = mapped_column(Boolean, default=True)
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "name"),)


class GuestOs(Entity, Base):
    """A guest OS type added with addGuestOs (CloudStack's catalogue itself is data: services/catalog.py)."""
    __tablename__ = "guest_os"
    category_uuid: Mapped[str] = mapped_column(String(40))
    display_name: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    display: Mapped[bool] = mapped_column(Boolean, default=True)
