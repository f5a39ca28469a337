"""Guest OS types added by the administrator (addGuestOs/updateGuestOs/removeGuestOs). CloudStack's own catalogue
is data (catalog.py) and cannot be changed, as in CloudStack."""
from sqlalchemy import func, select

from volstack.db.image_models import Template
from volstack.db.tag_models import GuestOs, ResourceDetail
from volstack.errors import InvalidParameter, ResourceInUse
from volstack.services import catalog, events, tags
from volstack.services.context import require_root_admin

tags.register_kind(tags.Kind("GuestOs", GuestOs, False, True, owner=tags._system))


def _unique(s, display_name: str, other_than=None) -> None:
    low = display_name.lower()
    if any(t["description"].lower() == low for t in catalog.os_types()) or s.scalar(
            select(GuestOs.id).where(func.lower(GuestOs.display_name) == low, GuestOs.id != (other_than or 0))):
        raise InvalidParameter(f"The specified Guest OS name : {display_name} already exists. Please specify a "
                               "unique name")


def _user_defined(s, id: str) -> GuestOs:
    row = s.scalar(select(GuestOs).where(GuestOs.uuid == id))
    if row is None:
        if catalog.os_type(id) is not None:
            raise InvalidParameter(f"Guest OS {catalog.os_type(id)['description']} is part of CloudStack's catalogue "
                                   "and cannot be changed; add your own with addGuestOs")
        raise InvalidParameter(f"Unable to find guest OS by id {id}")
    return row


def _set_details(s, row, details) -> None:
    for key, value in tags.pairs(details, name="details"):
        s.query(ResourceDetail).filter_by(resource_type="GuestOs", resource_id=row.id, name=key).delete()
        s.add(ResourceDetail(resource_type="GuestOs", resource_id=row.id, name=key, value=value or "", display=True))


def add(s, ctx, *, oscategoryid, osdisplayname, name=None, details=None, fordisplay=None) -> GuestOs:
    require_root_admin(ctx)
    if oscategoryid not in catalog.CATEGORY_NAMES:
        raise InvalidParameter(f"Unable to find guest OS category by id {oscategoryid}: see listOsCategories")
    _unique(s, osdisplayname)
    row = GuestOs(category_uuid=oscategoryid, display_name=osdisplayname, name=name,
                  display=True if fordisplay is None else fordisplay)
    s.add(row)
    s.flush()
    _set_details(s, row, details)
    events.record(s, ctx, "GUEST.OS.ADD", f"Guest OS {osdisplayname} added", resource_type="GuestOs",
                  resource_uuid=row.uuid)
    return row


def update(s, ctx, id, *, osdisplayname, details=None, fordisplay=None) -> GuestOs:
    require_root_admin(ctx)
    row = _user_defined(s, id)
    if osdisplayname != row.display_name:
        _unique(s, osdisplayname, other_than=row.id)
        row.display_name = osdisplayname
    if fordisplay is not None:
        row.display = fordisplay
    _set_details(s, row, details)
    events.record(s, ctx, "GUEST.OS.UPDATE", f"Guest OS {osdisplayname} updated", resource_type="GuestOs",
                  resource_uuid=row.uuid)
    return row


def remove(s, ctx, id) -> None:
    require_root_admin(ctx)
    row = _user_defined(s, id)
    used = s.scalar(select(func.count()).select_from(Template).where(Template.os_type == row.uuid,
                                                                     Template.removed.is_(None)))
    if used:
        raise ResourceInUse(f"Guest OS {row.display_name} is the OS type of {used} template(s) or ISO(s); change "
                            "their ostypeid first")
    s.delete(row)
    events.record(s, ctx, "GUEST.OS.REMOVE", f"Guest OS {row.display_name} removed", resource_type="GuestOs",
                  resource_uuid=row.uuid)
