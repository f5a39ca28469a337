"""Response objects: each kind declared once as a View (JSON key, fields, descriptions).

The same declarations render responses and fill listApis' `response` lists.
"""
import functools

from sqlalchemy import inspect as sa_inspect, select

from volstack import CLOUDSTACK_VERSION, __version__
from volstack.api.registry import ROOT, Field as F, View
from volstack.api.wire import date
from volstack.db import models as m
from volstack.services import tags as tag_service
from volstack.services.settings import Settings, key_by_name


class Lookups:
    """Row lookups while rendering one response, batched per page.

    `render_all` renders a page in passes: a gathering pass records every (model, id) the fields ask for
    (and every `batched` value: a per-row aggregate or child list), then each model's rows are loaded with
    one IN query and each batched function is called once for all the page's keys; references of
    references (a user's account's domain) take one more pass. So a page costs one query per referenced
    model whatever its size. Fields only need to read through `get`/`attr`/`batched`; a field that runs
    its own query per row would undo this (tests/test_list_statements.py counts them)."""

    ROUNDS = 6

    def __init__(self, s, rows=()):
        self.s, self._cache = s, {}
        self._wanted = None          # {fn: set(keys)} during a gathering pass

    def batched(self, fn, key):
        """fn(session, keys) -> {key: value} for many keys at once; None for a key it leaves out."""
        if key is None:
            return None
        k = (fn, key)
        if k in self._cache:
            return self._cache[k]
        if self._wanted is not None:
            self._wanted.setdefault(fn, set()).add(key)
            return None
        self._cache[k] = fn(self.s, [key]).get(key)
        return self._cache[k]

    def get(self, model, id):
        return self.batched(rows_by_key(model), id)

    def attr(self, model, id, name):
        row = self.get(model, id)
        return getattr(row, name) if row is not None else None

    def render_all(self, view, rows) -> list[dict]:
        rows = list(rows)
        lookups = [f for f in view.fields if not getattr(f.get, "pure", False)]
        for round_ in range(self.ROUNDS):
            self._wanted, errors = {}, []
            try:       # a field failing on a value still missing is retried; the real pass would raise it
                # the first pass only gathers (fields that read only their row are left for later)
                out = [view.render(r, self, errors, lookups if round_ == 0 else None) for r in rows]
            finally:
                wanted, self._wanted = self._wanted, None
            if not wanted:
                if not errors and round_ > 0:
                    return out            # a full pass that missed nothing is the page
                break
            for fn, keys in wanted.items():
                keys = list(keys)
                found = {}
                for i in range(0, len(keys), 900):       # below every database's bound-parameter limit
                    found.update(fn(self.s, keys[i:i + 900]))
                self._cache.update({(fn, key): found.get(key) for key in keys})
        return [view.render(r, self) for r in rows]


@functools.cache
def rows_by_key(model, column: str | None = None):
    """The loader of model's rows by its primary key (or a unique column) for Lookups.batched."""
    col = getattr(model, column) if column else sa_inspect(model).primary_key[0]
    name = col.key

    def load(s, keys):
        return {getattr(r, name): r for r in s.scalars(select(model).where(col.in_(keys)))}
    load.__qualname__ = f"rows_by_key({model.__name__})"
    return load


@functools.cache
def children_of(model, column: str, order_by: str = "id"):
    """The loader of model's rows grouped by column (a foreign key): {key: [rows]} for Lookups.batched."""
    col = getattr(model, column)

    def load(s, keys):
        out = {}
        for r in s.scalars(select(model).where(col.in_(keys)).order_by(getattr(model, order_by))):
            out.setdefault(getattr(r, column), []).append(r)
        return out
    load.__qualname__ = f"children_of({model.__name__}.{column})"
    return load


def pure(fn):
    """Marks a field getter that reads only its row (no lookups): the first gathering pass skips it."""
    fn.pure = True
    return fn


def _a(attr):
    return pure(lambda r, lk: getattr(r, attr))


def _ref(model, id_attr, field="uuid"):
    return lambda r, lk: lk.attr(model, getattr(r, id_attr), field)


def _date(attr):
    return pure(lambda r, lk: date(getattr(r, attr)))


def _domain_path_of(domain_id):
    return lambda r, lk: _domain_path(lk, getattr(r, domain_id))


TAG = View("tag", [
    F("key", "tag key name", _a("key")),
    F("value", "tag value", _a("value")),
    F("resourcetype", "resource type", _a("resource_type")),
    F("resourceid", "id of the resource", _a("resource_uuid")),
    F("account", "the account associated with the tag", _ref(m.Account, "account_id", "name")),
    F("domainid", "the ID of the domain associated with the tag", _ref(m.Domain, "domain_id")),
    F("domain", "the domain associated with the tag", _ref(m.Domain, "domain_id", "name")),
    F("domainpath", "path of the Domain associated with the tag", _domain_path_of("domain_id")),
    F("customer", "customer associated with the tag", _a("customer")),
])


@functools.cache
def _tags_loader(kinds: tuple):
    """The Lookups.batched loader of the tags of resources of these CloudStack types: one query per page."""
    def load(s, ids):
        got = tag_service.by_resource(s, kinds, ids)
        return {i: got.get(i, []) for i in ids}
    load.__qualname__ = f"tags({','.join(kinds)})"
    return load


def tags_field(*kinds: str) -> F:
    """The `tags` of a response: always present, [] when the resource has none. kinds: the CloudStack resource
    type(s) of the rows (templates and ISOs share a table)."""
    loader = _tags_loader(kinds)

    def get(r, lk):
        return [TAG.render(t, lk) for t in lk.batched(loader, r.id)]
    return F("tags", "the list of resource tags associated", get, "list")


ZONE = View("zone", [
    F("id", "the UUID of the zone", _a("uuid")),
    F("name", "the name of the zone", _a("name")),
    F("description", "the description of the zone", _a("description")),
    F("dns1", "the first DNS for the zone", _a("dns1"), access=ROOT),
    F("dns2", "the second DNS for the zone", _a("dns2"), access=ROOT),
    F("internaldns1", "the first internal DNS for the zone", _a("internal_dns1"), access=ROOT),
    F("internaldns2", "the second internal DNS for the zone", _a("internal_dns2"), access=ROOT),
    F("ip6dns1", "the first IPv6 DNS for the zone", _a("ip6_dns1"), access=ROOT),
    F("ip6dns2", "the second IPv6 DNS for the zone", _a("ip6_dns2"), access=ROOT),
    F("guestcidraddress", "the guest CIDR address for the zone", _a("guest_cidr"), access=ROOT),
    F("domain", "Network domain name for the networks in the zone", _a("network_domain")),
    F("domainid", "the UUID of the containing domain, null for public zones", _ref(m.Domain, "domain_id")),
    F("domainname", "the name of the containing domain, null for public zones", _ref(m.Domain, "domain_id", "name")),
    F("networktype", "the network type of the zone; can be Basic or Advanced", _a("network_type")),
    F("allocationstate", "the allocation state of the cluster", _a("allocation_state"), ),
    F("localstorageenabled", "true if local storage offering enabled, false otherwise", _a("local_storage_enabled"), "boolean"),
    F("securitygroupsenabled", "true if security groups support is enabled, false otherwise", _a("security_group_enabled"), "boolean"),
    F("dhcpprovider", "the dhcp Provider for the Zone", lambda r, lk: "VirtualRouter"),
    F("zonetoken", "Zone Token", lambda r, lk: r.uuid),
    F("type", "the type of the zone - core or edge", lambda r, lk: "Core"),
    F("created", "the date this zone was created", _date("created"), "date"),
    tags_field("Zone"),
])

POD = View("pod", [
    F("id", "the ID of the Pod", _a("uuid")),
    F("name", "the name of the Pod", _a("name")),
    F("zoneid", "the Zone ID of the Pod", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the Pod", _ref(m.Zone, "zone_id", "name")),
    F("gateway", "the gateway of the Pod", _a("gateway")),
    F("netmask", "the netmask of the Pod", _a("netmask")),
    F("startip", "the starting IP for the Pod", _a("start_ip")),
    F("endip", "the ending IP for the Pod", _a("end_ip")),
    F("allocationstate", "the allocation state of the Pod", _a("allocation_state")),
])

CLUSTER = View("cluster", [
    F("id", "the cluster ID", _a("uuid")),
    F("name", "the cluster name", _a("name")),
    F("podid", "the Pod ID of the cluster", _ref(m.Pod, "pod_id")),
    F("podname", "the Pod name of the cluster", _ref(m.Pod, "pod_id", "name")),
    F("zoneid", "the Zone ID of the cluster", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the cluster", _ref(m.Zone, "zone_id", "name")),
    F("hypervisortype", "the hypervisor type of the cluster", _a("hypervisor")),
    F("clustertype", "the type of the cluster", _a("cluster_type")),
    F("allocationstate", "the allocation state of the cluster", _a("allocation_state")),
    F("managedstate", "whether this cluster is managed by CloudStack", _a("managed_state")),
    F("cpuovercommitratio", "The cpu overcommit ratio of the cluster", lambda r, lk: "1.0"),
    F("memoryovercommitratio", "The memory overcommit ratio of the cluster", lambda r, lk: "1.0"),
])

HOST = View("host", [
    F("id", "the ID of the host", _a("uuid")),
    F("name", "the name of the host", _a("name")),
    F("type", "the host type", _a("host_type")),
    F("state", "the state of the host", _a("state")),
    F("resourcestate", "the resource state of the host", _a("resource_state")),
    F("hypervisor", "the host hypervisor", _a("hypervisor")),
    F("ipaddress", "the IP address of the host", _a("ip_address")),
    F("hosttags", "comma-separated list of tags for the host", _a("host_tags")),
    F("version", "the host version", _a("version")),
    F("zoneid", "the Zone ID of the host", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the host", _ref(m.Zone, "zone_id", "name")),
    F("podid", "the Pod ID of the host", _ref(m.Pod, "pod_id")),
    F("podname", "the Pod name of the host", _ref(m.Pod, "pod_id", "name")),
    F("clusterid", "the cluster ID of the host", _ref(m.Cluster, "cluster_id")),
    F("clustername", "the cluster name of the host", _ref(m.Cluster, "cluster_id", "name")),
    F("clustertype", "the cluster type of the cluster that host belongs to", _ref(m.Cluster, "cluster_id", "cluster_type")),
    F("lastpinged", "the date and time the host was last pinged", _date("last_ping"), "date"),
    F("created", "the date and time the host was created", _date("created"), "date"),
])

DOMAIN = View("domain", [
    F("id", "the ID of the domain", _a("uuid")),
    F("name", "the name of the domain", _a("name")),
    F("path", "the path of the domain", lambda r, lk: "ROOT" + r.path.rstrip("/") if r.path != "/" else "ROOT"),
    F("level", "the level of the domain", _a("level"), "integer"),
    F("parentdomainid", "the domain ID of the parent domain", _ref(m.Domain, "parent_id")),
    F("parentdomainname", "the domain name of the parent domain", _ref(m.Domain, "parent_id", "name")),
    F("networkdomain", "the network domain", _a("network_domain")),
    F("haschild", "whether the domain has one or more sub-domains",
      lambda r, lk: bool(lk.batched(children_of(m.Domain, "parent_id"), r.id)), "boolean"),
    F("created", "the date when this domain was created", _date("created"), "date"),
])


def _domain_path(lk, domain_id):
    d = lk.get(m.Domain, domain_id)
    return "ROOT" + d.path.rstrip("/") if d and d.path != "/" else "ROOT"


def _limits(s, ids):
    from volstack.services import limits
    return limits.limits_many(s, ids)


def _usages(s, ids):
    from volstack.services import limits
    return limits.usage_many(s, ids)


def _default_limits(s, keys):
    from volstack.services import limits
    return {"defaults": limits.default_limits(s)}


def _limit_fields(rtype, what):
    from volstack.services import limits
    from volstack.services.context import ROOT_ADMIN

    def limit_value(r, lk):
        explicit = (lk.batched(_limits, r.id) or {}).get(rtype)
        if explicit is not None:
            return explicit
        return -1 if r.account_type == ROOT_ADMIN else lk.batched(_default_limits, "defaults")[rtype]

    def limit(r, lk):
        v = limit_value(r, lk)
        return "Unlimited" if v < 0 else str(v)

    def total(r, lk):
        u = (lk.batched(_usages, r.id) or {}).get(rtype, 0)
        return u // limits.GIB if rtype.endswith("_storage") else u

    def avail(r, lk):
        v = limit_value(r, lk)
        if v < 0:
            return "Unlimited"
        return str(max(0, v - total(r, lk)))
    return [F(f"{what}limit", f"the total {what} which can be used by this account", limit),
            F(f"{what}total", f"the total {what} being used by this account", total, "long"),
            F(f"{what}available", f"the total {what} available to be used for this account", avail)]


ACCOUNT = View("account", [
    F("id", "the id of the account", _a("uuid")),
    F("name", "the name of the account", _a("name")),
    F("accounttype", "account type (admin, domain-admin, user)", _a("account_type"), "integer"),
    F("roleid", "the ID of the role", _ref(m.Role, "role_id")),
    F("rolename", "the name of the role", _ref(m.Role, "role_id", "name")),
    F("roletype", "the type of the role (Admin, ResourceAdmin, DomainAdmin, User)", _ref(m.Role, "role_id", "role_type")),
    F("domainid", "id of the Domain the account belongs to", _ref(m.Domain, "domain_id")),
    F("domain", "name of the Domain the account belongs to", _ref(m.Domain, "domain_id", "name")),
    F("domainpath", "path of the Domain the account belongs to", lambda r, lk: _domain_path(lk, r.domain_id)),
    F("state", "the state of the account", _a("state")),
    F("networkdomain", "the network domain", _a("network_domain")),
    F("isdefault", "true if account is default, false otherwise", lambda r, lk: r.id in (1, 2), "boolean"),
    F("created", "the date when this account was created", _date("created"), "date"),
    F("user", "the list of users associated with account",
      lambda r, lk: [USER.render(u, lk) for u in lk.batched(children_of(m.User, "account_id"), r.id) or []], "list"),
    *_limit_fields("volume", "volume"), *_limit_fields("snapshot", "snapshot"), *_limit_fields("template", "template"),
    *_limit_fields("primary_storage", "primarystorage"), *_limit_fields("secondary_storage", "secondarystorage"),
])

USER = View("user", [
    F("id", "the user ID", _a("uuid")),
    F("username", "the user name", _a("username")),
    F("firstname", "the user firstname", _a("firstname")),
    F("lastname", "the user lastname", _a("lastname")),
    F("email", "the user email address", _a("email")),
    F("state", "the user state", _a("state")),
    F("timezone", "the timezone user was created in", _a("timezone")),
    F("accountid", "the account ID of the user", _ref(m.Account, "account_id")),
    F("account", "the account name of the user", _ref(m.Account, "account_id", "name")),
    F("accounttype", "the account type of the user", _ref(m.Account, "account_id", "account_type"), "integer"),
    F("domainid", "the domain ID of the user", lambda r, lk: lk.attr(m.Domain, lk.attr(m.Account, r.account_id, "domain_id"), "uuid")),
    F("domain", "the domain name of the user", lambda r, lk: lk.attr(m.Domain, lk.attr(m.Account, r.account_id, "domain_id"), "name")),
    F("apikey", "the api key of the user", _a("api_key")),
    F("isdefault", "true if user is default, false otherwise", lambda r, lk: r.id in (1, 2), "boolean"),
    F("created", "the date and time the user account was created", _date("created"), "date"),
])

ROLE = View("role", [
    F("id", "the ID of the role", _a("uuid")),
    F("name", "the name of the role", _a("name")),
    F("type", "the type of the role", _a("role_type")),
    F("description", "the description of the role", _a("description")),
    F("isdefault", "true if role is default, false otherwise", lambda r, lk: True, "boolean"),
])

USERKEYS = View("userkeys", [
    F("apikey", "the api key of the registered user", lambda r, lk: r[0]),
    F("secretkey", "the secret key of the registered user", lambda r, lk: r[1]),
])

EVENT = View("event", [
    F("id", "the ID of the event", _a("uuid")),
    F("type", "the type of the event (see event types)", _a("event_type")),
    F("level", "the event level (INFO, WARN, ERROR)", _a("level")),
    F("state", "the state of the event", _a("state")),
    F("description", "a brief description of the event", _a("description")),
    F("resourcetype", "the type of the resource", _a("resource_type")),
    F("resourceid", "the id of the resource", _a("resource_uuid")),
    F("account", "the account name for the account that owns the object being acted on in the event",
      _ref(m.Account, "account_id", "name")),
    F("domainid", "the id of the account's domain", _ref(m.Domain, "domain_id")),
    F("domain", "the name of the account's domain", _ref(m.Domain, "domain_id", "name")),
    F("username", "the name of the user who performed the action", _ref(m.User, "user_id", "username")),
    F("created", "the date the event was created", _date("created"), "date"),
])


def _job_result(r, lk):
    return r.result if r.status != 0 else None


ASYNCJOB = View("asyncjobs", [
    F("jobid", "extra job id", _a("uuid")),
    F("accountid", "the account id that executed the async command", _ref(m.Account, "account_id")),
    F("account", "the account that executed the async command", _ref(m.Account, "account_id", "name")),
    F("domainid", "the domain id that executed the async command", _ref(m.Domain, "domain_id")),
    F("domainpath", "the domain that executed the async command", lambda r, lk: _domain_path(lk, r.domain_id)),
    F("userid", "the user that executed the async command", _ref(m.User, "user_id")),
    F("cmd", "the async command executed", _a("cmd")),
    F("jobstatus", "the current job status-should be 0 for PENDING", _a("status"), "integer"),
    F("jobprocstatus", "the progress information of the PENDING job", _a("proc_status"), "integer"),
    F("jobprogress", "how far the job has come, in percent (volstack)", _a("progress"), "integer"),
    F("jobresultcode", "the result code for the job", _a("result_code"), "integer"),
    F("jobresulttype", "the result type", _a("result_type")),
    F("jobresult", "the result reason", _job_result, "responseobject"),
    F("jobinstancetype", "the instance/entity object related to the job", _a("instance_type")),
    F("jobinstanceid", "the unique ID of the instance/entity object related to the job", _a("instance_uuid")),
    F("created", "the created date of the job", _date("created"), "date"),
    F("completed", "the completed date of the job", _date("completed"), "date"),
    F("managementserverid", "the msid of the management server on which the job is running",
      lambda r, lk: lk.attr(m.ManagementServer, r.owner_msid, "uuid")),
    F("managementservername", "the management server name of the host",
      lambda r, lk: lk.attr(m.ManagementServer, r.owner_msid, "name")),
])

CONFIGURATION = View("configuration", [
    F("name", "the name of the configuration", lambda r, lk: r["name"]),
    F("value", "the value of the configuration", lambda r, lk: r["value"]),
    F("defaultvalue", "the default value of the configuration", lambda r, lk: r["default"]),
    F("category", "the category of the configuration", lambda r, lk: r["category"]),
    F("description", "the description of the configuration", lambda r, lk: r["description"]),
    F("scope", "scope(zone/cluster/pool/account) of the parameter that needs to be updated", lambda r, lk: r["scope"]),
    F("type", "the type of the configuration value", lambda r, lk: r["type"]),
    F("isdynamic", "true if the configuration is dynamic", lambda r, lk: True, "boolean"),
    F("id", "the value's scope id: the zone, cluster, pool or account it applies to", lambda r, lk: r.get("id")),
])

RESOURCELIMIT = View("resourcelimit", [
    F("account", "the account of the resource limit", lambda r, lk: r["account"]),
    F("domainid", "the domain ID of the resource limit", lambda r, lk: r["domainid"]),
    F("domain", "the domain name of the resource limit", lambda r, lk: r["domain"]),
    F("resourcetype", "resource type. Values include 0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11.", lambda r, lk: str(r["type"])),
    F("resourcetypename", "resource type name", lambda r, lk: r["typename"]),
    F("max", "the maximum number of the resource. A -1 means the resource currently has no limit.", lambda r, lk: r["max"], "long"),
])

def login_response(s, user, session_key, ms) -> dict:
    acc = s.get(m.Account, user.account_id)
    dom = s.get(m.Domain, acc.domain_id)
    return {"timeout": str(_setting(s, "session.timeout")), "username": user.username,
            "userid": user.uuid, "domainid": dom.uuid, "account": acc.name, "firstname": user.firstname,
            "lastname": user.lastname, "type": str(acc.account_type), "timezone": user.timezone,
            "registered": "false", "sessionkey": session_key, "is2faenabled": "false", "is2faverified": "true",
            "managementserverid": ms.jobs.msid and str(ms.jobs.msid), "passwordchangerequired": False}


def _setting(s, name: str):
    """A setting read in the caller's session: on SQLite a second session would wait for this
    one's write lock (BEGIN IMMEDIATE) and fail with 'database is locked'."""
    return Settings.value_in(s, key_by_name(name))


def capabilities(s) -> dict:
    return {"cloudstackversion": CLOUDSTACK_VERSION, "volstackversion": __version__,
            "userpublictemplateenabled": True, "supportELB": "false", "projectinviterequired": False,
            "allowusercreateprojects": True, "customdiskofferingminsize": _setting(s, "custom.diskoffering.size.min"),
            "customdiskofferingmaxsize": _setting(s, "custom.diskoffering.size.max"),
            "kvmsnapshotenabled": _setting(s, "kvm.snapshot.enabled"),
            "allowuserexpungerecovervolume": _setting(s, "allow.user.expunge.recover.volume"),
            "apilimitinterval": 1, "apilimitmax": -1, "defaultuipagesize": 20}


def _item(key):
    return lambda r, lk: r.get(key)


# Files on a primary pool or an image store, with the volstack object each belongs to.
DATASTOREOBJECT = View("datastoreobject", [
    F("name", "Name of the data store object.", _item("name")),
    F("isdirectory", "Is it a directory.", _item("isdirectory"), "boolean"),
    F("size", "Size is in Bytes.", _item("size"), "long"),
    F("lastupdated", "Last modified date of the file/directory.", _item("lastupdated")),
    F("format", "Format of template associated with the data store object.", _item("format")),
    F("templateid", "Template ID associated with the data store object.", _item("templateid")),
    F("templatename", "Template Name associated with the data store object.", _item("templatename")),
    F("snapshotid", "Snapshot ID associated with the data store object.", _item("snapshotid")),
    F("snapshotname", "Snapshot Name associated with the data store object.", _item("snapshotname")),
    F("volumeid", "Volume ID associated with the data store object.", _item("volumeid")),
    F("volumename", "Volume Name associated with the data store object.", _item("volumename")),
])
