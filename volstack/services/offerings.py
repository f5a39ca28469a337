"""Disk offerings and service offerings: what a volume may be (size, tags, provisioning, storage type,
hypervisor and storage QoS, encryption) and who may use it.

CloudStack 4.17+ semantics: a service offering carries its storage side in a disk offering. Unless
`diskofferingid` links an existing one, createServiceOffering creates its own *compute-only* disk
offering (hidden from listDiskOfferings) that holds the root disk size, storage tags, QoS and the other
storage fields. Deleting an offering keeps its row (volumes and VMs still point at it): it is marked
removed and Inactive, and lists no longer show it.

Visibility: an offering with no domains is public; one linked to domains is usable by accounts of
those domains and of their subdomains. Zone restrictions work the same way (no zones: every zone).

Helpers for the volume code: get_disk_offering / get_service_offering (lookup with access and zone
checks), disk_size_for (bytes for a new or resized volume), storage_iops_for (min/max IOPS of a
volume), qos_of (hypervisor throttling as QMP block_set_io_throttle names), and
register_qos_listener (called when an offering's rates change, to re-apply them online).
"""
import uuid as _uuid

from sqlalchemy import func, select
from sqlalchemy.orm import object_session

from volstack.db.models import Domain, Zone, utcnow
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, Volume
from volstack.errors import InvalidParameter, PermissionDenied
from volstack.services import events, lookup
from volstack.services import settings as S
from volstack.services.context import CallContext, ancestor_ids, require_root_admin, subtree_ids
from volstack.services.listing import ListQuery, keyword_filter, paginate

lookup.register_entity("DiskOffering", DiskOffering)
lookup.register_entity("ServiceOffering", ServiceOffering)

GIB = 1024 ** 3
PROVISIONING_TYPES = ("thin", "sparse", "fat")
STORAGE_TYPES = ("shared", "local")
# CloudStack's DiskCacheMode values (hypervisor_default since 4.20: leave the hypervisor's default).
CACHE_MODES = ("none", "writeback", "writethrough", "hypervisor_default")
STATES = ("Active", "Inactive")

# The hypervisor QoS rates: API parameter -> (model column, QMP block_set_io_throttle key).
RATES = {
    "bytesreadrate": ("bytes_read_rate", "bps_rd"),
    "bytesreadratemax": ("bytes_read_rate_max", "bps_rd_max"),
    "bytesreadratemaxlength": ("bytes_read_rate_max_length", "bps_rd_max_length"),
    "byteswriterate": ("bytes_write_rate", "bps_wr"),
    "byteswriteratemax": ("bytes_write_rate_max", "bps_wr_max"),
    "byteswriteratemaxlength": ("bytes_write_rate_max_length", "bps_wr_max_length"),
    "iopsreadrate": ("iops_read_rate", "iops_rd"),
    "iopsreadratemax": ("iops_read_rate_max", "iops_rd_max"),
    "iopsreadratemaxlength": ("iops_read_rate_max_length", "iops_rd_max_length"),
    "iopswriterate": ("iops_write_rate", "iops_wr"),
    "iopswriteratemax": ("iops_write_rate_max", "iops_wr_max"),
    "iopswriteratemaxlength": ("iops_write_rate_max_length", "iops_wr_max_length"),
}
# The four rate families as CloudStack names them in its messages: (label, rate, max, max length).
_RATE_FAMILIES = [(label, p, p + "max", p + "maxlength") for label, p in
                  (("Bytes Read", "bytesreadrate"), ("Bytes Write", "byteswriterate"),
                   ("IOPS Read", "iopsreadrate"), ("IOPS Write", "iopswriterate"))]

# Called with (session, ctx, disk_offering) after an offering's hypervisor rates change, so that
# attached volumes get the new limits online.
_qos_listeners: list = []


def register_qos_listener(fn) -> None:
    _qos_listeners.append(fn)


# ---------------------------------------------------------------- small parsers

def _choice(value, allowed, message):
    if value is None or value == "":
        return None
    low = value.strip().lower()
    if low not in allowed:
        raise InvalidParameter(message)
    return low


def _provisioning(value):
    return _choice(value, PROVISIONING_TYPES,
                   f"Invalid provisioning type {value}: valid types are thin, sparse and fat")


def _storage_type(value):
    return _choice(value, STORAGE_TYPES,
                   f"Invalid storage type {value} specified, valid types are: 'local' and 'shared'")


def _cache_mode(value):
    return _choice(value, CACHE_MODES,
                   f"Invalid cache mode ({value}). Please specify one of the following valid cache mode "
                   f"parameters: none, writeback, writethrough or hypervisor_default.")


def _state(value):
    if value is None:
        return None
    for st in STATES:
        if st.lower() == value.strip().lower():
            return st
    raise InvalidParameter(f"Invalid state {value}: use Active or Inactive")


def clean_tags(value) -> str | None:
    """CloudStack's tag clean-up: comma-separated, trimmed, empty ones dropped, duplicates once."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for t in (str(x).strip() for x in items):
        if t and t not in out:
            out.append(t)
    return ",".join(out) or None


def _ids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").split(",") if x.strip()]


def _join(ids) -> str | None:
    return ",".join(str(i) for i in ids) or None


def domain_ids_of(offering) -> list[int]:
    return _ids(offering.domain_ids)


def zone_ids_of(offering) -> list[int]:
    return _ids(offering.zone_ids)


def _domains(s, uuids, what: str) -> list[int]:
    """Domain uuids -> ids, keeping only the topmost when a parent and its child are both given."""
    doms = []
    for u in uuids or []:
        d = s.scalar(select(Domain).where(Domain.uuid == u)) if _is_uuid(u) else None
        if d is None:
            raise InvalidParameter(f"Failed to {what} because invalid domain {u} has been specified.")
        if d not in doms:
            doms.append(d)
    top = [d for d in doms if not any(o is not d and o.id in ancestor_ids(s, d.id) for o in doms)]
    return [d.id for d in top]


def _zones(s, uuids, what: str) -> list[int]:
    out = []
    for u in uuids or []:
        z = s.scalar(select(Zone).where(Zone.uuid == u)) if _is_uuid(u) else None
        if z is None:
            raise InvalidParameter(f"Failed to {what} because invalid zone {u} has been specified.")
        if z.id not in out:
            out.append(z.id)
    return out


def _is_uuid(v: str) -> bool:
    try:
        _uuid.UUID(v)
        return True
    except (ValueError, AttributeError, TypeError):
        return False


def _update_list(value: str | None, keyword: str):
    """updateDiskOffering/updateServiceOffering take domainid/zoneid as one comma-separated string;
    'public' (domains) or 'all' (zones) clears the restriction. None: unchanged."""
    if value is None:
        return None
    v = value.strip()
    if v.lower() == keyword or v == "":
        return []
    return [x.strip() for x in v.split(",") if x.strip()]


# ---------------------------------------------------------------- storage-side validation

def _check_rate_combination(values: dict) -> None:
    """values: rate parameter -> value (None: unset). QEMU's throttling rules, with CloudStack's text
    for the first: a burst must not be below the rate, needs the rate, and a burst length needs a burst."""
    for label, rate, mx, length in _RATE_FAMILIES:
        r, m, ln = values.get(rate), values.get(mx), values.get(length)
        if r is not None and m is not None and m < r:
            raise InvalidParameter(f"{label} rate ({r}) cannot be greater than {label} maximum rate ({m})")
        if m is not None and r is None:
            raise InvalidParameter(f"{mx} needs {rate}: a burst rate applies on top of a sustained rate")
        if ln is not None and m is None:
            raise InvalidParameter(f"{length} needs {mx}: a burst length is the duration of a burst rate")


def _rates_for_create(rates: dict | None) -> dict:
    """Parameter values -> column values. 0 means no limit (as CloudStack, which ignores 0); negative
    values are refused."""
    out = {}
    for param, value in (rates or {}).items():
        if param not in RATES:
            raise AssertionError(f"unknown rate {param}")
        if value is None:
            continue
        if value < 0:
            raise InvalidParameter(f"Invalid value {value} for {param}: rates must be positive (0 or absent: no limit)")
        if value > 0:
            out[param] = value
    _check_rate_combination(out)
    return {RATES[p][0]: v for p, v in out.items()}


def _iops(customizediops, miniops, maxiops) -> tuple[bool, int | None, int | None]:
    if customizediops:
        if miniops is not None or maxiops is not None:
            raise InvalidParameter("miniops and maxiops cannot be given with customizediops=true: with custom IOPS "
                                   "each volume chooses its own min and max IOPS")
        return True, None, None
    if miniops is not None and miniops <= 0:
        raise InvalidParameter("The min IOPS must be greater than 0.")
    if maxiops is not None and maxiops <= 0:
        raise InvalidParameter("The max IOPS must be greater than 0.")
    if miniops is not None and maxiops is not None and miniops > maxiops:
        raise InvalidParameter("The min IOPS must be less than or equal to the max IOPS.")
    return False, miniops, maxiops


def _storage_columns(s, *, provisioningtype=None, storagetype=None, cachemode=None, tags=None, rates=None,
                     customizediops=None, miniops=None, maxiops=None, hypervisorsnapshotreserve=None,
                     encrypt=None) -> dict:
    """The storage fields shared by disk offerings and a service offering's own disk offering."""
    cust_iops, lo, hi = _iops(customizediops, miniops, maxiops)
    if hypervisorsnapshotreserve is not None and hypervisorsnapshotreserve < 0:
        raise InvalidParameter("If provided, Hypervisor Snapshot Reserve must be greater than or equal to 0.")
    return {"provisioning_type": _provisioning(provisioningtype) or "thin",
            "storage_type": _storage_type(storagetype) or "shared",
            "cache_mode": _cache_mode(cachemode), "tags": clean_tags(tags),
            "customized_iops": cust_iops, "min_iops": lo, "max_iops": hi,
            "hv_snapshot_reserve": hypervisorsnapshotreserve, "encrypt": bool(encrypt),
            **_rates_for_create(rates)}


def _max_volume_gb(s) -> int:
    return S.Settings.value_in(s, S.MAX_VOLUME_SIZE)


def _check_size_gb(s, gb, label="disk") -> None:
    limit = _max_volume_gb(s)
    if gb > limit:
        raise InvalidParameter(f"The maximum size for a {label} is {limit} GB.")


# ---------------------------------------------------------------- lookups and access

def _visible_domains(s, domain_id: int, with_children=False) -> set[int]:
    """The domains whose offerings an account of domain_id may use: its own and its ancestors (and,
    for domain admins listing, its subdomains)."""
    out = set(ancestor_ids(s, domain_id))
    if with_children:
        out |= set(s.scalars(subtree_ids(domain_id)))
    return out


def usable_in_domain(s, offering, domain_id: int) -> bool:
    ids = domain_ids_of(offering)
    return not ids or bool(set(ids) & _visible_domains(s, domain_id))


def usable_in(s, rows: list, zoneid: str | None) -> list:
    """The offerings of rows usable in the zone with uuid zoneid (all of them without one)."""
    if not zoneid:
        return rows
    zone = s.scalar(select(Zone).where(Zone.uuid == zoneid))
    if zone is None:
        raise InvalidParameter(f"Unable to find zone by id {zoneid}")
    return [r for r in rows if usable_in_zone(r, zone.id)]


def usable_in_zone(offering, zone_id: int | None) -> bool:
    ids = zone_ids_of(offering)
    return not ids or zone_id is None or zone_id in ids


def check_access(s, offering, *, domain_id: int | None, zone_id: int | None = None, what="disk offering") -> None:
    """Whether an account of domain_id (None: the root admin, any domain) may use the offering in
    zone_id (531 / 431 otherwise)."""
    if domain_id is not None and not usable_in_domain(s, offering, domain_id):
        raise PermissionDenied(f"The {what} {offering.name} is not available to accounts of this domain")
    if not usable_in_zone(offering, zone_id):
        zone = s.get(Zone, zone_id)
        raise InvalidParameter(f"The {what} {offering.name} is not available in zone {zone.name if zone else zone_id}")


def _find_disk(s, uuid) -> DiskOffering:
    row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == uuid)) if uuid else None
    if row is None or row.removed is not None:
        raise InvalidParameter(f"Unable to find disk offering by id {uuid}")
    return row


def _find_service(s, uuid) -> ServiceOffering:
    row = s.scalar(select(ServiceOffering).where(ServiceOffering.uuid == uuid)) if uuid else None
    if row is None or row.removed is not None:
        raise InvalidParameter(f"Unable to find service offering by id {uuid}")
    return row


def get_disk_offering(s, ctx: CallContext, uuid: str, *, zone_id: int | None = None,
                      owner_domain_id: int | None = None, allow_compute_only=False) -> DiskOffering:
    """A usable disk offering for a volume: exists, not deleted, Active, not the root-disk half of a
    service offering (unless allow_compute_only), visible to the owner's domain, offered in the zone."""
    row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == uuid)) if uuid else None
    if row is None or row.removed is not None or (row.compute_only and not allow_compute_only):
        raise InvalidParameter("Please specify a valid disk offering.")
    if row.state != "Active":
        raise InvalidParameter(f"Disk offering {row.name} is not active")
    check_access(s, row, domain_id=_owner_domain(ctx, owner_domain_id), zone_id=zone_id)
    return row


def get_service_offering(s, ctx: CallContext, uuid: str, *, zone_id: int | None = None,
                         owner_domain_id: int | None = None) -> ServiceOffering:
    row = s.scalar(select(ServiceOffering).where(ServiceOffering.uuid == uuid)) if uuid else None
    if row is None or row.removed is not None:
        raise InvalidParameter("Please specify a valid service offering.")
    if row.state != "Active":
        raise InvalidParameter(f"Service offering {row.name} is not active")
    check_access(s, row, domain_id=_owner_domain(ctx, owner_domain_id), zone_id=zone_id, what="service offering")
    return row


def _owner_domain(ctx, owner_domain_id):
    """Whose domain decides: the owner's when given, else the caller's (the root admin: any)."""
    if owner_domain_id is not None:
        return owner_domain_id
    return None if ctx.is_root_admin else ctx.domain_id


def disk_offering_of(offering, s=None) -> DiskOffering:
    """The disk offering holding the storage fields: itself, or a service offering's disk offering."""
    if isinstance(offering, DiskOffering):
        return offering
    s = s or object_session(offering)
    return s.get(DiskOffering, offering.disk_offering_id)


# ---------------------------------------------------------------- helpers for the volume code

def disk_size_for(offering, size_gb: int | None = None, s=None) -> int:
    """The size in bytes of a volume created or resized with this offering and an optional size in GB.

    - customized: size_gb is required, within the offering's min/max (mindisksize/maxdisksize) when it
      has them, otherwise within custom.diskoffering.size.min/max;
    - fixed data-disk offerings: the offering's size; a size_gb is refused;
    - a service offering (or its compute-only disk offering): its root disk size; size_gb may be given
      only when that is 0 (0 is returned when neither is given: the template decides);
    - always at most storage.max.volume.size.
    """
    s = s or object_session(offering)
    do = disk_offering_of(offering, s)
    if size_gb is not None and size_gb <= 0:
        raise InvalidParameter("Disk size must be larger than 0")
    if do.customized and not do.compute_only:
        if size_gb is None:
            raise InvalidParameter("This disk offering requires a custom size specified")
        lo = do.min_size_gb if do.min_size_gb is not None else S.Settings.value_in(s, S.CUSTOM_DISK_MIN)
        hi = do.max_size_gb if do.max_size_gb is not None else S.Settings.value_in(s, S.CUSTOM_DISK_MAX)
        if not lo <= size_gb <= hi:
            raise InvalidParameter(f"Volume size: {size_gb} GB is out of allowed range. Min: {lo}. Max: {hi}")
        size = size_gb * GIB
    elif do.compute_only:
        if size_gb is not None and do.disk_size and size_gb * GIB != do.disk_size:
            raise InvalidParameter(f"The service offering {do.name} sets a root disk size of {do.disk_size // GIB} GB: "
                                   "a custom root disk size cannot be given with it")
        size = size_gb * GIB if size_gb is not None else do.disk_size
    else:
        if size_gb is not None and size_gb * GIB != do.disk_size:
            raise InvalidParameter(f"This disk offering does not allow custom size: {do.name} is a fixed "
                                   f"{do.disk_size // GIB} GB offering")
        size = do.disk_size
    limit = _max_volume_gb(s)
    if size > limit * GIB:
        raise InvalidParameter(f"Requested volume size is {size // GIB} GB, but the maximum size allowed is {limit} GB.")
    return size


def storage_iops_for(offering, miniops: int | None = None, maxiops: int | None = None, s=None):
    """(min IOPS, max IOPS) of a volume: the offering's, or the caller's when the offering has
    customized IOPS (CloudStack's createVolume rules)."""
    do = disk_offering_of(offering, s)
    if not do.customized_iops:
        if miniops is not None or maxiops is not None:
            raise InvalidParameter(f"The disk offering {do.name} does not allow custom IOPS: miniops and maxiops "
                                   "can be given only with an offering that has customized IOPS")
        return do.min_iops, do.max_iops
    if miniops is None and maxiops is None:
        return None, None
    if miniops is None or miniops <= 0:
        raise InvalidParameter("The min IOPS must be greater than 0.")
    if maxiops is not None and miniops > maxiops:
        raise InvalidParameter("The min IOPS must be less than or equal to the max IOPS.")
    return miniops, maxiops


def qos_of(offering, s=None) -> dict:
    """The hypervisor throttling of volumes of this offering, keyed as QMP block_set_io_throttle names
    (iops_rd, iops_wr, bps_rd, bps_wr and their _max and _max_length variants); None when unset."""
    do = disk_offering_of(offering, s)
    return {qemu: getattr(do, column) for column, qemu in RATES.values()}


# ---------------------------------------------------------------- disk offerings

def create_disk_offering(s, ctx, *, name, displaytext=None, disksize=None, customized=None, mindisksize=None,
                         maxdisksize=None, tags=None, storagetype=None, provisioningtype=None, cachemode=None,
                         rates=None, customizediops=None, miniops=None, maxiops=None,
                         hypervisorsnapshotreserve=None, encrypt=None, disksizestrictness=None,
                         displayoffering=None, domainids=None, zoneids=None, details=None) -> DiskOffering:
    require_root_admin(ctx)
    if not name or not name.strip():
        raise InvalidParameter("Failed to create disk offering: specify the name that has non-zero length")
    customized = bool(customized)
    if not customized and disksize is None:
        raise InvalidParameter("Disksize is required for a non-customized disk offering")
    if customized and disksize is not None:
        raise InvalidParameter("Disksize is not allowed for a customized disk offering")
    if disksize is not None:
        if disksize <= 0:
            raise InvalidParameter("Please specify a disk size of at least 1 GB.")
        _check_size_gb(s, disksize)
    if (mindisksize is not None or maxdisksize is not None) and not customized:
        raise InvalidParameter("mindisksize and maxdisksize apply only to a customized disk offering")
    for label, v in (("mindisksize", mindisksize), ("maxdisksize", maxdisksize)):
        if v is not None:
            if v < 1:
                raise InvalidParameter(f"Invalid value {v} for {label}: a size range is at least 1 GB")
            _check_size_gb(s, v)
    if mindisksize is not None and maxdisksize is not None and mindisksize > maxdisksize:
        raise InvalidParameter(f"mindisksize ({mindisksize} GB) cannot be greater than maxdisksize ({maxdisksize} GB)")
    columns = _storage_columns(s, provisioningtype=provisioningtype, storagetype=storagetype, cachemode=cachemode,
                               tags=tags, rates=rates, customizediops=customizediops, miniops=miniops,
                               maxiops=maxiops, hypervisorsnapshotreserve=hypervisorsnapshotreserve, encrypt=encrypt)
    what = "create disk offering"
    do = DiskOffering(name=name, display_text=displaytext or name, disk_size=(disksize or 0) * GIB,
                      customized=customized, min_size_gb=mindisksize, max_size_gb=maxdisksize,
                      disk_size_strictness=bool(disksizestrictness),
                      display_offering=True if displayoffering is None else displayoffering,
                      domain_ids=_join(_domains(s, domainids, what)), zone_ids=_join(_zones(s, zoneids, what)),
                      details=dict(details or {}), state="Active", compute_only=False, **columns)
    s.add(do)
    s.flush()
    events.record(s, ctx, "DISK.OFFERING.CREATE", f"Disk offering {name} created", resource_type="DiskOffering",
                  resource_uuid=do.uuid)
    return do


def _state_filter(model, state, ctx):
    if not ctx.is_admin:
        return [model.state == "Active"]
    if state is None:
        return [model.state == "Active"]
    if state.strip().lower() == "all":
        return []
    return [model.state == _state(state)]


def _visible_ids(s, ctx, rows, q: ListQuery) -> list[int]:
    """Offering ids the caller may list, after the domain parameters of the list."""
    if q.domainid:
        from volstack.services.accounts import get_domain
        dom = get_domain(s, ctx, q.domainid)
        if q.account:
            from volstack.db.models import Account
            acc = s.scalar(select(Account).where(Account.name == q.account, Account.domain_id == dom.id))
            if acc is None:
                raise InvalidParameter(f"Unable to find account {q.account} in domain {dom.name}")
            return [r.id for r in rows if usable_in_domain(s, r, dom.id)]
        wanted = {dom.id}
        if q.isrecursive:
            wanted |= _visible_domains(s, dom.id, with_children=True) - _visible_domains(s, dom.id)
        return [r.id for r in rows if set(domain_ids_of(r)) & wanted]
    if ctx.is_root_admin:
        return [r.id for r in rows]
    mine = _visible_domains(s, ctx.domain_id, with_children=ctx.is_admin)
    return [r.id for r in rows if not domain_ids_of(r) or set(domain_ids_of(r)) & mine]


def list_disk_offerings(s, ctx, q: ListQuery, *, id=None, name=None, zoneid=None, state=None, storagetype=None,
                        encrypt=None, storageid=None):
    stmt = select(DiskOffering).where(DiskOffering.removed.is_(None), DiskOffering.compute_only.is_(False),
                                      *_state_filter(DiskOffering, state, ctx))
    if id:
        stmt = stmt.where(DiskOffering.uuid == id)
    if name:
        stmt = stmt.where(func.lower(DiskOffering.name) == name.lower())
    if storagetype:
        stmt = stmt.where(DiskOffering.storage_type == _storage_type(storagetype))
    if encrypt is not None:
        stmt = stmt.where(DiskOffering.encrypt.is_(encrypt))
    if not ctx.is_admin:
        stmt = stmt.where(DiskOffering.display_offering.is_(True))
    stmt = stmt.where(*keyword_filter(q, DiskOffering.name, DiskOffering.display_text))
    rows = list(s.scalars(stmt))
    rows = usable_in(s, rows, zoneid)
    if storageid:
        pool = s.scalar(select(StoragePool).where(StoragePool.uuid == storageid))
        if pool is None:
            raise InvalidParameter(f"Unable to find storage pool by id {storageid}")
        rows = [r for r in rows if pool_matches(pool, r)]
    ids = _visible_ids(s, ctx, rows, q)
    return paginate(s, select(DiskOffering).where(DiskOffering.id.in_(ids)).order_by(DiskOffering.id), q)


def pool_matches(pool, offering) -> bool:
    """Whether volumes of the offering may live on the pool: local offerings on host-scope pools and
    shared ones elsewhere, and the pool carries every tag of the offering. A pool whose tags are a
    rule is left to the allocator, which evaluates the rule: here it matches tagged offerings."""
    if (offering.storage_type == "local") != (pool.scope == "HOST"):
        return False
    wanted = set(_split(offering.tags))
    if pool.is_tag_a_rule:
        return bool(wanted)
    return wanted <= set(_split(pool.tags))


def _split(tags):
    return [t for t in (tags or "").split(",") if t]


def update_disk_offering(s, ctx, id, *, name=None, displaytext=None, displayoffering=None, domainid=None,
                         zoneid=None, tags=None, rates=None, cachemode=None, state=None) -> DiskOffering:
    require_root_admin(ctx)
    do = _find_disk(s, id)
    what = "update disk offering"
    if name is not None:
        if not name.strip():
            raise InvalidParameter("The name of a disk offering cannot be empty")
        do.name = name
    if displaytext is not None:
        do.display_text = displaytext
    if displayoffering is not None:
        do.display_offering = displayoffering
    domains, zones = _update_list(domainid, "public"), _update_list(zoneid, "all")
    if domains is not None:
        do.domain_ids = _join(_domains(s, domains, what))
    if zones is not None:
        do.zone_ids = _join(_zones(s, zones, what))
    if tags is not None:
        _set_tags(s, do, tags)
    if cachemode is not None:
        do.cache_mode = _cache_mode(cachemode)
    if state is not None:
        do.state = _state(state)
    changed_rates = _apply_rate_update(do, rates)
    events.record(s, ctx, "DISK.OFFERING.EDIT", f"Disk offering {do.name} updated", resource_type="DiskOffering",
                  resource_uuid=do.uuid)
    if changed_rates:
        for fn in _qos_listeners:
            fn(s, ctx, do)
    return do


def _set_tags(s, do: DiskOffering, tags) -> None:
    """New storage tags, refused while volumes of the offering sit on a pool that lacks them
    (CloudStack's updateDiskOffering rule)."""
    new = clean_tags(tags)
    wanted = set(_split(new))
    if wanted:
        for pool in s.scalars(select(StoragePool).where(StoragePool.id.in_(
                select(Volume.pool_id).where(Volume.disk_offering_id == do.id, Volume.removed.is_(None),
                                             Volume.pool_id.is_not(None))))):
            if not pool.is_tag_a_rule and not wanted <= set(_split(pool.tags)):
                names = ", ".join(v.name for v in s.scalars(select(Volume).where(
                    Volume.disk_offering_id == do.id, Volume.pool_id == pool.id, Volume.removed.is_(None))))
                raise InvalidParameter(f"There are active volumes using the disk offering {do.name}, and the pool "
                                       f"{pool.name} doesn't have the new tags ({names}). Please first add the new "
                                       "tags to the storage pool before adding them to the disk offering.")
    do.tags = new


def _apply_rate_update(do: DiskOffering, rates: dict | None) -> bool:
    """Given rates replace the offering's; 0 removes a limit. Returns whether anything changed."""
    given = {p: v for p, v in (rates or {}).items() if v is not None}
    if not given:
        return False
    for p, v in given.items():
        if v < 0:
            raise InvalidParameter(f"Invalid value {v} for {p}: rates must be positive (0 removes the limit)")
    current = {p: getattr(do, col) for p, (col, _) in RATES.items()}
    new = {**current, **{p: (v or None) for p, v in given.items()}}
    _check_rate_combination(new)
    for p, (col, _) in RATES.items():
        setattr(do, col, new[p])
    return new != current


def delete_disk_offering(s, ctx, id) -> None:
    require_root_admin(ctx)
    do = _find_disk(s, id)
    if do.compute_only:
        owner = s.scalar(select(ServiceOffering).where(ServiceOffering.disk_offering_id == do.id))
        raise InvalidParameter(f"Disk offering {do.uuid} is the root disk part of service offering "
                               f"{owner.name if owner else ''}: delete the service offering instead")
    do.state, do.removed = "Inactive", utcnow()
    events.record(s, ctx, "DISK.OFFERING.DELETE", f"Disk offering {do.name} deleted", resource_type="DiskOffering",
                  resource_uuid=do.uuid)
