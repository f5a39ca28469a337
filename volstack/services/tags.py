"""Resource tags (createTags/deleteTags/listTags, the `tags` of responses and the `tags[i].key/value` filters of
list commands) and resource details (addResourceDetail/removeResourceDetail/listResourceDetails).

Which resource types take tags and which take details is CloudStack's table (ResourceTag.ResourceObjectType),
narrowed to the types volstack has. A tag carries its resource owner's account and domain. Tags and details of a
resource go when the resource is removed (deleted, or its `removed` date set): one flush hook, not a call at
every removal site.
"""
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import and_, delete, event, func, inspect, or_, select
from sqlalchemy.orm import Session

from volstack.db import models as m
from volstack.db.image_models import Template
from volstack.db.snapshot_models import Snapshot, SnapshotPolicy
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, VirtualMachine, Volume
from volstack.db.tag_models import ResourceDetail, ResourceTag
from volstack.db.vm_snapshot_models import VMSnapshot
from volstack.errors import InvalidParameter, PermissionDenied
from volstack.services.context import check_access, owner_filter
from volstack.services.listing import ListQuery, keyword_filter, paginate

SYSTEM_ACCOUNT, ROOT_DOMAIN = 1, 1


def _owned(s, row):
    return row.account_id, row.domain_id


def _of_volume(s, row):
    vol = s.get(Volume, row.volume_id)
    return vol.account_id, vol.domain_id


def _user(s, row):
    acc = s.get(m.Account, row.account_id)
    return acc.id, acc.domain_id


def _system(s, row):
    return SYSTEM_ACCOUNT, ROOT_DOMAIN


@dataclass(frozen=True)
class Kind:
    name: str                      # CloudStack's ResourceObjectType
    model: type
    tags: bool                     # resourceTagsSupport
    details: bool                  # resourceMetadataSupport
    owner: Callable = _owned       # (s, row) -> (account id, domain id)
    where: Callable | None = None  # () -> extra condition selecting this kind's rows in a shared table

    def condition(self):
        return self.where() if self.where else None


KINDS = {k.name.lower(): k for k in [
    Kind("UserVm", VirtualMachine, True, True),
    Kind("Template", Template, True, True, where=lambda: Template.format != "ISO"),
    Kind("ISO", Template, True, False, where=lambda: Template.format == "ISO"),
    Kind("Volume", Volume, True, True),
    Kind("Snapshot", Snapshot, True, False),
    Kind("VMSnapshot", VMSnapshot, True, False),
    Kind("SnapshotPolicy", SnapshotPolicy, True, True, owner=_of_volume),
    Kind("Account", m.Account, True, False, owner=lambda s, row: (row.id, row.domain_id)),
    Kind("User", m.User, True, True, owner=_user),
    Kind("Zone", m.Zone, False, True, owner=_system),
    Kind("Storage", StoragePool, False, True, owner=_system),
    Kind("ServiceOffering", ServiceOffering, False, True, owner=_system),
    Kind("DiskOffering", DiskOffering, False, True, owner=_system),
]}
_NAMES_BY_MODEL: dict[type, list[str]] = {}
for _k in KINDS.values():
    _NAMES_BY_MODEL.setdefault(_k.model, []).append(_k.name)


def register_kind(kind: Kind) -> None:
    """Subsystems added later (guest OS types, projects) make their resources taggable here."""
    KINDS[kind.name.lower()] = kind
    _NAMES_BY_MODEL.setdefault(kind.model, []).append(kind.name)


def kind_of(resourcetype: str, *, for_tags=True) -> Kind:
    kind = KINDS.get((resourcetype or "").lower())
    if kind is None:
        raise InvalidParameter(f"Invalid resource type {resourcetype}: one of {', '.join(_supported(for_tags))}")
    if for_tags and not kind.tags:
        raise InvalidParameter(f"The resource type {kind.name} doesn't support resource tags")
    if not for_tags and not kind.details:
        raise InvalidParameter(f"The resource type {kind.name} doesn't support metadata (resource details)")
    return kind


def _supported(for_tags):
    return sorted(k.name for k in KINDS.values() if (k.tags if for_tags else k.details))


def _resource(s, ctx, kind: Kind, uuid: str, action: str):
    conds = [kind.model.uuid == uuid]
    if kind.where:
        conds.append(kind.where())
    if hasattr(kind.model, "removed"):
        conds.append(kind.model.removed.is_(None))
    row = s.scalar(select(kind.model).where(*conds))
    if row is None:
        raise InvalidParameter(f"Unable to find resource by id {uuid} and type {kind.name}")
    account_id, domain_id = kind.owner(s, row)
    if account_id == SYSTEM_ACCOUNT or kind.owner is _system:
        if not ctx.is_root_admin:
            raise PermissionDenied(f"Account {ctx.account_name} doesn't have permissions to {action} "
                                   f"{kind.name} {uuid}")
    else:
        check_access(s, ctx, account_id, f"{kind.name} {uuid}")
    return row, account_id, domain_id


def pairs(entries: dict | None, *, name: str, need_value=True) -> list[tuple[str, str | None]]:
    """A map parameter given as name[i].key / name[i].value, in index order."""
    out = []
    for _, e in sorted((entries or {}).items(), key=lambda kv: int(kv[0])):
        key, value = e.get("key"), e.get("value")
        if not key:
            raise InvalidParameter(f"{name}: every entry needs a key ({name}[i].key=...)")
        if need_value and value is None:
            raise InvalidParameter(f"No value is passed in for key {key}")
        out.append((key, value))
    return out


# ---------------------------------------------------------------- tags

def create_tags(s, ctx, resourceids: list[str], resourcetype: str, tags: dict, customer=None) -> list[ResourceTag]:
    kind = kind_of(resourcetype)
    wanted = pairs(tags, name="tags")
    if not wanted:
        raise InvalidParameter("Pass at least one tag: tags[0].key=...&tags[0].value=...")
    made = []
    for uuid in resourceids:
        row, account_id, domain_id = _resource(s, ctx, kind, uuid, "create tags for")
        made += add_tags(s, kind, row, wanted, account_id, domain_id, customer)
    return made


def add_tags(s, kind: Kind, row, wanted, account_id, domain_id, customer=None) -> list[ResourceTag]:
    """Tag one resource (also createSnapshot/createSnapshotPolicy's `tags`); a key may be on it once."""
    made = []
    for key, value in wanted:
        if not value:
            raise InvalidParameter(f"Value for the key {key} is either null or empty")
        if len(key) > 255 or len(value) > 255:
            raise InvalidParameter(f"Tag {key}: keys and values are at most 255 characters")
        have = s.scalar(select(ResourceTag.value).where(
            ResourceTag.resource_type == kind.name, ResourceTag.resource_id == row.id, ResourceTag.key == key))
        if have is not None:
            raise InvalidParameter(f"tag {key} already on {kind.name} with id {row.uuid} (value {have}): "
                                   f"delete it first to change its value")
        tag = ResourceTag(key=key, value=value, resource_type=kind.name, resource_id=row.id,
                          resource_uuid=row.uuid, customer=customer, account_id=account_id, domain_id=domain_id)
        s.add(tag)
        s.flush()
        made.append(tag)
    return made


def set_tags(s, kind_name: str, row, tags: dict | None) -> None:
    """The `tags` parameter of createSnapshot and createSnapshotPolicy: tags of the row it creates (or of the policy
    it updates: a key given again takes the new value)."""
    wanted = pairs(tags, name="tags")
    if not wanted:
        return
    kind = KINDS[kind_name.lower()]
    account_id, domain_id = kind.owner(s, row)
    s.execute(delete(ResourceTag).where(ResourceTag.resource_type == kind.name, ResourceTag.resource_id == row.id,
                                        ResourceTag.key.in_([k for k, _ in wanted])))
    add_tags(s, kind, row, wanted, account_id, domain_id)


def delete_tags(s, ctx, resourceids: list[str], resourcetype: str, tags: dict | None) -> int:
    """Keys and values match ignoring case; a key without a value removes that key whatever its value;
    no tags removes every tag of the resources."""
    kind = kind_of(resourcetype)
    wanted = [(k.lower(), v.lower() if v is not None else None) for k, v in pairs(tags, name="tags", need_value=False)]
    rows = [_resource(s, ctx, kind, uuid, "delete tags of")[0] for uuid in resourceids]
    found = s.scalars(select(ResourceTag).where(ResourceTag.resource_type == kind.name,
                                                ResourceTag.resource_id.in_([r.id for r in rows]))).all()
    doomed = [t for t in found if not wanted or any(
        t.key.lower() == k and (v is None or t.value.lower() == v) for k, v in wanted)]
    if not doomed:
        raise InvalidParameter(f"No tags to delete: {resourcetype} {', '.join(resourceids)} has none of "
                               f"{', '.join(k for k, _ in wanted) or 'any'}")
    for t in doomed:
        if t.account_id != ctx.account_id:
            check_access(s, ctx, t.account_id, "resource tag")
        s.delete(t)
    return len(doomed)


def list_tags(s, ctx, q: ListQuery, *, key=None, value=None, resourceid=None, resourcetype=None, customer=None):
    conds = owner_filter(s, ctx, ResourceTag, listall=q.listall, isrecursive=q.isrecursive, account=q.account,
                         domain_uuid=q.domainid)
    if resourcetype:
        conds.append(ResourceTag.resource_type == kind_of(resourcetype).name)
    if resourceid:
        conds.append(ResourceTag.resource_uuid == resourceid)
    if key:
        conds.append(func.lower(ResourceTag.key) == key.lower())
    if value:
        conds.append(func.lower(ResourceTag.value) == value.lower())
    if customer:
        conds.append(ResourceTag.customer == customer)
    conds += keyword_filter(q, ResourceTag.key, ResourceTag.value)
    return paginate(s, select(ResourceTag).where(*conds).order_by(ResourceTag.id), q)


def by_resource(s, kind_names, ids) -> dict[int, list[ResourceTag]]:
    """Tags of many resources in one query: {resource id: [tags]}."""
    out: dict[int, list[ResourceTag]] = {}
    if not ids:
        return out
    names = [kind_names] if isinstance(kind_names, str) else list(kind_names)
    for t in s.scalars(select(ResourceTag).where(ResourceTag.resource_type.in_(names),
                                                 ResourceTag.resource_id.in_(list(ids))).order_by(ResourceTag.id)):
        out.setdefault(t.resource_id, []).append(t)
    return out


def kinds_of_model(model) -> list[str]:
    return _NAMES_BY_MODEL.get(model, [])


def tag_filter(model, tags: dict | None) -> list:
    """The `tags[i].key/value` filter of list commands, as CloudStack's: rows carrying any of the pairs (key and
    value compared ignoring case, as on CloudStack's MySQL). Pairs that match no tag select nothing."""
    wanted = pairs(tags, name="tags")
    if not wanted:
        return []
    match = or_(*[and_(func.lower(ResourceTag.key) == k.lower(), func.lower(ResourceTag.value) == v.lower())
                  for k, v in wanted])
    sub = select(ResourceTag.resource_id).where(ResourceTag.resource_type.in_(kinds_of_model(model)), match)
    return [model.id.in_(sub)]


# ---------------------------------------------------------------- details

def add_details(s, ctx, resourceid: str, resourcetype: str, details: dict, fordisplay=None) -> None:
    kind = kind_of(resourcetype, for_tags=False)
    wanted = pairs(details, name="details")
    if not wanted:
        raise InvalidParameter("Pass at least one detail: details[0].key=...&details[0].value=...")
    row = _resource(s, ctx, kind, resourceid, "add details to")[0]
    for key, value in wanted:
        if not value:
            raise InvalidParameter(f"Value for the key {key} is either null or empty")
        d = s.scalar(select(ResourceDetail).where(ResourceDetail.resource_type == kind.name,
                                                  ResourceDetail.resource_id == row.id, ResourceDetail.name == key))
        if d is None:
            s.add(ResourceDetail(resource_type=kind.name, resource_id=row.id, name=key, value=value,
                                 display=True if fordisplay is None else fordisplay))
        else:
            d.value = value
            if fordisplay is not None:
                d.display = fordisplay
    s.flush()


def remove_details(s, ctx, resourceid: str, resourcetype: str, key=None) -> None:
    kind = kind_of(resourcetype, for_tags=False)
    row = _resource(s, ctx, kind, resourceid, "remove details of")[0]
    conds = [ResourceDetail.resource_type == kind.name, ResourceDetail.resource_id == row.id]
    if key:
        conds.append(ResourceDetail.name == key)
    if not s.scalars(select(ResourceDetail.id).where(*conds)).first():
        raise InvalidParameter(f"{kind.name} {resourceid} has no detail {key}" if key else
                               f"{kind.name} {resourceid} has no details")
    s.execute(delete(ResourceDetail).where(*conds))


def list_details(s, ctx, q: ListQuery, *, resourcetype, resourceid=None, key=None, value=None, fordisplay=None):
    """Rows are (detail, resource uuid). A caller sees the details of resources it may see."""
    kind = kind_of(resourcetype, for_tags=False)
    stmt = (select(ResourceDetail, kind.model.uuid)
            .join(kind.model, kind.model.id == ResourceDetail.resource_id)
            .where(ResourceDetail.resource_type == kind.name))
    if resourceid:
        _resource(s, ctx, kind, resourceid, "list details of")
        stmt = stmt.where(kind.model.uuid == resourceid)
    elif not ctx.is_root_admin:
        if kind.owner is not _owned:
            raise PermissionDenied(f"Account {ctx.account_name}: pass resourceid to list {kind.name} details")
        stmt = stmt.where(*owner_filter(s, ctx, kind.model, listall=q.listall, isrecursive=q.isrecursive,
                                        account=q.account, domain_uuid=q.domainid))
    if key:
        stmt = stmt.where(ResourceDetail.name == key)
    if value:
        stmt = stmt.where(ResourceDetail.value == value)
    if not ctx.is_admin:             # details hidden from users (fordisplay=false) stay hidden from them
        fordisplay = True
    if fordisplay is not None:
        stmt = stmt.where(ResourceDetail.display.is_(fordisplay))
    stmt = stmt.where(*keyword_filter(q, ResourceDetail.name, ResourceDetail.value)).order_by(ResourceDetail.id)
    return paginate(s, stmt, q, scalars=False)


# ---------------------------------------------------------------- removal

@event.listens_for(Session, "before_flush")
def _drop_with_resource(session, flush_context, instances):
    gone = []
    for obj in session.deleted:
        if type(obj) in _NAMES_BY_MODEL:
            gone.append((type(obj), obj.id))
    for obj in session.dirty:
        if type(obj) in _NAMES_BY_MODEL and getattr(obj, "removed", None) is not None \
                and inspect(obj).attrs.removed.history.added:
            gone.append((type(obj), obj.id))
    if not gone:
        return
    conn = session.connection()
    for model, id in gone:
        names = _NAMES_BY_MODEL[model]
        conn.execute(delete(ResourceTag).where(ResourceTag.resource_type.in_(names), ResourceTag.resource_id == id))
        conn.execute(delete(ResourceDetail).where(ResourceDetail.resource_type.in_(names),
                                                  ResourceDetail.resource_id == id))
