"""Primary storage pools: create, list, update, delete, maintenance, browsing, statistics."""
import logging
import uuid
from posixpath import normpath

from sqlalchemy import func, select

from volstack.db import aggregate, counters
from volstack.db.models import Host, Zone, utcnow
from volstack.db.storage_models import StoragePool, StoragePoolHost, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter, ResourceInUse, ResourceUnavailable
from volstack.services import configs, events, infra, lookup
from volstack.services.context import require_root_admin
from volstack.services.lifecycle import POOL
from volstack.services.listing import ListQuery, keyword_filter, paginate

log = logging.getLogger("volstack.pools")
lookup.register_entity("StoragePool", StoragePool)
configs.register_scope("storagepool", StoragePool)
SCOPES = ("ZONE", "CLUSTER", "HOST")
ZONE_HYPERVISORS = ("KVM", "Simulator", "Any")

# Called with (session, ctx, pool) while a pool enters / leaves maintenance (VMs stop / restart).
maintenance_hooks: list = []
cancel_maintenance_hooks: list = []


def get_pool(s, uuid) -> StoragePool:
    pool = s.scalar(select(StoragePool).where(StoragePool.uuid == uuid, StoragePool.state != "Removed"))
    if pool is None:
        raise InvalidParameter(f"Unable to find storage pool by id {uuid}")
    return pool


def hosts_in_scope(s, pool) -> list[Host]:
    stmt = select(Host).where(Host.state == "Up", Host.resource_state.in_(("Enabled", "Disabled")))
    if pool.scope == "HOST":
        stmt = stmt.where(Host.id == pool.host_id)
    elif pool.scope == "CLUSTER":
        stmt = stmt.where(Host.cluster_id == pool.cluster_id)
    else:
        stmt = stmt.where(Host.zone_id == pool.zone_id)
        if pool.hypervisor and pool.hypervisor != "Any":
            stmt = stmt.where(Host.hypervisor == pool.hypervisor)
    return list(s.scalars(stmt.order_by(Host.id)))


def _tags(value) -> str | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    return ",".join(t.strip() for t in items if t.strip()) or None


def create_pool(s, ctx, *, name, url, zoneid, podid=None, clusterid=None, hostid=None, scope=None, hypervisor=None,
                provider=None, tags=None, istagarule=False, capacitybytes=None, capacityiops=None, managed=False,
                details=None) -> StoragePool:
    require_root_admin(ctx)
    drv = driver_for(provider, url)
    zone = infra.get_zone(s, zoneid)
    scope = (scope or ("HOST" if hostid else "CLUSTER")).upper()
    if scope not in SCOPES:
        raise InvalidParameter(f"Invalid scope {scope}: use zone, cluster or host")
    parsed = drv.parse_url(url)
    if details and hasattr(drv, "check_details"):
        drv.check_details(parsed["pool_type"], details)
    url = parsed.pop("url", url)          # a driver keeps secrets out of the stored URL (RBD: in `secret`)
    pool = StoragePool(name=name, provider=drv.name, scope=scope, zone_id=zone.id, url=url, managed=bool(managed),
                       tags=_tags(tags), is_tag_a_rule=bool(istagarule), capacity_iops=capacityiops,
                       details=details or {}, **parsed)
    if capacitybytes is not None:
        if capacitybytes <= 0:
            raise InvalidParameter("capacitybytes must be a positive number of bytes")
        pool.capacity_bytes = capacitybytes
    if scope == "ZONE":
        hv = infra.hypervisor_name(hypervisor) if hypervisor and hypervisor.lower() != "any" else "Any"
        if hypervisor is None:
            raise InvalidParameter("A zone-wide storage pool needs hypervisor: KVM, Simulator or Any")
        pool.hypervisor = hv
    elif scope == "CLUSTER":
        if not clusterid or not podid:
            raise InvalidParameter("A cluster-wide storage pool needs podid and clusterid")
        cl, pod = infra.get_cluster(s, clusterid), infra.get_pod(s, podid)
        if cl.pod_id != pod.id or pod.zone_id != zone.id:
            raise InvalidParameter(f"Cluster {cl.name} is not in pod {pod.name} of zone {zone.name}")
        pool.pod_id, pool.cluster_id, pool.hypervisor = pod.id, cl.id, cl.hypervisor
    else:
        if not hostid:
            raise InvalidParameter("A host-scope storage pool needs hostid")
        host = infra.get_host(s, hostid)
        if host.zone_id != zone.id:
            raise InvalidParameter(f"Host {host.name} is not in zone {zone.name}")
        pool.pod_id, pool.cluster_id, pool.host_id, pool.hypervisor = host.pod_id, host.cluster_id, host.id, host.hypervisor
    if parsed["pool_type"] == "Filesystem" and scope != "HOST":
        raise InvalidParameter("A local (file://) pool belongs to one host: use scope=host with hostid")
    for cap, have in (("scopes", scope), ("hypervisors", pool.hypervisor)):   # declared limits of the driver
        allowed = drv.CAPABILITIES.get(cap)
        if allowed and have not in allowed.split(","):
            raise InvalidParameter(f"{parsed['pool_type']} pools need {cap[:-1]} {' or '.join(allowed.split(','))}, "
                                   f"not {have}")
    dup = select(StoragePool).where(StoragePool.state != "Removed", func.lower(StoragePool.name) == name.lower(),
                                    StoragePool.zone_id == zone.id)
    if s.scalar(dup):
        raise InvalidParameter(f"A storage pool named {name} already exists in zone {zone.name}")
    if parsed["pool_type"] == "NetworkFilesystem":
        same = select(StoragePool).where(StoragePool.state != "Removed", StoragePool.host_address == pool.host_address,
                                         StoragePool.path == pool.path)
        if s.scalar(same):
            raise InvalidParameter(f"Storage pool {url} already in use by another pool")
    s.add(pool)
    s.flush()
    _attach_hosts(s, drv, pool)
    POOL.fire(s, pool, "Attach")
    events.record(s, ctx, "STORAGE.POOL.CREATE", f"Storage pool {name} ({pool.url}) created", resource_type="StoragePool",
                  resource_uuid=pool.uuid)
    return pool


def _attach_hosts(s, drv, pool) -> None:
    """Connect the pool on every host in scope; refuse it when no host can reach it."""
    hosts = hosts_in_scope(s, pool)
    if not hosts:
        raise ResourceUnavailable(f"Failed to add data store: no Up host in the {pool.scope.lower()} scope to "
                                  "connect the pool on; add a host first")
    failures, stats = [], None
    for host in hosts:
        try:
            st = drv.connect(channel(host), pool)
        except CloudError as exc:
            failures.append(f"{host.name}: {exc.text}")
            continue
        stats = stats or st
        s.add(StoragePoolHost(pool_id=pool.id, host_id=host.id))
    if stats is None:
        raise ResourceUnavailable("Failed to add data store: no host could reach it (" + "; ".join(failures) + ")")
    if failures:
        log.warning("pool %s not reachable from some hosts: %s", pool.name, "; ".join(failures))
    _apply_stats(pool, stats)


def _apply_stats(pool, stats: dict) -> None:
    if not pool.capacity_bytes or pool.capacity_bytes > stats.get("capacity", pool.capacity_bytes):
        pool.capacity_bytes = stats.get("capacity", pool.capacity_bytes)
    pool.used_bytes = stats.get("used", pool.used_bytes)
    pool.stats_updated = utcnow()


def list_pools(s, ctx, q: ListQuery, *, id=None, name=None, zoneid=None, podid=None, clusterid=None, hostid=None,
               scope=None, status=None, path=None, ipaddress=None):
    require_root_admin(ctx)
    stmt = select(StoragePool).where(StoragePool.state != "Removed").order_by(StoragePool.id)
    if id:
        stmt = stmt.where(StoragePool.uuid == id)
    if name:
        stmt = stmt.where(func.lower(StoragePool.name) == name.lower())
    for col, uuid, getter in ((StoragePool.zone_id, zoneid, infra.get_zone), (StoragePool.pod_id, podid, infra.get_pod),
                              (StoragePool.cluster_id, clusterid, infra.get_cluster)):
        if uuid:
            stmt = stmt.where(col == getter(s, uuid).id)
    if hostid:
        stmt = stmt.where(StoragePool.id.in_(select(StoragePoolHost.pool_id).where(
            StoragePoolHost.host_id == infra.get_host(s, hostid).id)))
    if scope:
        stmt = stmt.where(StoragePool.scope == scope.upper())
    if status:
        stmt = stmt.where(func.lower(StoragePool.state) == status.lower())
    if path:
        stmt = stmt.where(StoragePool.path == path)
    if ipaddress:
        stmt = stmt.where(StoragePool.host_address == ipaddress)
    stmt = stmt.where(*keyword_filter(q, StoragePool.name))
    return paginate(s, stmt, q)


def update_pool(s, ctx, id, *, name=None, tags=None, istagarule=None, capacitybytes=None, capacityiops=None,
                enabled=None, details=None) -> StoragePool:
    require_root_admin(ctx)
    pool = get_pool(s, id)
    if name and name != pool.name:
        if s.scalar(select(StoragePool).where(StoragePool.state != "Removed", StoragePool.zone_id == pool.zone_id,
                                              func.lower(StoragePool.name) == name.lower())):
            raise InvalidParameter(f"A storage pool named {name} already exists in this zone")
        pool.name = name
    if tags is not None:
        pool.tags = _tags(tags)
    if istagarule is not None:
        pool.is_tag_a_rule = istagarule
    if capacitybytes is not None:
        if capacitybytes <= 0:
            raise InvalidParameter("capacitybytes must be a positive number of bytes")
        if capacitybytes < pool.used_bytes:
            raise InvalidParameter(f"capacitybytes {capacitybytes} is below what the pool already uses ({pool.used_bytes})")
        pool.capacity_bytes = capacitybytes
    if capacityiops is not None:
        pool.capacity_iops = capacityiops
    if details:
        merged = {**(pool.details or {}), **{k: v for d in details.values() for k, v in d.items()}}
        drv = driver_for(pool.provider)
        if hasattr(drv, "check_details"):
            drv.check_details(pool.pool_type, merged)
        pool.details = merged
    if enabled is not None:
        if pool.state not in ("Up", "Disabled"):
            raise InvalidParameter(f"Storage pool {pool.name} is {pool.state}; only Up or Disabled pools can be "
                                   "enabled or disabled")
        POOL.fire(s, pool, "Enable" if enabled else "Disable")
    events.record(s, ctx, "STORAGE.POOL.UPDATE", f"Storage pool {pool.name} updated", resource_type="StoragePool",
                  resource_uuid=pool.uuid)
    return pool


def live_volumes(s, pool):
    return list(s.scalars(select(Volume).where(Volume.pool_id == pool.id, Volume.removed.is_(None),
                                               Volume.state != "Expunged")))


def delete_pool(s, ctx, id, forced=False) -> None:
    require_root_admin(ctx)
    pool = get_pool(s, id)
    vols = live_volumes(s, pool)
    busy = [v for v in vols if v.state != "Destroy"]
    if busy:
        raise ResourceInUse(f"Cannot delete storage pool {pool.name}: {len(busy)} volume(s) still live there "
                            f"({', '.join(v.name for v in busy[:5])}{'…' if len(busy) > 5 else ''}); "
                            "migrate or delete them first")
    if vols and not forced:
        raise ResourceInUse(f"Cannot delete storage pool {pool.name}: {len(vols)} destroyed volume(s) are waiting "
                            "to be expunged there; pass forced=true to expunge them now")
    if pool.state not in ("Maintenance", "Disabled", "Up") and pool.state != "ErrorInMaintenance":
        raise InvalidParameter(f"Storage pool {pool.name} is {pool.state}; wait for its operation to finish")
    drv = driver_for(pool.provider)
    for host in hosts_in_scope(s, pool):
        for v in vols:
            try:
                drv.delete_volume(channel(host), pool, v)
            except CloudError:
                pass
        try:
            drv.disconnect(channel(host), pool)
        except CloudError as exc:
            log.warning("disconnecting pool %s from %s: %s", pool.name, host.name, exc.text)
        if vols:
            break
    for v in vols:
        v.state, v.removed = "Expunged", utcnow()
    s.query(StoragePoolHost).filter(StoragePoolHost.pool_id == pool.id).delete()
    pool.state = "Removed"
    events.record(s, ctx, "STORAGE.POOL.DELETE", f"Storage pool {pool.name} deleted", resource_type="StoragePool",
                  resource_uuid=pool.uuid)


def allocated_bytes(s, pool) -> int:
    """The pool's allocated bytes, maintained with every change (db/counters.py): one primary-key read."""
    return counters.get(s, "pool", pool.id, "allocated")


def allocated_many(s, pool_ids) -> dict:
    """{pool id: allocated bytes} for a page of pools in one query."""
    return {pid: c.get("allocated", 0) for pid, c in counters.get_many(s, "pool", pool_ids).items()}


def recount_allocated(s, pool) -> int:
    """Σ sizes of the pool's volumes, plus what other subsystems keep there (cached template copies), from the
    rows themselves; stored as the pool's count (updateResourceCount). Returns the new value."""
    volumes = aggregate.total(s, Volume.size, Volume.pool_id == pool.id, Volume.removed.is_(None),
                              Volume.state.notin_(("Expunged", "Allocated")))
    value = volumes + sum(extra(s, pool) for extra in allocated_extras)
    counters.set_count(s, "pool", pool.id, "allocated", value)
    return value


def recount_all(s) -> None:
    for pool in s.scalars(select(StoragePool).where(StoragePool.state != "Removed")):
        recount_allocated(s, pool)


def _allocated(s, v):
    if v["pool_id"] is not None and v["removed"] is None and v["state"] not in ("Expunged", "Allocated"):
        yield "pool", v["pool_id"], "allocated", v["size"]


counters.counted(Volume, ("pool_id", "state", "removed", "size"), _allocated)


# extra(s, pool) -> bytes allocated on the pool outside volumes (CloudStack counts template copies).
allocated_extras: list = []


def enable_maintenance(s, ctx, id) -> StoragePool:
    require_root_admin(ctx)
    pool = get_pool(s, id)
    POOL.fire(s, pool, "PrepareMaintenance")
    try:
        for hook in maintenance_hooks:
            hook(s, ctx, pool)
    except CloudError as exc:
        POOL.fire(s, pool, "MaintenanceFailed")
        events.record(s, ctx, "MAINT.PREPARE.PS", f"Storage pool {pool.name} failed to enter maintenance: {exc.text}",
                      level="ERROR", resource_type="StoragePool", resource_uuid=pool.uuid)
        return pool
    POOL.fire(s, pool, "MaintenanceReached")
    events.record(s, ctx, "MAINT.PREPARE.PS", f"Storage pool {pool.name} is in maintenance", resource_type="StoragePool",
                  resource_uuid=pool.uuid)
    return pool


def cancel_maintenance(s, ctx, id) -> StoragePool:
    require_root_admin(ctx)
    pool = get_pool(s, id)
    POOL.fire(s, pool, "CancelMaintenance")
    POOL.fire(s, pool, "MaintenanceCancelled")
    for hook in cancel_maintenance_hooks:      # restart the guests maintenance stopped, on an Up pool
        hook(s, ctx, pool)
    events.record(s, ctx, "MAINT.CANCEL.PS", f"Storage pool {pool.name} left maintenance", resource_type="StoragePool",
                  resource_uuid=pool.uuid)
    return pool


def refresh_stats(s, pool) -> StoragePool:
    """Ask a host in scope for the pool's capacity and usage (syncStoragePool, the stats task)."""
    drv = driver_for(pool.provider)
    errors = []
    for host in hosts_in_scope(s, pool):
        try:
            _apply_stats(pool, drv.stats(channel(host), pool))
            return pool
        except CloudError as exc:
            errors.append(f"{host.name}: {exc.text}")
    raise ResourceUnavailable(f"No host could report statistics of storage pool {pool.name}"
                              + (": " + "; ".join(errors) if errors else ": no Up host in scope"))


def list_objects(s, ctx, id, path: str | None):
    """Files under path in the pool, each with the volstack volume it belongs to (if any)."""
    require_root_admin(ctx)
    pool = get_pool(s, id)
    rel = browse_path(path, pool.path)
    hosts = hosts_in_scope(s, pool)
    if not hosts:
        raise ResourceUnavailable(f"No Up host can browse storage pool {pool.name}")
    entries = driver_for(pool.provider).list_objects(channel(hosts[0]), pool, rel)
    owners = {v.path: ("volume", v.uuid, v.name)
              for v in s.scalars(select(Volume).where(Volume.pool_id == pool.id, Volume.removed.is_(None)))}
    for source in object_owners:
        owners.update(source(s, pool))
    return [datastore_object(e, owners.get(e["name"]) if not rel else None) for e in entries]


def browse_path(path: str | None, root: str | None = None) -> str:
    """A browser path as CloudStack reads it: `/` is the root of the pool or store and every path lies under it
    (`..` cannot climb out). A path that repeats the pool's own export path (root) is taken from there. Returns
    the path relative to the root, "" for the root itself."""
    path = path or "/"
    if root and root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):] or "/"
    return normpath("/" + path).lstrip("/")


# source(s, pool) -> {file name: (kind, uuid, name)} for files other subsystems keep on pools (cached templates).
object_owners: list = []


def datastore_object(entry: dict, owner: tuple | None) -> dict:
    """A listed file as listStoragePoolObjects / listImageStoreObjects show it, with the object it belongs to."""
    row = {k: entry.get(k) for k in ("name", "isdirectory", "size", "lastupdated")}
    row["format"] = (entry.get("format") or "").upper() or None
    if owner:
        kind, uuid, name = owner
        row[f"{kind}id"], row[f"{kind}name"] = uuid, name
    return row


def _zone_has_pools(s, zone: Zone) -> None:
    n = aggregate.count(s, StoragePool, StoragePool.zone_id == zone.id, StoragePool.state != "Removed")
    if n:
        raise ResourceInUse(f"The zone {zone.name} is not deletable because it has {n} storage pool(s); delete them first")


infra.zone_in_use_checks.append(_zone_has_pools)



def storage_tags(s, ctx, keyword=None) -> list[dict]:
    """listStorageTags: every tag of every pool, one entry per pool and tag (a tag rule is one entry: the rule)."""
    require_root_admin(ctx)
    out = []
    for pool in s.scalars(select(StoragePool).where(StoragePool.state != "Removed").order_by(StoragePool.id)):
        names = [pool.tags] if pool.is_tag_a_rule else [t.strip() for t in (pool.tags or "").split(",") if t.strip()]
        out += [{"id": str(uuid.uuid5(uuid.UUID(pool.uuid), name)), "name": name, "poolid": pool.uuid}
                for name in names if name and (not keyword or keyword.lower() in name.lower())]
    return out
