"""Guest OS types and categories: listOsTypes, listOsCategories, addGuestOs, updateGuestOs, removeGuestOs."""
from volstack.api.commands.common import obj, paged
from volstack.api.registry import API, BOOLEAN, MAP, ROOT, STRING, USER, UUID, Field as F, Param as P, Success, View
from volstack.services import catalog, guest_os


def _item(key):
    return lambda r, lk: r[key]


OSTYPE_FIELDS = [
    F("id", "the ID of the OS type", _item("id")),
    F("description", "the name/description of the OS type", _item("description")),
    F("name", "the name of the OS type", _item("name")),
    F("oscategoryid", "the ID of the OS category", _item("oscategoryid")),
    F("oscategoryname", "the name of the OS category", _item("oscategoryname")),
    F("isuserdefined", "is the guest OS user defined", _item("isuserdefined"), "boolean"),
    F("fordisplay", "is the guest OS visible for the users", _item("fordisplay"), "boolean"),
]
OSTYPE = View("ostype", OSTYPE_FIELDS)
GUESTOS = View("guestos", OSTYPE_FIELDS)         # addGuestOs/updateGuestOs answer one under this key


@API.command("listOsTypes", "Lists all supported OS types for this cloud.", [
    P("id", UUID, "list by Os type Id"),
    P("oscategoryid", UUID, "list by Os Category id"),
    P("description", STRING, "list os by description"),
    P("fordisplay", BOOLEAN, "list resources by display flag; only ROOT admin is eligible to pass this parameter",
      access=ROOT),
], view=OSTYPE, is_list=True, access=USER)
def list_os_types(req, p):
    shown = p.fordisplay if req.ctx.is_root_admin else True
    items = [t for t in catalog.os_types(req.s)
             if (not p.id or t["id"] == p.id) and (not p.oscategoryid or t["oscategoryid"] == p.oscategoryid)
             and (not p.description or p.description.lower() in t["description"].lower())
             and (not p.keyword or p.keyword.lower() in t["description"].lower())
             and (shown is None or t["fordisplay"] == shown)]
    return paged(req, p, OSTYPE, items)


@API.command("listOsCategories", "Lists all supported OS categories for this cloud.", [
    P("id", UUID, "list Os category by id"), P("name", STRING, "list os category by name")],
    view=View("oscategory", [F("id", "the ID of the OS category", lambda r, lk: r["id"]),
                             F("name", "the name of the OS category", lambda r, lk: r["name"])]),
    is_list=True, access=USER)
def list_os_categories(req, p):
    items = [{"id": catalog.os_category_id(c), "name": c} for c in catalog.OS_CATEGORIES
             if (not p.id or catalog.os_category_id(c) == p.id) and (not p.name or p.name.lower() == c.lower())
             and (not p.keyword or p.keyword.lower() in c.lower())]
    return paged(req, p, API.get("listOsCategories").view, items)


@API.command("addGuestOs", "Add a new guest OS type", [
    P("oscategoryid", UUID, "ID of Guest OS category", required=True),
    P("osdisplayname", STRING, "Unique display name for Guest OS", required=True),
    P("name", STRING, "Optional name for Guest OS"),
    P("details", MAP, "Map of (key/value pairs)"),
    P("fordisplay", BOOLEAN, "whether this guest OS is available for end users"),
], view=GUESTOS, is_async=True, since="4.4.0", instance_type="GuestOs", instance_param="id",
   prepare=lambda req, p: guest_os.add(req.s, req.ctx, oscategoryid=p.oscategoryid, osdisplayname=p.osdisplayname,
                                       name=p.name, details=p.details, fordisplay=p.fordisplay).uuid)
def add_guest_os(req, p):
    return obj(req, GUESTOS, catalog.os_type(p.id, req.s))


@API.command("updateGuestOs", "Updates the information about Guest OS", [
    P("id", UUID, "UUID of the Guest OS", required=True),
    P("osdisplayname", STRING, "Unique display name for Guest OS", required=True),
    P("details", MAP, "Map of (key/value pairs)"),
    P("fordisplay", BOOLEAN, "whether this guest OS is available for end users"),
], view=GUESTOS, is_async=True, since="4.4.0", instance_type="GuestOs", instance_param="id", on_interrupt="retry")
def update_guest_os(req, p):
    row = guest_os.update(req.s, req.ctx, p.id, osdisplayname=p.osdisplayname, details=p.details,
                          fordisplay=p.fordisplay)
    return obj(req, GUESTOS, catalog.os_type(row.uuid, req.s))


@API.command("removeGuestOs", "Removes a Guest OS from listing.", [
    P("id", UUID, "ID of the guest OS", required=True),
], response_key="success", is_async=True, since="4.4.0", instance_type="GuestOs", instance_param="id")
def remove_guest_os(req, p):
    guest_os.remove(req.s, req.ctx, p.id)
    return Success()
