"""Service offerings (compute offerings): CPU, memory, volatility, host tags, and the storage side of the
root disk held in a disk offering.

Unless `diskofferingid` links an existing disk offering, createServiceOffering creates its own
*compute-only* disk offering (hidden from listDiskOfferings) holding the root disk size, storage tags,
QoS and the other storage fields; the parsing and validation of those fields is shared with disk
offerings in services/offerings.py.
"""
from sqlalchemy import func, select

from volstack.db.models import utcnow
from volstack.db.storage_models import DiskOffering, ServiceOffering
from volstack.errors import InvalidParameter
from volstack.services import events
from volstack.services.context import require_root_admin
from volstack.services.listing import ListQuery, keyword_filter, paginate
from volstack.services.offerings import (GIB, _check_size_gb, _domains, _find_service, _join, _set_tags, _state,
                                         _state_filter, _storage_columns, _storage_type, _update_list, _visible_ids,
                                         _zones, clean_tags, usable_in)

# Storage parameters of createServiceOffering that a linked disk offering (diskofferingid) defines.
_STORAGE_PARAMS = ("rootdisksize", "tags", "storagetype", "provisioningtype", "cachemode", "customizediops",
                   "miniops", "maxiops", "hypervisorsnapshotreserve", "encryptroot")


def create_service_offering(s, ctx, *, name, displaytext=None, cpunumber=None, cpuspeed=None, memory=None,
                            customized=None, isvolatile=None, hosttags=None, domainids=None, zoneids=None,
                            diskofferingid=None, diskofferingstrictness=None, issystem=None, rootdisksize=None,
                            tags=None, storagetype=None, provisioningtype=None, cachemode=None, rates=None,
                            customizediops=None, miniops=None, maxiops=None, hypervisorsnapshotreserve=None,
                            encryptroot=None) -> ServiceOffering:
    require_root_admin(ctx)
    if not name or not name.strip():
        raise InvalidParameter("Failed to create service offering: specify the name that has non-zero length")
    if issystem:
        raise InvalidParameter("System VM offerings are not supported: volstack has no system VMs")
    customized = bool(customized)
    fail = f"Failed to create service offering {name}: specify the"
    if customized and (cpunumber is not None or memory is not None):
        raise InvalidParameter("For creating a custom compute offering cpu and memory all should be null")
    if cpunumber is not None and cpunumber <= 0:
        raise InvalidParameter(f"{fail} cpu number value between 1 and {2 ** 31 - 1}")
    if (cpuspeed is None and not customized) or (cpuspeed is not None and cpuspeed < 0):
        raise InvalidParameter(f"{fail} cpu speed value between 0 and {2 ** 31 - 1}")
    if memory is not None and memory < 32:
        raise InvalidParameter(f"{fail} memory value between 32 and {2 ** 31 - 1} MB")
    what = "create service offering"
    storage_args = {"rootdisksize": rootdisksize, "tags": tags, "storagetype": storagetype,
                    "provisioningtype": provisioningtype, "cachemode": cachemode, "customizediops": customizediops,
                    "miniops": miniops, "maxiops": maxiops, "hypervisorsnapshotreserve": hypervisorsnapshotreserve,
                    "encryptroot": encryptroot}
    if diskofferingid:
        given = [p for p in _STORAGE_PARAMS if storage_args[p] not in (None, "")]
        given += [p for p, v in (rates or {}).items() if v not in (None, 0)]
        if given:
            raise InvalidParameter(f"{', '.join(given)} cannot be given with diskofferingid: the linked disk "
                                   "offering defines the storage side of the service offering")
        do = s.scalar(select(DiskOffering).where(DiskOffering.uuid == diskofferingid))
        if do is None or do.removed is not None or do.compute_only or do.state != "Active":
            raise InvalidParameter("Please specify a valid disk offering.")
        root_bytes = do.disk_size
    else:
        if rootdisksize is not None:
            if rootdisksize <= 0:
                raise InvalidParameter(f"The Root disk size is of {rootdisksize} GB but it must be greater than 0.")
            _check_size_gb(s, rootdisksize)
        root_bytes = (rootdisksize or 0) * GIB
        columns = _storage_columns(s, provisioningtype=provisioningtype, storagetype=storagetype, cachemode=cachemode,
                                   tags=tags, rates=rates, customizediops=customizediops, miniops=miniops,
                                   maxiops=maxiops, hypervisorsnapshotreserve=hypervisorsnapshotreserve,
                                   encrypt=encryptroot)
    domains, zones = _join(_domains(s, domainids, what)), _join(_zones(s, zoneids, what))
    if not diskofferingid:
        do = DiskOffering(name=name, display_text=displaytext or name, disk_size=root_bytes, customized=False,
                          compute_only=True, state="Active", domain_ids=domains, zone_ids=zones, details={},
                          **columns)
        s.add(do)
        s.flush()
    so = ServiceOffering(name=name, display_text=displaytext or name, cpu=cpunumber, speed=cpuspeed, ram_size=memory,
                         customized=customized, root_disk_size=root_bytes, is_volatile=bool(isvolatile),
                         host_tags=clean_tags(hosttags), disk_offering_id=do.id,
                         disk_offering_strictness=bool(diskofferingstrictness), state="Active",
                         domain_ids=domains, zone_ids=zones)
    s.add(so)
    s.flush()
    events.record(s, ctx, "SERVICE.OFFERING.CREATE", f"Service offering {name} created",
                  resource_type="ServiceOffering", resource_uuid=so.uuid)
    return so


def list_service_offerings(s, ctx, q: ListQuery, *, id=None, name=None, zoneid=None, state=None, storagetype=None,
                           encryptroot=None, issystem=None, systemvmtype=None):
    if issystem or systemvmtype:
        return [], 0            # volstack has no system VM offerings
    stmt = select(ServiceOffering).where(ServiceOffering.removed.is_(None), *_state_filter(ServiceOffering, state, ctx))
    if id:
        stmt = stmt.where(ServiceOffering.uuid == id)
    if name:
        stmt = stmt.where(func.lower(ServiceOffering.name) == name.lower())
    if storagetype or encryptroot is not None:
        sub = select(DiskOffering.id)
        if storagetype:
            sub = sub.where(DiskOffering.storage_type == _storage_type(storagetype))
        if encryptroot is not None:
            sub = sub.where(DiskOffering.encrypt.is_(encryptroot))
        stmt = stmt.where(ServiceOffering.disk_offering_id.in_(sub))
    stmt = stmt.where(*keyword_filter(q, ServiceOffering.name, ServiceOffering.display_text))
    rows = list(s.scalars(stmt))
    rows = usable_in(s, rows, zoneid)
    ids = _visible_ids(s, ctx, rows, q)
    return paginate(s, select(ServiceOffering).where(ServiceOffering.id.in_(ids)).order_by(ServiceOffering.id), q)


def update_service_offering(s, ctx, id, *, name=None, displaytext=None, domainid=None, zoneid=None,
                            storagetags=None, hosttags=None, state=None) -> ServiceOffering:
    require_root_admin(ctx)
    so = _find_service(s, id)
    do = s.get(DiskOffering, so.disk_offering_id)
    own = do is not None and do.compute_only
    what = "update service offering"
    if name is not None:
        if not name.strip():
            raise InvalidParameter("The name of a service offering cannot be empty")
        so.name = name
        if own:
            do.name = name
    if displaytext is not None:
        so.display_text = displaytext
        if own:
            do.display_text = displaytext
    domains, zones = _update_list(domainid, "public"), _update_list(zoneid, "all")
    if domains is not None:
        so.domain_ids = _join(_domains(s, domains, what))
        if own:
            do.domain_ids = so.domain_ids
    if zones is not None:
        so.zone_ids = _join(_zones(s, zones, what))
        if own:
            do.zone_ids = so.zone_ids
    if storagetags is not None:
        if not own:
            raise InvalidParameter(f"The storage tags of service offering {so.name} come from disk offering "
                                   f"{do.name}: update that disk offering instead")
        _set_tags(s, do, storagetags)
    if hosttags is not None:
        so.host_tags = clean_tags(hosttags)
    if state is not None:
        so.state = _state(state)
        if own:
            do.state = so.state
    events.record(s, ctx, "SERVICE.OFFERING.EDIT", f"Service offering {so.name} updated",
                  resource_type="ServiceOffering", resource_uuid=so.uuid)
    return so


def delete_service_offering(s, ctx, id) -> None:
    require_root_admin(ctx)
    so = _find_service(s, id)
    now = utcnow()
    do = s.get(DiskOffering, so.disk_offering_id)
    if do is not None and do.compute_only:
        do.state, do.removed = "Inactive", now
    so.state, so.removed = "Inactive", now
    events.record(s, ctx, "SERVICE.OFFERING.DELETE", f"Service offering {so.name} deleted",
                  resource_type="ServiceOffering", resource_uuid=so.uuid)
