"""Settings and capabilities."""
from volstack.api.commands.common import list_query
from volstack.api.registry import API, STRING, USER, UUID, Lst, Obj, Param as P
from volstack.api.registry import Field as F
from volstack.api.views import CONFIGURATION, View, capabilities
from volstack.services import configs

SCOPE_PARAMS = [
    P("zoneid", UUID, "the ID of the Zone to update the parameter value for corresponding zone", entity="Zone"),
    P("clusterid", UUID, "the ID of the Cluster to update the parameter value for corresponding cluster", entity="Cluster"),
    P("storageid", UUID, "the ID of the Storage pool to update the parameter value for corresponding storage pool"),
    P("accountid", UUID, "the ID of the Account to update the parameter value for corresponding account", entity="Account"),
    P("domainid", UUID, "the ID of the Domain to update the parameter value for corresponding domain", entity="Domain"),
    P("imagestoreuuid", UUID, "the ID of the Image Store to update the parameter value for corresponding image store"),
]
# resetConfiguration names the image store imagestoreid (list/updateConfiguration: imagestoreuuid), as CloudStack does
RESET_SCOPE_PARAMS = [P("imagestoreid", UUID, "the ID of the Image Store to reset the parameter value for "
                        "corresponding image store") if p.name == "imagestoreuuid" else p for p in SCOPE_PARAMS]


def _scopes(p) -> dict:
    return {"zone": p.zoneid, "cluster": p.clusterid, "storagepool": p.storageid, "account": p.accountid,
            "domain": p.domainid, "imagestore": p.imagestoreuuid or p.imagestoreid}


@API.command("listConfigurations", "Lists all configurations.", [
    P("name", STRING, "lists configuration by name"),
    P("category", STRING, "lists configurations by category"),
    *SCOPE_PARAMS], view=CONFIGURATION, is_list=True)
def list_configurations(req, p):
    q = list_query(req, p)
    rows = configs.list_configurations(req.s, req.ctx, _scopes(p), p.name, p.category, p.keyword)
    total = len(rows)
    if q.pagesize not in (None, -1):
        rows = rows[(q.page - 1) * q.pagesize: q.page * q.pagesize]
    return Lst(CONFIGURATION.key, [CONFIGURATION.render(r, None) for r in rows], total)


@API.command("updateConfiguration", "Updates a configuration.", [
    P("name", STRING, "the name of the configuration", required=True),
    P("value", STRING, "the value of the configuration", length=4096),
    *SCOPE_PARAMS], view=CONFIGURATION)
def update_configuration(req, p):
    row = configs.update_configuration(req.s, req.ctx, p.name, p.value, _scopes(p))
    return Obj(CONFIGURATION.key, CONFIGURATION.render(row, None))


@API.command("resetConfiguration", "Resets a configuration. The configuration will be set to default value for global setting, and removed from account/domain/zone/cluster/storage pool/image store level settings", [
    P("name", STRING, "the name of the configuration", required=True), *RESET_SCOPE_PARAMS], view=CONFIGURATION, since="4.16.0")
def reset_configuration(req, p):
    row = configs.reset_configuration(req.s, req.ctx, p.name, _scopes(p))
    return Obj(CONFIGURATION.key, CONFIGURATION.render(row, None))


CAPABILITY = View("capability", [F("cloudstackversion", "version of the cloud stack", lambda r, lk: r["cloudstackversion"]),
                                 F("volstackversion", "version of volstack", lambda r, lk: r["volstackversion"])])


@API.command("listCapabilities", "Lists capabilities", [], view=CAPABILITY, access=USER)
def list_capabilities(req, p):
    return Obj("capability", capabilities(req.s))
