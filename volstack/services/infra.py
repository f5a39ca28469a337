"""Zones, pods, clusters and hosts."""
import ipaddress

from sqlalchemy import func, select

from volstack.db import aggregate
from volstack.db.models import Cluster, Host, Pod, Zone, utcnow
from volstack.errors import InvalidParameter, ResourceInUse
from volstack.services import events
from volstack.services.context import require_root_admin
from volstack.services.lifecycle import HOST_RESOURCE
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

HYPERVISORS = ("KVM", "Simulator")
ALLOCATION_STATES = ("Enabled", "Disabled")

# Host types: how a host of each hypervisor joins. Simulator hosts (CloudStack's simulator) accept
# every command at once; KVM hosts are `volstack agent` processes.
_host_connectors: dict = {}


def register_host_connector(hypervisor: str, fn) -> None:
    """fn(session, host, url, username, password) connects a new host or raises a CloudError; it may
    rename the host (an agent reports its own host name)."""
    _host_connectors[hypervisor] = fn


def _simulator_connect(s, host: Host, url, username, password) -> None:
    host.state, host.version, host.last_ping = "Up", "simulator", utcnow()
    if host.name.startswith("sim"):
        # CloudStack's simulator setup (http://sim/c0/h0, http://sim/c0/h1 ...): every host is an agent of its
        # own, SimulatedAgent.<uuid>, with an address from its pod's range
        host.name = f"SimulatedAgent.{host.uuid}"
        host.ip_address = _next_pod_address(s, host) or host.ip_address


def _next_pod_address(s, host: Host) -> str | None:
    pod = s.get(Pod, host.pod_id)
    if not (pod and pod.start_ip and pod.end_ip):
        return None
    used = set(s.scalars(select(Host.ip_address).where(Host.pod_id == pod.id, Host.id != host.id)))
    try:
        first, last = ipaddress.ip_address(pod.start_ip), ipaddress.ip_address(pod.end_ip)
    except ValueError:
        return None
    for n in range(int(first), int(last) + 1):
        if str(ipaddress.ip_address(n)) not in used:
            return str(ipaddress.ip_address(n))
    return None


register_host_connector("Simulator", _simulator_connect)

# Called with (session, ctx, host) while a host enters maintenance; later subsystems move work off it.
maintenance_hooks: list = []


def _get(s, model, uuid, what):
    row = s.scalar(select(model).where(model.uuid == uuid))
    if row is None:
        raise InvalidParameter(f"Unable to find {what} by id {uuid}")
    return row


def hypervisors(s, zoneid=None) -> list[str]:
    """listHypervisors: those volstack drives; with a zone, those of its clusters (as CloudStack answers)."""
    if not zoneid:
        return list(HYPERVISORS)
    used = {h.lower() for h in s.scalars(select(Cluster.hypervisor).where(Cluster.zone_id == get_zone(s, zoneid).id))}
    return [h for h in HYPERVISORS if h.lower() in used]


def get_zone(s, uuid) -> Zone:
    return _get(s, Zone, uuid, "zone")


def get_pod(s, uuid) -> Pod:
    return _get(s, Pod, uuid, "pod")


def get_cluster(s, uuid) -> Cluster:
    return _get(s, Cluster, uuid, "cluster")


def get_host(s, uuid) -> Host:
    return _get(s, Host, uuid, "host")


def _allocation(value, default="Enabled"):
    if value is None:
        return default
    for st in ALLOCATION_STATES:
        if st.lower() == value.lower():
            return st
    raise InvalidParameter(f"Invalid allocation state {value}: use Enabled or Disabled")


def hypervisor_name(value: str) -> str:
    for h in HYPERVISORS:
        if h.lower() == (value or "").lower():
            return h
    raise InvalidParameter(f"Invalid hypervisor type {value}: this management server supports {', '.join(HYPERVISORS)}")


# ---------------------------------------------------------------- zones

ZONE_FIELDS = {"description": "description", "dns1": "dns1", "dns2": "dns2", "internaldns1": "internal_dns1",
               "internaldns2": "internal_dns2", "ip6dns1": "ip6_dns1", "ip6dns2": "ip6_dns2",
               "guestcidraddress": "guest_cidr", "domain": "network_domain",
               "localstorageenabled": "local_storage_enabled", "securitygroupenabled": "security_group_enabled"}


def create_zone(s, ctx, name, networktype="Advanced", allocationstate=None, domainid=None, **fields) -> Zone:
    require_root_admin(ctx)
    if s.scalar(select(Zone).where(func.lower(Zone.name) == name.lower())):
        raise InvalidParameter(f"A zone with name {name} already exists")
    ntype = {"basic": "Basic", "advanced": "Advanced"}.get((networktype or "Advanced").lower())
    if ntype is None:
        raise InvalidParameter(f"Invalid network type {networktype}: use Basic or Advanced")
    zone = Zone(name=name, network_type=ntype, allocation_state=_allocation(allocationstate))
    if ntype == "Basic":             # CloudStack: a Basic zone always isolates guests with security groups
        fields["securitygroupenabled"] = True
    if domainid:
        from volstack.services.accounts import get_domain
        zone.domain_id = get_domain(s, ctx, domainid).id
    for param, attr in ZONE_FIELDS.items():
        if fields.get(param) is not None:
            setattr(zone, attr, fields[param])
    s.add(zone)
    s.flush()
    events.record(s, ctx, "ZONE.CREATE", f"Zone {name} created", resource_type="Zone", resource_uuid=zone.uuid)
    return zone


def list_zones(s, ctx, q: ListQuery, id=None, name=None, available=None, tags=None):
    stmt = select(Zone).order_by(Zone.id).where(*identity_filter(Zone, {"id": id, "name": name, "tags": tags}))
    if not ctx.is_admin or available:
        stmt = stmt.where(Zone.allocation_state == "Enabled")
    stmt = stmt.where(*keyword_filter(q, Zone.name, Zone.description))
    return paginate(s, stmt, q)


def update_zone(s, ctx, id, name=None, allocationstate=None, **fields) -> Zone:
    require_root_admin(ctx)
    zone = get_zone(s, id)
    if name and name != zone.name:
        if s.scalar(select(Zone).where(func.lower(Zone.name) == name.lower(), Zone.id != zone.id)):
            raise InvalidParameter(f"A zone with name {name} already exists")
        zone.name = name
    if allocationstate is not None:
        zone.allocation_state = _allocation(allocationstate)
    for param, attr in ZONE_FIELDS.items():
        if fields.get(param) is not None:
            setattr(zone, attr, fields[param])
    events.record(s, ctx, "ZONE.EDIT", f"Zone {zone.name} updated", resource_type="Zone", resource_uuid=zone.uuid)
    return zone


# Later subsystems add checks (pools, image stores...) that refuse deleting a zone still in use.
zone_in_use_checks: list = []


def delete_zone(s, ctx, id) -> None:
    require_root_admin(ctx)
    zone = get_zone(s, id)
    for check in zone_in_use_checks:
        check(s, zone)
    pods = aggregate.count(s, Pod, Pod.zone_id == zone.id)
    if pods:
        raise ResourceInUse(f"The zone {zone.name} is not deletable because there are {pods} pod(s) in it; delete them first")
    s.delete(zone)
    events.record(s, ctx, "ZONE.DELETE", f"Zone {zone.name} deleted", resource_type="Zone", resource_uuid=zone.uuid)


# ---------------------------------------------------------------- pods

def create_pod(s, ctx, zoneid, name, gateway=None, netmask=None, startip=None, endip=None, allocationstate=None) -> Pod:
    require_root_admin(ctx)
    zone = get_zone(s, zoneid)
    if s.scalar(select(Pod).where(Pod.zone_id == zone.id, func.lower(Pod.name) == name.lower())):
        raise InvalidParameter(f"A pod with name {name} already exists in zone {zone.name}")
    endip = endip or _range_end(startip, netmask)
    pod = Pod(zone_id=zone.id, name=name, gateway=gateway, netmask=netmask, start_ip=startip, end_ip=endip,
              allocation_state=_allocation(allocationstate))
    s.add(pod)
    s.flush()
    events.record(s, ctx, "POD.CREATE", f"Pod {name} created in zone {zone.name}", resource_type="Pod", resource_uuid=pod.uuid)
    return pod


def _range_end(startip, netmask) -> str | None:
    """createPod without endip: the last usable address of the start address's subnet, as CloudStack fills it."""
    if not startip or not netmask:
        return None
    try:
        net = ipaddress.ip_network(f"{startip}/{netmask}", strict=False)
    except ValueError:
        raise InvalidParameter(f"Invalid startip {startip} or netmask {netmask}") from None
    return str(net.broadcast_address - 1)


def list_pods(s, ctx, q: ListQuery, id=None, name=None, zoneid=None, allocationstate=None):
    require_root_admin(ctx)
    stmt = select(Pod).order_by(Pod.id)
    if id:
        stmt = stmt.where(Pod.uuid == id)
    if name:
        stmt = stmt.where(func.lower(Pod.name) == name.lower())
    if zoneid:
        stmt = stmt.where(Pod.zone_id == get_zone(s, zoneid).id)
    if allocationstate:
        stmt = stmt.where(Pod.allocation_state == _allocation(allocationstate))
    stmt = stmt.where(*keyword_filter(q, Pod.name))
    return paginate(s, stmt, q)


def update_pod(s, ctx, id, name=None, gateway=None, netmask=None, startip=None, endip=None, allocationstate=None) -> Pod:
    require_root_admin(ctx)
    pod = get_pod(s, id)
    if name and name != pod.name:
        if s.scalar(select(Pod).where(Pod.zone_id == pod.zone_id, func.lower(Pod.name) == name.lower(), Pod.id != pod.id)):
            raise InvalidParameter(f"A pod with name {name} already exists in this zone")
        pod.name = name
    for attr, val in (("gateway", gateway), ("netmask", netmask), ("start_ip", startip), ("end_ip", endip)):
        if val is not None:
            setattr(pod, attr, val)
    if allocationstate is not None:
        pod.allocation_state = _allocation(allocationstate)
    events.record(s, ctx, "POD.EDIT", f"Pod {pod.name} updated", resource_type="Pod", resource_uuid=pod.uuid)
    return pod


def delete_pod(s, ctx, id) -> None:
    require_root_admin(ctx)
    pod = get_pod(s, id)
    n = aggregate.count(s, Cluster, Cluster.pod_id == pod.id)
    if n:
        raise ResourceInUse(f"The pod {pod.name} is not deletable because there are {n} cluster(s) in it; delete them first")
    s.delete(pod)
    events.record(s, ctx, "POD.DELETE", f"Pod {pod.name} deleted", resource_type="Pod", resource_uuid=pod.uuid)


# ---------------------------------------------------------------- clusters

def add_cluster(s, ctx, zoneid, podid, clustername, hypervisor, clustertype="CloudManaged", allocationstate=None) -> Cluster:
    require_root_admin(ctx)
    zone, pod = get_zone(s, zoneid), get_pod(s, podid)
    if pod.zone_id != zone.id:
        raise InvalidParameter(f"Pod {pod.name} does not belong to zone {zone.name}")
    if clustertype and clustertype not in ("CloudManaged", "ExternalManaged"):
        raise InvalidParameter(f"Invalid cluster type {clustertype}: use CloudManaged or ExternalManaged")
    if s.scalar(select(Cluster).where(Cluster.pod_id == pod.id, Cluster.name == clustername)):
        raise InvalidParameter(f"A cluster with name {clustername} already exists in pod {pod.name}")
    cl = Cluster(zone_id=zone.id, pod_id=pod.id, name=clustername, hypervisor=hypervisor_name(hypervisor),
                 cluster_type=clustertype or "CloudManaged", allocation_state=_allocation(allocationstate))
    s.add(cl)
    s.flush()
    events.record(s, ctx, "CLUSTER.CREATE", f"Cluster {clustername} added to pod {pod.name}", resource_type="Cluster", resource_uuid=cl.uuid)
    return cl


def list_clusters(s, ctx, q: ListQuery, id=None, name=None, zoneid=None, podid=None, hypervisor=None,
                  allocationstate=None, clustertype=None, managedstate=None):
    require_root_admin(ctx)
    stmt = select(Cluster).order_by(Cluster.id)
    if id:
        stmt = stmt.where(Cluster.uuid == id)
    if name:
        stmt = stmt.where(func.lower(Cluster.name) == name.lower())
    if zoneid:
        stmt = stmt.where(Cluster.zone_id == get_zone(s, zoneid).id)
    if podid:
        stmt = stmt.where(Cluster.pod_id == get_pod(s, podid).id)
    if hypervisor:
        stmt = stmt.where(func.lower(Cluster.hypervisor) == hypervisor.lower())
    if allocationstate:
        stmt = stmt.where(Cluster.allocation_state == _allocation(allocationstate))
    if clustertype:
        stmt = stmt.where(Cluster.cluster_type == clustertype)
    if managedstate:
        stmt = stmt.where(Cluster.managed_state == managedstate)
    stmt = stmt.where(*keyword_filter(q, Cluster.name))
    return paginate(s, stmt, q)


def update_cluster(s, ctx, id, clustername=None, allocationstate=None, clustertype=None, hypervisor=None,
                   managedstate=None) -> Cluster:
    require_root_admin(ctx)
    cl = get_cluster(s, id)
    if clustername:
        cl.name = clustername
    if allocationstate is not None:
        cl.allocation_state = _allocation(allocationstate)
    if clustertype:
        cl.cluster_type = clustertype
    if hypervisor and hypervisor_name(hypervisor) != cl.hypervisor:
        raise InvalidParameter("The hypervisor type of a cluster cannot be changed")
    if managedstate:
        if managedstate not in ("Managed", "Unmanaged"):
            raise InvalidParameter(f"Invalid managed state {managedstate}: use Managed or Unmanaged")
        cl.managed_state = managedstate
    events.record(s, ctx, "CLUSTER.EDIT", f"Cluster {cl.name} updated", resource_type="Cluster", resource_uuid=cl.uuid)
    return cl


def delete_cluster(s, ctx, id) -> None:
    require_root_admin(ctx)
    cl = get_cluster(s, id)
    n = aggregate.count(s, Host, Host.cluster_id == cl.id)
    if n:
        raise ResourceInUse(f"The cluster {cl.name} is not deletable because there are {n} host(s) in it; delete them first")
    s.delete(cl)
    events.record(s, ctx, "CLUSTER.DELETE", f"Cluster {cl.name} deleted", resource_type="Cluster", resource_uuid=cl.uuid)


# ---------------------------------------------------------------- hosts

def _host_name_from_url(url: str) -> str:
    from urllib.parse import urlparse
    p = urlparse(url if "://" in url else "http://" + url)
    if not p.hostname:
        raise InvalidParameter(f"Unable to find the host name in url {url}; use http://<host>[:port]")
    return p.hostname


def add_host(s, ctx, zoneid, podid, url, hypervisor, clusterid=None, clustername=None, username=None,
             password=None, hosttags=None, allocationstate=None) -> Host:
    require_root_admin(ctx)
    zone, pod = get_zone(s, zoneid), get_pod(s, podid)
    hv = hypervisor_name(hypervisor)
    if clusterid:
        cl = get_cluster(s, clusterid)
    elif clustername:
        cl = s.scalar(select(Cluster).where(Cluster.pod_id == pod.id, Cluster.name == clustername)) \
            or add_cluster(s, ctx, zoneid, podid, clustername, hv)
    else:
        raise InvalidParameter("Either clusterid or clustername must be passed to addHost")
    if cl.pod_id != pod.id or pod.zone_id != zone.id:
        raise InvalidParameter(f"Cluster {cl.name} does not belong to pod {pod.name} in zone {zone.name}")
    if cl.hypervisor != hv:
        raise InvalidParameter(f"Cannot add a {hv} host to cluster {cl.name}, whose hypervisor is {cl.hypervisor}")
    name = _host_name_from_url(url)
    if hv != "KVM" and not name.startswith("sim") and s.scalar(select(Host).where(Host.zone_id == zone.id,
                                                                                 Host.name == name)):
        raise InvalidParameter(f"A host with name {name} already exists in zone {zone.name}")
    connect = _host_connectors.get(hv)
    if connect is None:
        raise InvalidParameter(f"Hosts of hypervisor {hv} cannot be added to this management server yet")
    host = Host(name=name, hypervisor=hv, zone_id=zone.id, pod_id=pod.id, cluster_id=cl.id, url=url,
                ip_address=name, host_tags=hosttags, state="Connecting",
                resource_state="Enabled" if _allocation(allocationstate) == "Enabled" else "Disabled")
    s.add(host)
    s.flush()
    connect(s, host, url, username, password)
    events.record(s, ctx, "HOST.ADD", f"Host {host.name} added to cluster {cl.name}", resource_type="Host", resource_uuid=host.uuid)
    return host


def list_hosts(s, ctx, q: ListQuery, id=None, name=None, zoneid=None, podid=None, clusterid=None, hypervisor=None,
               state=None, resourcestate=None, type=None):
    require_root_admin(ctx)
    stmt = select(Host).order_by(Host.id)
    if id:
        stmt = stmt.where(Host.uuid == id)
    if name:
        stmt = stmt.where(func.lower(Host.name) == name.lower())
    if zoneid:
        stmt = stmt.where(Host.zone_id == get_zone(s, zoneid).id)
    if podid:
        stmt = stmt.where(Host.pod_id == get_pod(s, podid).id)
    if clusterid:
        stmt = stmt.where(Host.cluster_id == get_cluster(s, clusterid).id)
    if hypervisor:
        stmt = stmt.where(func.lower(Host.hypervisor) == hypervisor.lower())
    if state:
        stmt = stmt.where(func.lower(Host.state) == state.lower())
    if resourcestate:
        stmt = stmt.where(func.lower(Host.resource_state) == resourcestate.lower())
    if type:
        stmt = stmt.where(func.lower(Host.host_type) == type.lower())
    stmt = stmt.where(*keyword_filter(q, Host.name))
    return paginate(s, stmt, q)


def update_host(s, ctx, id, allocationstate=None, hosttags=None, name=None, url=None) -> Host:
    require_root_admin(ctx)
    host = get_host(s, id)
    if allocationstate is not None:
        event = {"enable": "Enable", "disable": "Disable"}.get(allocationstate.lower())
        if event is None:
            raise InvalidParameter(f"Invalid allocation state {allocationstate}: use Enable or Disable")
        HOST_RESOURCE.fire(s, host, event)
    if hosttags is not None:
        host.host_tags = hosttags or None
    if name:
        host.name = name
    if url:
        host.url = url
    events.record(s, ctx, "HOST.UPDATE", f"Host {host.name} updated", resource_type="Host", resource_uuid=host.uuid)
    return host


def prepare_host_maintenance(s, ctx, id) -> Host:
    require_root_admin(ctx)
    host = get_host(s, id)
    HOST_RESOURCE.fire(s, host, "PrepareMaintenance")
    if host.resource_state == "PrepareForMaintenance":
        try:
            for hook in maintenance_hooks:
                hook(s, ctx, host)
        except Exception as exc:
            HOST_RESOURCE.fire(s, host, "MaintenanceFailed")
            events.record(s, ctx, "MAINT.PREPARE", f"Host {host.name} failed to enter maintenance: {exc}", level="ERROR",
                          resource_type="Host", resource_uuid=host.uuid)
            return host
        HOST_RESOURCE.fire(s, host, "MaintenanceReached")
    events.record(s, ctx, "MAINT.PREPARE", f"Host {host.name} is in maintenance", resource_type="Host", resource_uuid=host.uuid)
    return host


def cancel_host_maintenance(s, ctx, id) -> Host:
    require_root_admin(ctx)
    host = get_host(s, id)
    HOST_RESOURCE.fire(s, host, "CancelMaintenance")
    events.record(s, ctx, "MAINT.CANCEL", f"Host {host.name} left maintenance", resource_type="Host", resource_uuid=host.uuid)
    return host


def delete_host(s, ctx, id, forced=False) -> None:
    require_root_admin(ctx)
    host = get_host(s, id)
    if host.resource_state != "Maintenance" and host.state == "Up" and not forced:
        raise InvalidParameter(f"Host {host.name} is {host.state} and not in maintenance; put it in maintenance "
                               "first or pass forced=true")
    s.delete(host)
    events.record(s, ctx, "HOST.DELETE", f"Host {host.name} deleted", resource_type="Host", resource_uuid=host.uuid)
