"""Primary storage pools."""
from volstack.api.commands.common import list_query, lst, obj, paged
from volstack.api.registry import API, BOOLEAN, LIST, LONG, MAP, STRING, UUID, Field as F, Param as P, \
    Success, View
from volstack.api.views import DATASTOREOBJECT, _a, _date, _ref
from volstack.db import models as m
from volstack.drivers import driver_for
from volstack.services import agents, pools, settings as S  # noqa: F401  (agents: KVM hosts join)
from volstack.services.catalog import register_storage_provider

register_storage_provider("primary", "DefaultPrimary")


def _factors(s, ids):
    values = S.Settings.many_in(s, [S.OVERPROVISIONING], "storagepool", ids)
    return {i: values[(S.OVERPROVISIONING.name, i)] for i in ids}


def _overprov(r, lk):
    return str(lk.batched(_factors, r.id))


def _total(r, lk):
    factor = lk.batched(_factors, r.id)
    return int(r.capacity_bytes * factor) if driver_for(r.provider).overprovisions(r) else r.capacity_bytes


def _allocated(r, lk):
    return lk.batched(pools.allocated_many, r.id) or 0


STORAGEPOOL = View("storagepool", [
    F("id", "the ID of the storage pool", _a("uuid")),
    F("name", "the name of the storage pool", _a("name")),
    F("state", "the state of the storage pool", _a("state")),
    F("type", "the storage pool type", _a("pool_type")),
    F("scope", "the scope of the storage pool", _a("scope")),
    F("zoneid", "the Zone ID of the storage pool", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the storage pool", _ref(m.Zone, "zone_id", "name")),
    F("podid", "the Pod ID of the storage pool", _ref(m.Pod, "pod_id")),
    F("podname", "the Pod name of the storage pool", _ref(m.Pod, "pod_id", "name")),
    F("clusterid", "the ID of the cluster for the storage pool", _ref(m.Cluster, "cluster_id")),
    F("clustername", "the name of the cluster for the storage pool", _ref(m.Cluster, "cluster_id", "name")),
    F("ipaddress", "the IP address of the storage pool", _a("host_address")),
    F("path", "the storage pool path", _a("path")),
    F("provider", "Storage provider for this pool",
      lambda r, lk: getattr(driver_for(r.provider), "shown_provider", r.provider)),
    F("hypervisor", "the hypervisor type of the storage pool", _a("hypervisor")),
    F("managed", "whether this pool is managed or not", _a("managed"), "boolean"),
    F("tags", "the tags for the storage pool", _a("tags")),
    F("istagarule", "whether the storage pool tags are a rule", _a("is_tag_a_rule"), "boolean"),
    F("capacitybytes", "bytes CloudStack can provision from this storage pool", _a("capacity_bytes"), "long"),
    F("capacityiops", "IOPS CloudStack can provision from this storage pool", _a("capacity_iops"), "long"),
    F("disksizetotal", "the total disk size of the storage pool", _a("capacity_bytes"), "long"),
    F("disksizeused", "the host's currently used disk size", _a("used_bytes"), "long"),
    F("disksizeallocated", "the host's currently allocated disk size", _allocated, "long"),
    F("overprovisionfactor", "the overprovisionfactor for the storage pool", _overprov),
    F("capacitytotal", "volstack: the total capacity after overprovisioning", _total, "long"),
    F("storagecapabilities", "the storage pool capabilities", lambda r, lk: {k: str(v).lower() for k, v in driver_for(r.provider).CAPABILITIES.items()}, "map"),
    F("details", "the storage pool details", lambda r, lk: r.details or None, "map"),
    F("created", "the date and time the storage pool was created", _date("created"), "date"),
])

URL_HELP = ("the URL of the storage pool: nfs://server/export, SharedMountPoint://localhost/path, "
            "file://localhost/path (scope=host)")


@API.command("createStoragePool", "Creates a storage pool.", [
    P("name", STRING, "the name for the storage pool", required=True),
    P("url", STRING, URL_HELP, required=True, length=2048),
    P("zoneid", UUID, "the Zone ID for the storage pool", required=True, entity="Zone"),
    P("podid", UUID, "the Pod ID for the storage pool", entity="Pod"),
    P("clusterid", UUID, "the cluster ID for the storage pool", entity="Cluster"),
    P("hostid", UUID, "volstack: the host of a host-scope (local) storage pool", entity="Host"),
    P("scope", STRING, "the scope of the storage: cluster, zone or host. Default is cluster"),
    P("hypervisor", STRING, "hypervisor type of the hosts in zone that will be attached to this storage pool. KVM, Simulator or Any; required for zone scope"),
    P("provider", STRING, "the storage provider name"),
    P("tags", STRING, "the tags for the storage pool", length=4096),
    P("istagarule", BOOLEAN, "Whether the informed tag is a JS interpretable rule or not."),
    P("capacitybytes", LONG, "bytes CloudStack can provision from this storage pool"),
    P("capacityiops", LONG, "IOPS CloudStack can provision from this storage pool"),
    P("managed", BOOLEAN, "whether the storage should be managed by CloudStack"),
    P("details", MAP, "the details for the storage pool"),
], view=STORAGEPOOL)
def create_storage_pool(req, p):
    pool = pools.create_pool(req.s, req.ctx, name=p.name, url=p.url, zoneid=p.zoneid, podid=p.podid,
                             clusterid=p.clusterid, hostid=p.hostid, scope=p.scope, hypervisor=p.hypervisor,
                             provider=p.provider, tags=p.tags, istagarule=p.istagarule, capacitybytes=p.capacitybytes,
                             capacityiops=p.capacityiops, managed=p.managed,
                             details={k: v for d in (p.details or {}).values() for k, v in d.items()})
    return obj(req, STORAGEPOOL, pool)


@API.command("listStoragePools", "Lists storage pools.", [
    P("id", UUID, "the ID of the storage pool", entity="StoragePool"),
    P("name", STRING, "the name of the storage pool"),
    P("zoneid", UUID, "the Zone ID for the storage pool", entity="Zone"),
    P("podid", UUID, "the Pod ID for the storage pool", entity="Pod"),
    P("clusterid", UUID, "list storage pools belongig to the specific cluster", entity="Cluster"),
    P("hostid", UUID, "host ID of the storage pools", entity="Host"),
    P("scope", STRING, "the scope of the storage pool"),
    P("status", STRING, "the status of the storage pool"),
    P("path", STRING, "the storage pool path"),
    P("ipaddress", STRING, "the IP address for the storage pool"),
], view=STORAGEPOOL, is_list=True)
def list_storage_pools(req, p):
    return lst(req, STORAGEPOOL, pools.list_pools(req.s, req.ctx, list_query(req, p), id=p.id, name=p.name,
                                                  zoneid=p.zoneid, podid=p.podid, clusterid=p.clusterid,
                                                  hostid=p.hostid, scope=p.scope, status=p.status, path=p.path,
                                                  ipaddress=p.ipaddress))


@API.command("updateStoragePool", "Updates a storage pool.", [
    P("id", UUID, "the Id of the storage pool", required=True, entity="StoragePool"),
    P("name", STRING, "Change the name of the storage pool"),
    P("tags", LIST, "comma-separated list of tags for the storage pool", length=4096),
    P("istagarule", BOOLEAN, "Whether the informed tag is a JS interpretable rule or not."),
    P("capacitybytes", LONG, "bytes CloudStack can provision from this storage pool"),
    P("capacityiops", LONG, "IOPS CloudStack can provision from this storage pool"),
    P("enabled", BOOLEAN, "false to disable the pool for allocation of new volumes, true to enable it back."),
    P("details", MAP, "the details for the storage pool"),
    P("url", STRING, "the URL of the storage pool (cannot change for DefaultPrimary pools)", length=2048),
], view=STORAGEPOOL)
def update_storage_pool(req, p):
    pool = pools.update_pool(req.s, req.ctx, p.id, name=p.name, tags=p.tags, istagarule=p.istagarule,
                             capacitybytes=p.capacitybytes, capacityiops=p.capacityiops, enabled=p.enabled,
                             details=p.details)
    return obj(req, STORAGEPOOL, pool)


@API.command("deleteStoragePool", "Deletes a storage pool.", [
    P("id", UUID, "Storage pool id", required=True, entity="StoragePool"),
    P("forced", BOOLEAN, "Force destroy storage pool (force expunge volumes in Destroyed state as a part of pool removal)"),
], response_key="success")
def delete_storage_pool(req, p):
    pools.delete_pool(req.s, req.ctx, p.id, bool(p.forced))
    return Success()


@API.command("enableStorageMaintenance", "Puts storage pool into maintenance state",
             [P("id", UUID, "Primary storage ID", required=True, entity="StoragePool")], view=STORAGEPOOL,
             is_async=True, instance_type="StoragePool", instance_param="id", on_interrupt="retry")
def enable_storage_maintenance(req, p):
    return obj(req, STORAGEPOOL, pools.enable_maintenance(req.s, req.ctx, p.id))


@API.command("cancelStorageMaintenance", "Cancels maintenance for primary storage",
             [P("id", UUID, "the primary storage ID", required=True, entity="StoragePool")], view=STORAGEPOOL,
             is_async=True, instance_type="StoragePool", instance_param="id", on_interrupt="retry")
def cancel_storage_maintenance(req, p):
    return obj(req, STORAGEPOOL, pools.cancel_maintenance(req.s, req.ctx, p.id))


@API.command("syncStoragePool", "Sync storage pool with management server (refreshes its capacity and usage from a host)",
             [P("id", UUID, "Storage pool id", required=True, entity="StoragePool")], view=STORAGEPOOL,
             is_async=True, instance_type="StoragePool", instance_param="id", on_interrupt="retry")
def sync_storage_pool(req, p):
    return obj(req, STORAGEPOOL, pools.refresh_stats(req.s, pools.get_pool(req.s, p.id)))


@API.command("listStoragePoolObjects", "Lists objects at specified path on a storage pool.", [
    P("id", UUID, "id of the storage pool", required=True, entity="StoragePool"),
    P("path", STRING, "path to list on storage pool", length=4096),
], view=DATASTOREOBJECT, is_list=True, since="4.19.0")
def list_storage_pool_objects(req, p):
    return paged(req, p, DATASTOREOBJECT, pools.list_objects(req.s, req.ctx, p.id, p.path))





STORAGETAG = View("storagetag", [
    F("id", "the ID of the storage tag", lambda r, lk: r["id"]),
    F("name", "the name of the storage tag", lambda r, lk: r["name"]),
    F("poolid", "the pool ID of the storage tag (volstack: the pool's uuid)", lambda r, lk: r["poolid"]),
])


@API.command("listStorageTags", "Lists storage tags", [], view=STORAGETAG, is_list=True, since="4.2.0")
def list_storage_tags(req, p):
    return paged(req, p, STORAGETAG, pools.storage_tags(req.s, req.ctx, p.keyword))
