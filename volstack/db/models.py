"""Tables. One class per CloudStack entity; column names follow CloudStack's where they exist.

Every row has an internal integer id and a public uuid; the API only ever shows the uuid.
"""
import uuid as _uuid
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


# Indexes a migration creates on one database only, outside the models (PostgreSQL's trigram index for keywords).
DATABASE_ONLY_INDEXES = {"ix_volumes_name_trgm"}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_uuid() -> str:
    return str(_uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Entity:
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(40), unique=True, default=new_uuid)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ManagementServer(Base):
    __tablename__ = "mshost"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(40), unique=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="Up")
    started: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# ---------------------------------------------------------------- tenancy

class Domain(Entity, Base):
    __tablename__ = "domain"
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    level: Mapped[int] = mapped_column(Integer, default=0)
    network_domain: Mapped[str | None] = mapped_column(String(255))


class Role(Entity, Base):
    __tablename__ = "role"
    name: Mapped[str] = mapped_column(String(255), unique=True)
    role_type: Mapped[str] = mapped_column(String(16))   # Admin | DomainAdmin | User
    description: Mapped[str | None] = mapped_column(String(255))


class Account(Entity, Base):
    __tablename__ = "account"
    name: Mapped[str] = mapped_column(String(255))
    account_type: Mapped[int] = mapped_column(Integer)   # 0 user, 1 root admin, 2 domain admin
    role_id: Mapped[int] = mapped_column(ForeignKey("role.id"))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"))
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    network_domain: Mapped[str | None] = mapped_column(String(255))
    __table_args__ = (UniqueConstraint("domain_id", "name"),)


class User(Entity, Base):
    __tablename__ = "user"
    username: Mapped[str] = mapped_column(String(255))
    password: Mapped[str | None] = mapped_column(String(255))          # argon2 hash
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    firstname: Mapped[str | None] = mapped_column(String(255))
    lastname: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    api_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    secret_key: Mapped[str | None] = mapped_column(Text)                # encrypted at rest
    login_attempts: Mapped[int] = mapped_column(Integer, default=0)     # consecutive failed logins
    login_blocked_until: Mapped[datetime | None] = mapped_column(DateTime)   # no login tried before (backoff)


class Session(Base):
    __tablename__ = "api_session"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)        # SHA-256 of the session key (hex)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_access: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ResourceLimit(Base):
    __tablename__ = "resource_limit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    resource_type: Mapped[str] = mapped_column(String(32))
    max: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (UniqueConstraint("account_id", "resource_type"),)


class ResourceCount(Base):
    """What an owner uses, kept current by db/counters.py in the transaction of each change (CloudStack's
    resource_count): scope `account` (volume, snapshot, template, primary_storage, secondary_storage bytes) or
    `pool` (allocated bytes)."""
    __tablename__ = "resource_count"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


# ---------------------------------------------------------------- infrastructure

class Zone(Entity, Base):
    __tablename__ = "data_center"
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    network_type: Mapped[str] = mapped_column(String(16), default="Advanced")
    dns1: Mapped[str | None] = mapped_column(String(255))
    dns2: Mapped[str | None] = mapped_column(String(255))
    internal_dns1: Mapped[str | None] = mapped_column(String(255))
    internal_dns2: Mapped[str | None] = mapped_column(String(255))
    ip6_dns1: Mapped[str | None] = mapped_column(String(255))
    ip6_dns2: Mapped[str | None] = mapped_column(String(255))
    guest_cidr: Mapped[str | None] = mapped_column(String(64))
    network_domain: Mapped[str | None] = mapped_column(String(255))
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    allocation_state: Mapped[str] = mapped_column(String(16), default="Enabled")
    local_storage_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    security_group_enabled: Mapped[bool] = mapped_column(Boolean, default=False)


class Pod(Entity, Base):
    __tablename__ = "host_pod_ref"
    name: Mapped[str] = mapped_column(String(255))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    gateway: Mapped[str | None] = mapped_column(String(64))
    netmask: Mapped[str | None] = mapped_column(String(64))
    start_ip: Mapped[str | None] = mapped_column(String(64))
    end_ip: Mapped[str | None] = mapped_column(String(64))
    allocation_state: Mapped[str] = mapped_column(String(16), default="Enabled")
    __table_args__ = (UniqueConstraint("zone_id", "name"),)


class Cluster(Entity, Base):
    __tablename__ = "cluster"
    name: Mapped[str] = mapped_column(String(255))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    pod_id: Mapped[int] = mapped_column(ForeignKey("host_pod_ref.id"))
    hypervisor: Mapped[str] = mapped_column(String(32))
    cluster_type: Mapped[str] = mapped_column(String(32), default="CloudManaged")
    allocation_state: Mapped[str] = mapped_column(String(16), default="Enabled")
    managed_state: Mapped[str] = mapped_column(String(16), default="Managed")
    __table_args__ = (UniqueConstraint("pod_id", "name"),)


class Host(Entity, Base):
    __tablename__ = "host"
    name: Mapped[str] = mapped_column(String(255))
    host_type: Mapped[str] = mapped_column(String(32), default="Routing")
    hypervisor: Mapped[str] = mapped_column(String(32))
    zone_id: Mapped[int] = mapped_column(ForeignKey("data_center.id"))
    pod_id: Mapped[int] = mapped_column(ForeignKey("host_pod_ref.id"))
    cluster_id: Mapped[int] = mapped_column(ForeignKey("cluster.id"))
    url: Mapped[str | None] = mapped_column(String(1024))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="Up")          # Up, Down, Disconnected, Alert
    resource_state: Mapped[str] = mapped_column(String(32), default="Enabled")
    host_tags: Mapped[str | None] = mapped_column(String(1024))
    version: Mapped[str | None] = mapped_column(String(32))
    credential: Mapped[str | None] = mapped_column(Text)                  # encrypted at rest
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    last_ping: Mapped[datetime | None] = mapped_column(DateTime)


# ---------------------------------------------------------------- settings, events, jobs

class ConfigValue(Base):
    """A setting's value at one scope. Absent rows mean 'inherit' (scope chain, then default)."""
    __tablename__ = "configuration"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(String(32))       # global, zone, cluster, storagepool, account, imagestore, domain
    scope_id: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[str | None] = mapped_column(Text)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("name", "scope", "scope_id"),)


class Event(Entity, Base):
    __tablename__ = "event"
    __table_args__ = (Index("ix_event_account", "account_id", "id"),)
    event_type: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16), default="INFO")
    state: Mapped[str] = mapped_column(String(16), default="Completed")
    description: Mapped[str] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    domain_id: Mapped[int | None] = mapped_column(Integer)
    resource_type: Mapped[str | None] = mapped_column(String(32))
    resource_uuid: Mapped[str | None] = mapped_column(String(40))
    job_uuid: Mapped[str | None] = mapped_column(String(40))


class AsyncJob(Entity, Base):
    __tablename__ = "async_job"
    __table_args__ = (Index("ix_async_job_queue", "status", "running", "id"), Index("ix_async_job_account", "account_id", "id"))
    cmd: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    account_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    domain_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer, default=0)      # 0 pending, 1 ok, 2 failed, 3 cancelled
    running: Mapped[bool] = mapped_column(Boolean, default=False)
    proc_status: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)    # percent
    result_code: Mapped[int] = mapped_column(Integer, default=0)
    result_type: Mapped[str] = mapped_column(String(16), default="object")
    result: Mapped[dict | None] = mapped_column(JSON)
    instance_type: Mapped[str | None] = mapped_column(String(32))
    instance_uuid: Mapped[str | None] = mapped_column(String(40))
    sync_key: Mapped[str | None] = mapped_column(String(128), index=True)
    queue_key: Mapped[str | None] = mapped_column(String(128))    # a throttled queue (jobs/engine.py)
    owner_msid: Mapped[int | None] = mapped_column(Integer)
    started: Mapped[datetime | None] = mapped_column(DateTime)
    completed: Mapped[datetime | None] = mapped_column(DateTime)
    last_update: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JobLock(Base):
    """The one running job of a sync key: the primary key makes two workers unable to both win."""
    __tablename__ = "async_job_lock"
    sync_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer)
