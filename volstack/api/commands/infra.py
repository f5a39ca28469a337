"""Zones, pods, clusters, hosts and the infrastructure catalogues."""
from volstack.api.commands.common import list_query, lst, obj, page_of, pick
from volstack.api.registry import API, BOOLEAN, LIST, MAP, STRING, USER, UUID, Lst, Param as P, Success
from volstack.api.views import CLUSTER, HOST, POD, ZONE, Lookups, View
from volstack.api.registry import Field as F
from volstack.errors import InvalidParameter
from volstack.services import catalog, infra

ZONE_PARAMS = [
    P("dns1", STRING, "the first DNS for the Zone"),
    P("dns2", STRING, "the second DNS for the Zone"),
    P("internaldns1", STRING, "the first internal DNS for the Zone"),
    P("internaldns2", STRING, "the second internal DNS for the Zone"),
    P("ip6dns1", STRING, "the first DNS for IPv6 network in the Zone"),
    P("ip6dns2", STRING, "the second DNS for IPv6 network in the Zone"),
    P("guestcidraddress", STRING, "the guest CIDR address for the Zone"),
    P("domain", STRING, "Network domain name for the networks in the zone"),
    P("localstorageenabled", BOOLEAN, "true if local storage offering enabled, false otherwise"),
    P("securitygroupenabled", BOOLEAN, "true if network is security group enabled, false otherwise"),
    P("allocationstate", STRING, "Allocation state of this Zone for allocation of new resources"),
    P("description", STRING, "the description of the zone"),
]
ZONE_FIELD_NAMES = [p.name for p in ZONE_PARAMS if p.name != "allocationstate"]


@API.command("createZone", "Creates a Zone.", [
    P("name", STRING, "the name of the Zone", required=True),
    P("networktype", STRING, "network type of the zone, can be Basic or Advanced", required=True),
    P("domainid", UUID, "the ID of the containing domain, null for public zones", entity="Domain"),
    *ZONE_PARAMS], view=ZONE)
def create_zone(req, p):
    z = infra.create_zone(req.s, req.ctx, p.name, p.networktype, p.allocationstate, p.domainid,
                          **pick(p, *ZONE_FIELD_NAMES))
    return obj(req, ZONE, z)


def _refuse_capacities(p, kind):
    """showcapacities=true asks for CPU, memory, IP and storage capacity per zone, pod or cluster; volstack computes
    none of them at that level, and an answer without them would look like an empty one."""
    if p.showcapacities:
        raise InvalidParameter(f"showcapacities=true is not supported: volstack keeps no {kind} capacity figures; "
                               "omit it and read the storage capacity of each pool with listStoragePools")


@API.command("listZones", "Lists zones", [
    P("id", UUID, "the ID of the zone", entity="Zone"),
    P("name", STRING, "the name of the zone"),
    P("available", BOOLEAN, "true if you want to retrieve all available Zones. False if you only want to return the Zones from which you have at least one VM. Default is false."),
    P("showcapacities", BOOLEAN, "flag to display the capacity of the zones: true is refused (volstack keeps no "
      "zone capacity figures; see listStoragePools)"),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
], view=ZONE, is_list=True, access=USER)
def list_zones(req, p):
    _refuse_capacities(p, "zone")
    return lst(req, ZONE, infra.list_zones(req.s, req.ctx, list_query(req, p), p.id, p.name, p.available, tags=p.tags))


@API.command("updateZone", "Updates a Zone.", [
    P("id", UUID, "the ID of the Zone", required=True, entity="Zone"),
    P("name", STRING, "the name of the Zone"),
    P("networktype", STRING, "ignored: the network type of a zone cannot change"),
    *ZONE_PARAMS], view=ZONE)
def update_zone(req, p):
    z = infra.update_zone(req.s, req.ctx, p.id, p.name, p.allocationstate, **pick(p, *ZONE_FIELD_NAMES))
    return obj(req, ZONE, z)


@API.command("deleteZone", "Deletes a Zone.", [P("id", UUID, "the ID of the Zone", required=True, entity="Zone")],
             response_key="success")
def delete_zone(req, p):
    infra.delete_zone(req.s, req.ctx, p.id)
    return Success()


POD_PARAMS = [
    P("gateway", STRING, "the gateway for the Pod"),
    P("netmask", STRING, "the netmask for the Pod"),
    P("startip", STRING, "the starting IP address for the Pod"),
    P("endip", STRING, "the ending IP address for the Pod"),
    P("allocationstate", STRING, "Allocation state of this Pod for allocation of new resources"),
]


@API.command("createPod", "Creates a new Pod.", [
    P("name", STRING, "the name of the Pod", required=True),
    P("zoneid", UUID, "the Zone ID in which the Pod will be created", required=True, entity="Zone"),
    *POD_PARAMS], view=POD)
def create_pod(req, p):
    return obj(req, POD, infra.create_pod(req.s, req.ctx, p.zoneid, p.name, p.gateway, p.netmask, p.startip,
                                          p.endip, p.allocationstate))


@API.command("listPods", "Lists all Pods.", [
    P("id", UUID, "list Pods by ID", entity="Pod"),
    P("name", STRING, "list Pods by name"),
    P("zoneid", UUID, "list Pods by Zone ID", entity="Zone"),
    P("allocationstate", STRING, "list pods by allocation state"),
    P("showcapacities", BOOLEAN, "flag to display the capacity of the pods: true is refused (volstack keeps no "
      "pod capacity figures; see listStoragePools)"),
], view=POD, is_list=True)
def list_pods(req, p):
    _refuse_capacities(p, "pod")
    return lst(req, POD, infra.list_pods(req.s, req.ctx, list_query(req, p), p.id, p.name, p.zoneid, p.allocationstate))


@API.command("updatePod", "Updates a Pod.", [
    P("id", UUID, "the ID of the Pod", required=True, entity="Pod"),
    P("name", STRING, "the name of the Pod"), *POD_PARAMS], view=POD)
def update_pod(req, p):
    return obj(req, POD, infra.update_pod(req.s, req.ctx, p.id, p.name, p.gateway, p.netmask, p.startip, p.endip,
                                          p.allocationstate))


@API.command("deletePod", "Deletes a Pod.", [P("id", UUID, "the ID of the Pod", required=True, entity="Pod")],
             response_key="success")
def delete_pod(req, p):
    infra.delete_pod(req.s, req.ctx, p.id)
    return Success()


@API.command("addCluster", "Adds a new cluster", [
    P("clustername", STRING, "the cluster name", required=True),
    P("clustertype", STRING, "type of the cluster: CloudManaged, ExternalManaged", required=True),
    P("hypervisor", STRING, "hypervisor type of the cluster: KVM, Simulator", required=True),
    P("podid", UUID, "the Pod ID for the host", required=True, entity="Pod"),
    P("zoneid", UUID, "the Zone ID for the cluster", required=True, entity="Zone"),
    P("allocationstate", STRING, "Allocation state of this cluster for allocation of new resources"),
    P("url", STRING, "the URL (not used by KVM or Simulator clusters)"),
    P("username", STRING, "the username for the cluster (not used by KVM or Simulator clusters)"),
    P("password", STRING, "the password for the host (not used by KVM or Simulator clusters)"),
], view=CLUSTER)
def add_cluster(req, p):
    cl = infra.add_cluster(req.s, req.ctx, p.zoneid, p.podid, p.clustername, p.hypervisor, p.clustertype,
                           p.allocationstate)
    return Lst("cluster", [CLUSTER.render(cl, Lookups(req.s))], 1)


@API.command("listClusters", "Lists clusters.", [
    P("id", UUID, "lists clusters by the cluster ID", entity="Cluster"),
    P("name", STRING, "lists clusters by the cluster name"),
    P("zoneid", UUID, "lists clusters by Zone ID", entity="Zone"),
    P("podid", UUID, "lists clusters by Pod ID", entity="Pod"),
    P("hypervisor", STRING, "lists clusters by hypervisor type"),
    P("allocationstate", STRING, "lists clusters by allocation state"),
    P("clustertype", STRING, "lists clusters by cluster type"),
    P("managedstate", STRING, "whether this cluster is managed by CloudStack"),
    P("showcapacities", BOOLEAN, "flag to display the capacity of the clusters: true is refused (volstack keeps no "
      "cluster capacity figures; see listStoragePools)"),
], view=CLUSTER, is_list=True)
def list_clusters(req, p):
    _refuse_capacities(p, "cluster")
    return lst(req, CLUSTER, infra.list_clusters(req.s, req.ctx, list_query(req, p), p.id, p.name, p.zoneid, p.podid,
                                                 p.hypervisor, p.allocationstate, p.clustertype, p.managedstate))


@API.command("updateCluster", "Updates an existing cluster", [
    P("id", UUID, "the ID of the Cluster", required=True, entity="Cluster"),
    P("clustername", STRING, "the cluster name"),
    P("allocationstate", STRING, "Allocation state of this cluster for allocation of new resources"),
    P("clustertype", STRING, "hypervisor type of the cluster"),
    P("hypervisor", STRING, "hypervisor type of the cluster"),
    P("managedstate", STRING, "whether this cluster is managed by CloudStack"),
], view=CLUSTER)
def update_cluster(req, p):
    return obj(req, CLUSTER, infra.update_cluster(req.s, req.ctx, p.id, p.clustername, p.allocationstate,
                                                  p.clustertype, p.hypervisor, p.managedstate))


@API.command("deleteCluster", "Deletes a cluster.", [P("id", UUID, "the cluster ID", required=True, entity="Cluster")],
             response_key="success")
def delete_cluster(req, p):
    infra.delete_cluster(req.s, req.ctx, p.id)
    return Success()


@API.command("addHost", "Adds a new host.", [
    P("hypervisor", STRING, "hypervisor type of the host: KVM, Simulator", required=True),
    P("podid", UUID, "the Pod ID for the host", required=True, entity="Pod"),
    P("url", STRING, "the host URL: http://<host name or address>[:agent port]", required=True),
    P("zoneid", UUID, "the Zone ID for the host", required=True, entity="Zone"),
    P("clusterid", UUID, "the cluster ID for the host", entity="Cluster"),
    P("clustername", STRING, "the cluster name for the host"),
    P("username", STRING, "the username for the host; required to be passed for KVM but not for Simulator"),
    P("password", STRING, "the password (or agent join token) for the host"),
    P("hosttags", LIST, "list of tags to be added to the host"),
    P("allocationstate", STRING, "Allocation state of this Host for allocation of new resources"),
], view=HOST)
def add_host(req, p):
    host = infra.add_host(req.s, req.ctx, p.zoneid, p.podid, p.url, p.hypervisor, p.clusterid, p.clustername,
                          p.username, p.password, ",".join(p.hosttags) if p.hosttags else None, p.allocationstate)
    return Lst("host", [HOST.render(host, Lookups(req.s))], 1)


@API.command("listHosts", "Lists hosts.", [
    P("id", UUID, "the id of the host", entity="Host"),
    P("name", STRING, "the name of the host"),
    P("zoneid", UUID, "the Zone ID for the host", entity="Zone"),
    P("podid", UUID, "the Pod ID for the host", entity="Pod"),
    P("clusterid", UUID, "lists hosts existing in particular cluster", entity="Cluster"),
    P("hypervisor", STRING, "hypervisor type of host: KVM, Simulator"),
    P("state", STRING, "the state of the host"),
    P("resourcestate", STRING, "list hosts by resource state. Resource state represents current state determined by admin of host, value can be one of [Enabled, Disabled, Unmanaged, PrepareForMaintenance, ErrorInMaintenance, Maintenance, Error]"),
    P("type", STRING, "the host type"),
    P("details", LIST, "comma separated list of host details requested"),
], view=HOST, is_list=True)
def list_hosts(req, p):
    return lst(req, HOST, infra.list_hosts(req.s, req.ctx, list_query(req, p), p.id, p.name, p.zoneid, p.podid,
                                           p.clusterid, p.hypervisor, p.state, p.resourcestate, p.type))


@API.command("updateHost", "Updates a host.", [
    P("id", UUID, "the ID of the host to update", required=True, entity="Host"),
    P("allocationstate", STRING, "Change resource state of host, valid values are [Enable, Disable]. Operation may failed if host in states not allowing Enable/Disable"),
    P("hosttags", LIST, "list of tags to be added to the host"),
    P("name", STRING, "the new name of the host"),
    P("url", STRING, "the new uri for the secondary storage: nfs://host/path"),
], view=HOST)
def update_host(req, p):
    tags = None if p.hosttags is None else ",".join(p.hosttags)
    return obj(req, HOST, infra.update_host(req.s, req.ctx, p.id, p.allocationstate, tags, p.name, p.url))


@API.command("deleteHost", "Deletes a host.", [
    P("id", UUID, "the host ID", required=True, entity="Host"),
    P("forced", BOOLEAN, "Force delete the host. All HA enabled vms running on the host will be put to HA; HA disabled ones will be stopped"),
    P("forcedestroylocalstorage", BOOLEAN, "Force destroy local storage on this host. All VMs created on this local storage will be destroyed"),
], response_key="success")
def delete_host(req, p):
    infra.delete_host(req.s, req.ctx, p.id, bool(p.forced))
    return Success()


@API.command("prepareHostForMaintenance", "Prepares a host for maintenance.",
             [P("id", UUID, "the host ID", required=True, entity="Host")], view=HOST, is_async=True,
             instance_type="Host", instance_param="id", on_interrupt="retry")
def prepare_host_maintenance(req, p):
    return obj(req, HOST, infra.prepare_host_maintenance(req.s, req.ctx, p.id))


@API.command("cancelHostMaintenance", "Cancels host maintenance.",
             [P("id", UUID, "the host ID", required=True, entity="Host")], view=HOST, is_async=True,
             instance_type="Host", instance_param="id", on_interrupt="retry")
def cancel_host_maintenance(req, p):
    return obj(req, HOST, infra.cancel_host_maintenance(req.s, req.ctx, p.id))


HYPERVISOR = View("hypervisor", [F("name", "Hypervisor name", lambda r, lk: r)])


@API.command("listHypervisors", "List hypervisors", [P("zoneid", UUID, "the zone id for listing hypervisors.", entity="Zone")],
             view=HYPERVISOR, is_list=True, access=USER)
def list_hypervisors(req, p):
    return page_of(req, p, "hypervisor", [{"name": h} for h in infra.hypervisors(req.s, p.zoneid)])


PROVIDER = View("dataStoreProvider", [F("name", "the name of the storage provider", lambda r, lk: r["name"]),
                                      F("type", "the type of the storage provider: primary or image", lambda r, lk: r["type"])])


@API.command("listStorageProviders", "Lists storage providers.",
             [P("type", STRING, "the type of storage provider: either primary or image", required=True)],
             view=PROVIDER, is_list=True)
def list_storage_providers(req, p):
    role = p.type.lower()
    if role not in catalog.STORAGE_PROVIDERS:
        raise InvalidParameter(f"Invalid storage provider type {p.type}: use primary or image")
    items = [{"name": n, "type": role} for n in catalog.STORAGE_PROVIDERS[role]]
    return page_of(req, p, PROVIDER.key, items)

