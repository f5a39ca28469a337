"""Disk offerings and service offerings (CloudStack 4.17+: a service offering's storage side is a disk offering)."""
from volstack.api.commands.common import list_query, lst, obj
from volstack.api.registry import (API, BOOLEAN, INTEGER, LIST, LONG, MAP, OWNER_LIST_PARAMS, ROOT, STRING, USER, UUID,
                                   Field as F, Param as P, Success, View)
from volstack.api.views import _a, _date
from volstack.db import models as m
from volstack.db.storage_models import DiskOffering
from volstack.services import offerings as svc
from volstack.services import service_offerings

GIB = svc.GIB

# ---------------------------------------------------------------- the hypervisor QoS rates

_RATE_TEXT = {
    "bytesreadrate": "bytes read rate of the disk offering",
    "bytesreadratemax": "burst bytes read rate of the disk offering",
    "byteswriterate": "bytes write rate of the disk offering",
    "byteswriteratemax": "burst bytes write rate of the disk offering",
    "iopsreadrate": "io requests read rate of the disk offering",
    "iopsreadratemax": "burst requests read rate of the disk offering",
    "iopswriterate": "io requests write rate of the disk offering",
    "iopswriteratemax": "burst io requests write rate of the disk offering",
}
# parameter -> the response field CloudStack names it (camelCase, as DiskOfferingResponse does)
RATE_FIELDS = {f"{kind}{op}rate{suffix}": f"disk{kind.capitalize()}{op.capitalize()}Rate{field_suffix}"
               for kind in ("bytes", "iops") for op in ("read", "write")
               for suffix, field_suffix in (("", ""), ("max", "Max"), ("maxlength", "MaxLength"))}
assert set(RATE_FIELDS) == set(svc.RATES) and RATE_FIELDS["iopswriteratemaxlength"] == "diskIopsWriteRateMaxLength"


def _rate_params(since=None):
    return [P(p, LONG, _RATE_TEXT.get(p, "length (in seconds) of the burst"), since=since) for p in svc.RATES]


def _rates(p) -> dict:
    return {name: p.get(name) for name in svc.RATES}


def _details(p) -> dict:
    return {k: v for d in (p.details or {}).values() for k, v in d.items()}


# ---------------------------------------------------------------- views

def _ids_field(model, attr, field):
    def get(r, lk):
        vals = [lk.attr(model, i, field) for i in svc._ids(getattr(r, attr))]
        return ",".join(v for v in vals if v) or None
    return get


def _gb(attr):
    return lambda r, lk: getattr(r, attr) // GIB if getattr(r, attr) is not None else None


def _storage_fields(do) -> list[F]:
    """Fields read from the disk offering that holds the storage side (do(r, lk) -> DiskOffering)."""
    def via(attr):
        return lambda r, lk: getattr(do(r, lk), attr, None)
    return [
        F("storagetype", "the storage type for this offering: shared or local", via("storage_type")),
        F("provisioningtype", "provisioning type used to create volumes. Valid values are thin, sparse, fat.",
          via("provisioning_type")),
        F("iscustomizediops", "true if the offering uses custom iops, false otherwise", via("customized_iops"), "boolean"),
        F("miniops", "the min iops of the offering", via("min_iops"), "long"),
        F("maxiops", "the max iops of the offering", via("max_iops"), "long"),
        F("hypervisorsnapshotreserve", "Hypervisor snapshot reserve space as a percent of a volume (for managed storage using Xen or VMware)",
          via("hv_snapshot_reserve"), "integer"),
        *[F(RATE_FIELDS[p], _RATE_TEXT.get(p, "length (in seconds) of the burst"), via(col), "long")
          for p, (col, _) in svc.RATES.items()],
        F("cacheMode", "the cache mode to use for this offering. none, writeback, writethrough or hypervisor_default",
          via("cache_mode")),
    ]


def _self(r, lk):
    return r


DISK_OFFERING = View("diskoffering", [
    F("id", "unique ID of the disk offering", _a("uuid")),
    F("name", "the name of the disk offering", _a("name")),
    F("displaytext", "an alternate display text of the disk offering.", _a("display_text")),
    F("disksize", "the size of the disk offering in GB", _gb("disk_size"), "long"),
    F("iscustomized", "true if disk offering uses custom size, false otherwise", _a("customized"), "boolean"),
    F("mindisksize", "volstack: the smallest size in GB of a volume of this customized offering", _a("min_size_gb"), "long"),
    F("maxdisksize", "volstack: the largest size in GB of a volume of this customized offering", _a("max_size_gb"), "long"),
    F("tags", "the tags for the disk offering", _a("tags")),
    *_storage_fields(_self),
    F("encrypt", "Whether disks using this offering will be encrypted on primary storage", _a("encrypt"), "boolean"),
    F("disksizestrictness", "To allow or disallow the resize operation on the disks created from this disk offering, if the flag is true then resize is not allowed",
      _a("disk_size_strictness"), "boolean"),
    F("displayoffering", "whether to display the offering to the end user or not.", _a("display_offering"), "boolean"),
    F("domainid", "the domain ID(s) this disk offering belongs to; absent for public offerings",
      _ids_field(m.Domain, "domain_ids", "uuid")),
    F("domain", "the domain name(s) this disk offering belongs to", _ids_field(m.Domain, "domain_ids", "name")),
    F("zoneid", "the zone ID(s) this disk offering belongs to; absent when offered in every zone",
      _ids_field(m.Zone, "zone_ids", "uuid")),
    F("zone", "the zone name(s) this disk offering belongs to", _ids_field(m.Zone, "zone_ids", "name")),
    F("state", "state of the disk offering: Active or Inactive", _a("state")),
    F("details", "additional key/value details tied with this disk offering", lambda r, lk: r.details or None, "map"),
    F("created", "the date this disk offering was created", _date("created"), "date"),
])


def _do(r, lk):
    return lk.get(DiskOffering, r.disk_offering_id)


SERVICE_OFFERING = View("serviceoffering", [
    F("id", "the id of the service offering", _a("uuid")),
    F("name", "the name of the service offering", _a("name")),
    F("displaytext", "an alternate display text of the service offering.", _a("display_text")),
    F("cpunumber", "the number of CPU", _a("cpu"), "integer"),
    F("cpuspeed", "the clock rate CPU speed in Mhz", _a("speed"), "integer"),
    F("memory", "the memory in MB", _a("ram_size"), "integer"),
    F("iscustomized", "is true if the offering is customized", _a("customized"), "boolean"),
    F("issystem", "is this a system vm offering", lambda r, lk: False, "boolean"),
    F("isvolatile", "true if the vm needs to be volatile, i.e., on every reboot of vm from API root disk is discarded and creates a new root disk",
      _a("is_volatile"), "boolean"),
    F("rootdisksize", "Root disk size in GB", lambda r, lk: (_do(r, lk).disk_size // GIB) if _do(r, lk) else None, "long"),
    F("storagetags", "the storage tags for the service offering", lambda r, lk: getattr(_do(r, lk), "tags", None)),
    F("hosttags", "the host tag for the service offering", _a("host_tags")),
    *_storage_fields(_do),
    F("encryptroot", "true if virtual machine root disk will be encrypted on storage",
      lambda r, lk: getattr(_do(r, lk), "encrypt", None), "boolean"),
    F("diskofferingid", "the ID of the disk offering to which service offering is linked", lambda r, lk: getattr(_do(r, lk), "uuid", None)),
    F("diskofferingname", "name of the disk offering", lambda r, lk: getattr(_do(r, lk), "name", None)),
    F("diskofferingdisplaytext", "the display text of the disk offering", lambda r, lk: getattr(_do(r, lk), "display_text", None)),
    F("diskofferingstrictness", "True/False to indicate the strictness of the disk offering association with the compute offering. When set to true, override of disk offering is not allowed when VM is deployed and change disk offering is not allowed for the ROOT disk after the VM is deployed",
      _a("disk_offering_strictness"), "boolean"),
    F("domainid", "the domain ID(s) this service offering belongs to; absent for public offerings",
      _ids_field(m.Domain, "domain_ids", "uuid")),
    F("domain", "the domain name(s) this service offering belongs to", _ids_field(m.Domain, "domain_ids", "name")),
    F("zoneid", "the zone ID(s) this service offering belongs to; absent when offered in every zone",
      _ids_field(m.Zone, "zone_ids", "uuid")),
    F("zone", "the zone name(s) this service offering belongs to", _ids_field(m.Zone, "zone_ids", "name")),
    F("state", "state of the service offering: Active or Inactive", _a("state")),
    F("created", "the date this service offering was created", _date("created"), "date"),
])

# ---------------------------------------------------------------- disk offerings

STORAGE_TYPE = "the storage type of the {}. Values are local and shared."
PROVISIONING = "provisioning type used to create volumes. Valid values are thin, sparse, fat."
CACHE_MODE = "the cache mode to use for this {}: none, writeback, writethrough or hypervisor_default"
HV_RESERVE = "Hypervisor snapshot reserve space as a percent of a volume (for managed storage using Xen or VMware)"


@API.command("createDiskOffering", "Creates a disk offering.", [
    P("name", STRING, "name of the disk offering", required=True),
    P("displaytext", STRING, "An alternate display text of the disk offering, defaults to 'name'.", length=4096),
    P("disksize", LONG, "size of the disk offering in GB (1GB = 1,073,741,824 bytes)"),
    P("customized", BOOLEAN, "whether disk offering size is custom or not"),
    P("mindisksize", INTEGER, "volstack: with customized, the smallest size in GB a volume may have (default: custom.diskoffering.size.min)"),
    P("maxdisksize", INTEGER, "volstack: with customized, the largest size in GB a volume may have (default: custom.diskoffering.size.max)"),
    P("tags", STRING, "tags for the disk offering", length=4096),
    P("domainid", LIST, "the ID of the containing domain(s), null for public offerings", entity="Domain"),
    P("zoneid", LIST, "the ID of the containing zone(s), null for public offerings", entity="Zone", since="4.13"),
    P("storagetype", STRING, STORAGE_TYPE.format("disk offering")),
    P("provisioningtype", STRING, PROVISIONING),
    P("displayoffering", BOOLEAN, "an optional field, whether to display the offering to the end user or not."),
    *_rate_params(),
    P("customizediops", BOOLEAN, "whether disk offering iops is custom or not"),
    P("miniops", LONG, "min iops of the disk offering"),
    P("maxiops", LONG, "max iops of the disk offering"),
    P("hypervisorsnapshotreserve", INTEGER, HV_RESERVE),
    P("cachemode", STRING, CACHE_MODE.format("disk offering"), since="4.14"),
    P("disksizestrictness", BOOLEAN, "To allow or disallow the resize operation on the disks created from this disk offering, if the flag is true then resize is not allowed", since="4.16"),
    P("encrypt", BOOLEAN, "Volumes using this offering should be encrypted: LUKS through QEMU with a random "
      "passphrase per volume, on file, NFS and (unlike CloudStack) RBD pools; pools whose driver cannot encrypt "
      "are never chosen", since="4.18"),
    P("details", MAP, "details to specify disk offering parameters", since="4.16"),
], view=DISK_OFFERING)
def create_disk_offering(req, p):
    do = svc.create_disk_offering(
        req.s, req.ctx, name=p.name, displaytext=p.displaytext, disksize=p.disksize, customized=p.customized,
        mindisksize=p.mindisksize, maxdisksize=p.maxdisksize, tags=p.tags, storagetype=p.storagetype,
        provisioningtype=p.provisioningtype, cachemode=p.cachemode, rates=_rates(p), customizediops=p.customizediops,
        miniops=p.miniops, maxiops=p.maxiops, hypervisorsnapshotreserve=p.hypervisorsnapshotreserve,
        encrypt=p.encrypt, disksizestrictness=p.disksizestrictness, displayoffering=p.displayoffering,
        domainids=p.domainid, zoneids=p.zoneid, details=_details(p))
    return obj(req, DISK_OFFERING, do)


STATE_FILTER = ("Filter by state of the {}. Defaults to 'Active'. If set to 'all' shows both Active & Inactive "
                "offerings (deleted ones are never listed).")


@API.command("listDiskOfferings", "Lists all available disk offerings.", [
    P("id", UUID, "ID of the disk offering", entity="DiskOffering"),
    P("name", STRING, "name of the disk offering"),
    P("zoneid", UUID, "id of zone disk offering is associated with", entity="Zone", since="4.13"),
    P("storageid", UUID, "The ID of the storage pool, tags of the storage pool are used to filter the offerings", entity="StoragePool", since="4.17", access=ROOT),
    P("encrypt", BOOLEAN, "listed offerings support disk encryption", since="4.18"),
    P("storagetype", STRING, "the storage type of the disk offering: shared or local", since="4.19"),
    P("state", STRING, STATE_FILTER.format("disk offering"), since="4.19"),
    *OWNER_LIST_PARAMS,
], view=DISK_OFFERING, is_list=True, access=USER)
def list_disk_offerings(req, p):
    return lst(req, DISK_OFFERING, svc.list_disk_offerings(
        req.s, req.ctx, list_query(req, p), id=p.id, name=p.name, zoneid=p.zoneid, state=p.state,
        storagetype=p.storagetype, encrypt=p.encrypt, storageid=p.storageid))


@API.command("updateDiskOffering", "Updates a disk offering.", [
    P("id", UUID, "ID of the disk offering", required=True, entity="DiskOffering"),
    P("name", STRING, "updates name of the disk offering with this value"),
    P("displaytext", STRING, "updates alternate display text of the disk offering with this value", length=4096),
    P("displayoffering", BOOLEAN, "an optional field, whether to display the offering to the end user or not."),
    P("domainid", STRING, "the ID of the containing domain(s) as comma separated string, public for public offerings", length=4096, since="4.13"),
    P("zoneid", STRING, "the ID of the containing zone(s) as comma separated string, all for all zones offerings", length=4096, since="4.13"),
    P("tags", STRING, "comma-separated list of tags for the disk offering, tags should match with existing storage pool tags", length=4096, since="4.15"),
    *_rate_params(since="4.15"),
    P("cachemode", STRING, CACHE_MODE.format("disk offering"), since="4.15"),
    P("state", STRING, "state of the disk offering: Active or Inactive", since="4.19"),
], view=DISK_OFFERING)
def update_disk_offering(req, p):
    do = svc.update_disk_offering(req.s, req.ctx, p.id, name=p.name, displaytext=p.displaytext,
                                  displayoffering=p.displayoffering, domainid=p.domainid, zoneid=p.zoneid,
                                  tags=p.tags, rates=_rates(p), cachemode=p.cachemode, state=p.state)
    return obj(req, DISK_OFFERING, do)


@API.command("deleteDiskOffering", "Deletes a disk offering.", [
    P("id", UUID, "ID of the disk offering", required=True, entity="DiskOffering"),
], response_key="success")
def delete_disk_offering(req, p):
    svc.delete_disk_offering(req.s, req.ctx, p.id)
    return Success()


# ---------------------------------------------------------------- service offerings

@API.command("createServiceOffering", "Creates a service offering.", [
    P("name", STRING, "the name of the service offering", required=True),
    P("displaytext", STRING, "The display text of the service offering, defaults to 'name'.", length=4096),
    P("cpunumber", INTEGER, "the CPU number of the service offering"),
    P("cpuspeed", INTEGER, "the CPU speed of the service offering in MHz."),
    P("memory", INTEGER, "the total memory of the service offering in MB"),
    P("customized", BOOLEAN, "Whether service offering size is custom or not", since="4.13"),
    P("isvolatile", BOOLEAN, "true if the virtual machine needs to be volatile so that on every reboot of VM, original root disk is dettached then destroyed and a fresh root disk is created and attached to VM"),
    P("issystem", BOOLEAN, "is this a system vm offering (volstack has none: only false is accepted)"),
    P("hosttags", STRING, "the host tag for this service offering.", length=4096),
    P("domainid", LIST, "the ID of the containing domain(s), null for public offerings", entity="Domain"),
    P("zoneid", LIST, "the ID of the containing zone(s), null for public offerings", entity="Zone", since="4.13"),
    P("diskofferingid", UUID, "the ID of the disk offering to which service offering should be mapped", entity="DiskOffering", since="4.17"),
    P("diskofferingstrictness", BOOLEAN, "True/False to indicate the strictness of the disk offering association with the compute offering. When set to true, override of disk offering is not allowed when VM is deployed and change disk offering is not allowed for the ROOT disk after the VM is deployed", since="4.17"),
    P("rootdisksize", LONG, "the Root disk size in GB.", since="4.15"),
    P("tags", STRING, "the storage tags for this service offering.", length=4096),
    P("storagetype", STRING, STORAGE_TYPE.format("service offering")),
    P("provisioningtype", STRING, PROVISIONING),
    *_rate_params(),
    P("customizediops", BOOLEAN, "whether compute offering iops is custom or not", since="4.4"),
    P("miniops", LONG, "min iops of the compute offering", since="4.4"),
    P("maxiops", LONG, "max iops of the compute offering", since="4.4"),
    P("hypervisorsnapshotreserve", INTEGER, HV_RESERVE, since="4.4"),
    P("cachemode", STRING, CACHE_MODE.format("service offering's root disk"), since="4.14"),
    P("encryptroot", BOOLEAN, "VMs using this offering require root volume encryption (a ROOT volume from a "
      "template is then a full encrypted copy, never a linked clone)", since="4.18"),
], view=SERVICE_OFFERING)
def create_service_offering(req, p):
    so = service_offerings.create_service_offering(
        req.s, req.ctx, name=p.name, displaytext=p.displaytext, cpunumber=p.cpunumber, cpuspeed=p.cpuspeed,
        memory=p.memory, customized=p.customized, isvolatile=p.isvolatile, issystem=p.issystem, hosttags=p.hosttags,
        domainids=p.domainid, zoneids=p.zoneid, diskofferingid=p.diskofferingid,
        diskofferingstrictness=p.diskofferingstrictness, rootdisksize=p.rootdisksize, tags=p.tags,
        storagetype=p.storagetype, provisioningtype=p.provisioningtype, cachemode=p.cachemode, rates=_rates(p),
        customizediops=p.customizediops, miniops=p.miniops, maxiops=p.maxiops,
        hypervisorsnapshotreserve=p.hypervisorsnapshotreserve, encryptroot=p.encryptroot)
    return obj(req, SERVICE_OFFERING, so)


@API.command("listServiceOfferings", "Lists all available service offerings.", [
    P("id", UUID, "ID of the service offering", entity="ServiceOffering"),
    P("name", STRING, "name of the service offering"),
    P("zoneid", UUID, "id of zone disk offering is associated with", entity="Zone", since="4.13"),
    P("issystem", BOOLEAN, "is this a system vm offering (volstack has none)"),
    P("systemvmtype", STRING, "the system VM type. Possible types are \"consoleproxy\", \"secondarystoragevm\" or \"domainrouter\" (volstack has none)."),
    P("storagetype", STRING, "the storage type of the service offering: shared or local", since="4.19"),
    P("encryptroot", BOOLEAN, "listed offerings support root disk encryption", since="4.18"),
    P("state", STRING, STATE_FILTER.format("service offering"), since="4.19"),
    *OWNER_LIST_PARAMS,
], view=SERVICE_OFFERING, is_list=True, access=USER)
def list_service_offerings(req, p):
    return lst(req, SERVICE_OFFERING, service_offerings.list_service_offerings(
        req.s, req.ctx, list_query(req, p), id=p.id, name=p.name, zoneid=p.zoneid, state=p.state,
        storagetype=p.storagetype, encryptroot=p.encryptroot, issystem=p.issystem, systemvmtype=p.systemvmtype))


@API.command("updateServiceOffering", "Updates a service offering.", [
    P("id", UUID, "the ID of the service offering to be updated", required=True, entity="ServiceOffering"),
    P("name", STRING, "the name of the service offering to be updated"),
    P("displaytext", STRING, "the display text of the service offering to be updated", length=4096),
    P("domainid", STRING, "the ID of the containing domain(s) as comma separated string, public for public offerings", length=4096, since="4.13"),
    P("zoneid", STRING, "the ID of the containing zone(s) as comma separated string, all for all zones offerings", length=4096, since="4.13"),
    P("storagetags", STRING, "comma-separated list of tags for the service offering, tags should match with existing storage pool tags", length=4096, since="4.16"),
    P("hosttags", STRING, "comma-separated list of tags for the service offering, tags should match with existing host tags", length=4096, since="4.16"),
    P("state", STRING, "state of the service offering: Active or Inactive", since="4.19"),
], view=SERVICE_OFFERING)
def update_service_offering(req, p):
    so = service_offerings.update_service_offering(req.s, req.ctx, p.id, name=p.name, displaytext=p.displaytext,
                                     domainid=p.domainid, zoneid=p.zoneid, storagetags=p.storagetags,
                                     hosttags=p.hosttags, state=p.state)
    return obj(req, SERVICE_OFFERING, so)


@API.command("deleteServiceOffering", "Deletes a service offering.", [
    P("id", UUID, "the ID of the service offering", required=True, entity="ServiceOffering"),
], response_key="success")
def delete_service_offering(req, p):
    service_offerings.delete_service_offering(req.s, req.ctx, p.id)
    return Success()
