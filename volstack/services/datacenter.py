"""`volstack apply FILE.yaml`: create or update a datacenter description, idempotently.

Every object is matched by name and created or updated through the same services the API uses.
Sections other subsystems understand are added with register_section().
"""
from sqlalchemy import select

from volstack.db.models import Account, Cluster, Domain, Host, Pod, Zone
from volstack.errors import InvalidParameter
from volstack.services import accounts, configs, infra, limits
from volstack.services.settings import key_by_name

_sections: dict = {}


def register_section(name: str, fn, order: int = 50) -> None:
    """fn(session, ctx, items, report) applies one top-level section of the file."""
    _sections[name] = (order, fn)


def apply(db, ctx, doc: dict) -> list[str]:
    """Returns one line per object: 'created ...', 'updated ...' or 'unchanged ...'."""
    if not isinstance(doc, dict):
        raise InvalidParameter("A datacenter file is a mapping of sections: zones, accounts, settings, ...")
    unknown = set(doc) - set(_sections)
    if unknown:
        raise InvalidParameter(f"Unknown section(s) {', '.join(sorted(unknown))}; this version understands "
                               + ", ".join(sorted(_sections)))
    report: list[str] = []
    with db.session() as s:
        for name, (order, fn) in sorted(_sections.items(), key=lambda kv: kv[1][0]):
            if doc.get(name):
                fn(s, ctx, doc[name], report)
    return report


def _item(item, what: str, allowed, required=("name",)) -> dict:
    """A copy of one entry of the file, refused with the reason when it has a key this version would ignore
    or lacks a required one (a key accepted but ignored would be a lie)."""
    if not isinstance(item, dict):
        raise InvalidParameter(f"{what}: each entry is a mapping of keys, not {item!r}")
    unknown = set(item) - set(allowed)
    if unknown:
        raise InvalidParameter(f"{what}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: "
                               + ", ".join(sorted(allowed)))
    missing = [k for k in required if item.get(k) in (None, "")]
    if missing:
        raise InvalidParameter(f"{what}: {', '.join(missing)} is required")
    return dict(item)


def _params(fn, *skip) -> set:
    """The keyword parameters of a service function: the keys an entry passed on to it may have."""
    import inspect
    return {n for n in inspect.signature(fn).parameters if n not in ("s", "ctx", *skip)}


def _changed(row, wanted: dict, attrs: dict) -> dict:
    """The subset of wanted (API parameter names) that differs from row (attrs maps param -> column)."""
    out = {}
    for param, value in wanted.items():
        if value is None or param not in attrs:
            continue
        cur = getattr(row, attrs[param])
        if str(cur).lower() != str(value).lower():
            out[param] = value
    return out


ZONE_ATTRS = {"networktype": "network_type", "allocationstate": "allocation_state", **infra.ZONE_FIELDS}
POD_ATTRS = {"gateway": "gateway", "netmask": "netmask", "startip": "start_ip", "endip": "end_ip",
             "allocationstate": "allocation_state"}
ZONE_KEYS = {"name", "pods", *ZONE_ATTRS}
POD_KEYS = {"name", "clusters", *POD_ATTRS}
CLUSTER_KEYS = {"name", "hypervisor", "clustertype", "allocationstate", "hosts"}
HOST_KEYS = {"url", "username", "password", "hosttags"}
ACCOUNT_KEYS = {"name", "account", "username", "password", "email", "firstname", "lastname", "accounttype",
                "domain", "limits"}
SETTING_KEYS = {"name", "value", "zone", "cluster", "account"}
POOL_KEYS = {"name", "url", "zone", "host", "cluster", "hypervisor", "tags", "capacitybytes"}
STORE_KEYS = {"name", "zone", "provider", "url"}
TEMPLATE_KEYS = {"name", "zone", "file", "format", "ostype", "templatetype", "public", "featured", "displaytext"}


def _zones(s, ctx, zones, report):
    for i, z in enumerate(zones):
        z = _item(z, f"zones[{i}]", ZONE_KEYS)
        pods = z.pop("pods", None) or []
        name = z.pop("name")
        zone = s.scalar(select(Zone).where(Zone.name == name))
        if zone is None:
            zone = infra.create_zone(s, ctx, name, z.pop("networktype", "Advanced"), z.pop("allocationstate", None), None, **z)
            report.append(f"created zone {name}")
        else:
            diff = _changed(zone, z, ZONE_ATTRS)
            diff.pop("networktype", None)
            if diff:
                infra.update_zone(s, ctx, zone.uuid, None, diff.pop("allocationstate", None), **diff)
                report.append(f"updated zone {name}: {', '.join(diff)}")
            else:
                report.append(f"unchanged zone {name}")
        for j, p in enumerate(pods):
            _pod(s, ctx, zone, _item(p, f"zone {name}: pods[{j}]", POD_KEYS), report)


def _pod(s, ctx, zone, p, report):
    clusters = p.pop("clusters", None) or []
    name = p.pop("name")
    pod = s.scalar(select(Pod).where(Pod.zone_id == zone.id, Pod.name == name))
    if pod is None:
        pod = infra.create_pod(s, ctx, zone.uuid, name, p.get("gateway"), p.get("netmask"), p.get("startip"),
                               p.get("endip"), p.get("allocationstate"))
        report.append(f"created pod {name}")
    else:
        diff = _changed(pod, p, POD_ATTRS)
        if diff:
            infra.update_pod(s, ctx, pod.uuid, **diff)
            report.append(f"updated pod {name}: {', '.join(diff)}")
        else:
            report.append(f"unchanged pod {name}")
    for j, c in enumerate(clusters):
        _cluster(s, ctx, zone, pod, _item(c, f"pod {name}: clusters[{j}]", CLUSTER_KEYS), report)


def _cluster(s, ctx, zone, pod, c, report):
    hosts = c.pop("hosts", None) or []
    name = c.pop("name")
    cl = s.scalar(select(Cluster).where(Cluster.pod_id == pod.id, Cluster.name == name))
    if cl is None:
        cl = infra.add_cluster(s, ctx, zone.uuid, pod.uuid, name, c.get("hypervisor", "KVM"),
                               c.get("clustertype", "CloudManaged"), c.get("allocationstate"))
        report.append(f"created cluster {name}")
    else:
        diff = _changed(cl, c, {"allocationstate": "allocation_state"})
        if diff:
            infra.update_cluster(s, ctx, cl.uuid, allocationstate=diff["allocationstate"])
            report.append(f"updated cluster {name}")
        else:
            report.append(f"unchanged cluster {name}")
    for j, h in enumerate(hosts):
        h = _item(h, f"cluster {name}: hosts[{j}]", HOST_KEYS, required=("url",))
        url = h["url"]
        hname = infra._host_name_from_url(url)
        # matched by URL: a host may take another name when it joins (an agent reports its own; CloudStack's
        # simulator names its hosts SimulatedAgent.<uuid>)
        host = s.scalar(select(Host).where(Host.zone_id == zone.id, Host.url == url)) \
            or s.scalar(select(Host).where(Host.zone_id == zone.id, Host.name == hname))
        if host is None:
            infra.add_host(s, ctx, zone.uuid, pod.uuid, url, cl.hypervisor, clusterid=cl.uuid,
                           username=h.get("username"), password=h.get("password"), hosttags=h.get("hosttags"))
            report.append(f"created host {hname}")
        elif h.get("hosttags") is not None and (host.host_tags or "") != h["hosttags"]:
            infra.update_host(s, ctx, host.uuid, hosttags=h["hosttags"])
            report.append(f"updated host {hname}")
        else:
            report.append(f"unchanged host {hname}")


def _accounts(s, ctx, items, report):
    for i, a in enumerate(items):
        a = _item(a, f"accounts[{i}]", ACCOUNT_KEYS, required=("password",))
        if not (a.get("account") or a.get("name") or a.get("username")):
            raise InvalidParameter(f"accounts[{i}]: name (or username) is required")
        path = a.pop("domain", "/")
        dom = _domain_by_path(s, ctx, path)
        name = a.get("account") or a.get("name") or a["username"]
        acc = s.scalar(select(Account).where(Account.domain_id == dom.id, Account.name == name))
        if acc is None:
            accounts.create_account(s, ctx, username=a.get("username", name), password=a["password"],
                                    email=a.get("email"), firstname=a.get("firstname"), lastname=a.get("lastname"),
                                    account=name, accounttype=a.get("accounttype", 0), domainid=dom.uuid)
            report.append(f"created account {name}")
        else:
            report.append(f"unchanged account {name}")
        acc = s.scalar(select(Account).where(Account.domain_id == dom.id, Account.name == name))
        for rtype, max_ in (a.get("limits") or {}).items():
            if limits.limit_of(s, acc.id, rtype) != int(max_):
                limits.update_resource_limit(s, ctx, acc, rtype, int(max_))
                report.append(f"updated limit {rtype} of account {name}")


def _domain_by_path(s, ctx, path: str) -> Domain:
    parts = [p for p in path.strip("/").split("/") if p and p.upper() != "ROOT"]
    dom = s.get(Domain, 1)
    for part in parts:
        child = s.scalar(select(Domain).where(Domain.parent_id == dom.id, Domain.name == part))
        dom = child or accounts.create_domain(s, ctx, part, dom.uuid)
    return dom


_SCOPE_KEYS = {"zone": (Zone, "zone"), "cluster": (Cluster, "cluster"), "account": (Account, "account")}


def _settings(s, ctx, items, report):
    """Either {name: value} for global values, or a list of {name, value, zone|cluster|account: name}."""
    entries = [{"name": k, "value": v} for k, v in items.items()] if isinstance(items, dict) else items
    for i, e in enumerate(entries):
        e = _item(e, f"settings[{i}]", SETTING_KEYS, required=("name", "value"))
        scope_uuids = {}
        for field, (model, scope) in _SCOPE_KEYS.items():
            if e.get(field):
                row = s.scalar(select(model).where(model.name == e[field]))
                if row is None:
                    raise InvalidParameter(f"Setting {e['name']}: no {field} named {e[field]}")
                scope_uuids[scope] = row.uuid
        key = key_by_name(e["name"])
        for scope in scope_uuids:
            if scope not in key.scopes:
                raise InvalidParameter(f"Setting {e['name']} cannot be set for a {scope}; it can be set at: "
                                       + ", ".join(key.scopes))
        value = e["value"]
        value = ("true" if value else "false") if isinstance(value, bool) else str(value)
        current = next((r for r in configs.list_configurations(s, ctx, scope_uuids, e["name"]) if r["name"] == e["name"]), None)
        if current is None:
            raise InvalidParameter(f"Configuration {e['name']} does not exist")
        if key.parse(current["value"]) == key.parse(value):
            report.append(f"unchanged setting {e['name']}")
            continue
        configs.update_configuration(s, ctx, e["name"], value, scope_uuids)
        report.append(f"updated setting {e['name']} = {value}")


def _disk_offerings(s, ctx, items, report):
    from volstack.db.storage_models import DiskOffering
    from volstack.services import offerings
    for i, o in enumerate(items):
        o = _item(o, f"disk_offerings[{i}]", _params(offerings.create_disk_offering))
        if s.scalar(select(DiskOffering).where(DiskOffering.name == o["name"], DiskOffering.removed.is_(None),
                                               DiskOffering.compute_only.is_(False))):
            report.append(f"unchanged disk offering {o['name']}")
            continue
        offerings.create_disk_offering(s, ctx, **o)
        report.append(f"created disk offering {o['name']}")


def _service_offerings(s, ctx, items, report):
    from volstack.db.storage_models import ServiceOffering
    from volstack.services import service_offerings
    for i, o in enumerate(items):
        o = _item(o, f"service_offerings[{i}]", _params(service_offerings.create_service_offering))
        if s.scalar(select(ServiceOffering).where(ServiceOffering.name == o["name"], ServiceOffering.removed.is_(None))):
            report.append(f"unchanged service offering {o['name']}")
            continue
        service_offerings.create_service_offering(s, ctx, **o)
        report.append(f"created service offering {o['name']}")


def _storage_pools(s, ctx, items, report):
    """Each item: name, url, zone (name), and scope fields: cluster (name) | host (name) | hypervisor (zone scope)."""
    from volstack.db.storage_models import StoragePool
    from volstack.services import pools
    for i, p in enumerate(items):
        p = _item(p, f"storage_pools[{i}]", POOL_KEYS, required=("name", "url", "zone"))
        zone = s.scalar(select(Zone).where(Zone.name == p.pop("zone")))
        if zone is None:
            raise InvalidParameter(f"Storage pool {p['name']}: no such zone")
        if s.scalar(select(StoragePool).where(StoragePool.name == p["name"], StoragePool.zone_id == zone.id,
                                              StoragePool.state != "Removed")):
            report.append(f"unchanged storage pool {p['name']}")
            continue
        kw = {"name": p["name"], "url": p["url"], "zoneid": zone.uuid, "tags": p.get("tags"),
              "capacitybytes": p.get("capacitybytes")}
        if p.get("host"):
            host = s.scalar(select(Host).where(Host.zone_id == zone.id, Host.name == p["host"]))
            if host is None:
                raise InvalidParameter(f"Storage pool {p['name']}: no host named {p['host']} in zone {zone.name}")
            kw.update(scope="host", hostid=host.uuid)
        elif p.get("cluster"):
            cl = s.scalar(select(Cluster).where(Cluster.zone_id == zone.id, Cluster.name == p["cluster"]))
            if cl is None:
                raise InvalidParameter(f"Storage pool {p['name']}: no cluster named {p['cluster']} in zone {zone.name}")
            kw.update(scope="cluster", clusterid=cl.uuid, podid=s.get(Pod, cl.pod_id).uuid)
        else:
            kw.update(scope="zone", hypervisor=p.get("hypervisor", "KVM"))
        pools.create_pool(s, ctx, **kw)
        report.append(f"created storage pool {p['name']}")


def _image_stores(s, ctx, items, report):
    """Each item: name, zone (name), provider (NFS | Filesystem), url."""
    from volstack.db.image_models import ImageStore
    from volstack.services import imagestores
    for i, st in enumerate(items):
        st = _item(st, f"image_stores[{i}]", STORE_KEYS, required=("url", "zone"))
        zone = _zone(s, st.get("zone"), f"Image store {st.get('name')}")
        if s.scalar(select(ImageStore).where(ImageStore.url == st["url"], ImageStore.removed.is_(None))):
            report.append(f"unchanged image store {st.get('name') or st['url']}")
            continue
        imagestores.add_store(s, ctx, name=st.get("name"), provider=st.get("provider", "NFS"), url=st["url"],
                              zoneid=zone.uuid)
        report.append(f"created image store {st.get('name') or st['url']}")


def _templates(s, ctx, items, report):
    """Each item: name, zone (name), and url (downloaded by the server's jobs) or file (a path every host of
    the zone sees, copied into an image store now); format, ostype, public, featured."""
    from volstack.services import template_sources
    for i, t in enumerate(items):
        t = _item(t, f"templates[{i}]", TEMPLATE_KEYS | {"url"}, required=("name", "zone"))
        zone = _zone(s, t.get("zone"), f"Template {t.get('name')}")
        if t.get("file"):
            _, created = template_sources.install_local(s, ctx, name=t["name"], path=t["file"], zone=zone,
                                                 fmt=t.get("format", "QCOW2"), ostype=t.get("ostype", "Other Linux (64-bit)"),
                                                 template_type=t.get("templatetype", "BUILTIN"),
                                                 public=t.get("public", True), featured=t.get("featured", True),
                                                 displaytext=t.get("displaytext"))
            report.append(f"{'created' if created else 'unchanged'} template {t['name']}")
            continue
        raise InvalidParameter(f"Template {t.get('name')}: give file (a host path); URL templates are registered "
                               "with registerTemplate")


def _zone(s, name, what):
    zone = s.scalar(select(Zone).where(Zone.name == name))
    if zone is None:
        raise InvalidParameter(f"{what}: no zone named {name}")
    return zone


register_section("settings", _settings, 35)      # after zones and accounts: scoped values name them
register_section("image_stores", _image_stores, 55)
register_section("templates", _templates, 60)
register_section("disk_offerings", _disk_offerings, 40)
register_section("service_offerings", _service_offerings, 41)
register_section("storage_pools", _storage_pools, 50)
register_section("zones", _zones, 20)
register_section("accounts", _accounts, 30)
