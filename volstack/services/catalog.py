"""Catalogues: guest OS types (CloudStack's, from guest_os_catalogue.json, plus those added with addGuestOs), storage
providers, hypervisors. Ids of the built-in entries are stable across installs."""
import json
import uuid
from pathlib import Path

_NS = uuid.UUID("6f1c2f64-3a53-4c57-9d7a-5a0d2b9e6a11")

_CATALOGUE = json.loads((Path(__file__).with_name("guest_os_catalogue.json")).read_text())
OS_CATEGORIES: list[str] = _CATALOGUE["categories"]
OS_TYPES: list[tuple[str, str]] = [tuple(t) for t in _CATALOGUE["os_types"]]


def os_type_id(description: str) -> str:
    return str(uuid.uuid5(_NS, "ostype:" + description))


def os_category_id(name: str) -> str:
    return str(uuid.uuid5(_NS, "oscategory:" + name))


_BUILTIN = {os_type_id(d): {"id": os_type_id(d), "description": d, "name": d, "oscategoryid": os_category_id(c),
                            "oscategoryname": c, "isuserdefined": False, "fordisplay": True} for d, c in OS_TYPES}
CATEGORY_NAMES = {os_category_id(c): c for c in OS_CATEGORIES}


def _user_defined(row) -> dict:
    return {"id": row.uuid, "description": row.display_name, "name": row.name or row.display_name,
            "oscategoryid": row.category_uuid, "oscategoryname": CATEGORY_NAMES.get(row.category_uuid),
            "isuserdefined": True, "fordisplay": row.display}


def os_types(s=None) -> list[dict]:
    """CloudStack's catalogue, then the guest OS types added with addGuestOs (with a session)."""
    out = list(_BUILTIN.values())
    if s is not None:
        from sqlalchemy import select
        from volstack.db.tag_models import GuestOs
        out += [_user_defined(r) for r in s.scalars(select(GuestOs).order_by(GuestOs.id))]
    return out


def os_type(uuid_: str, s=None) -> dict | None:
    if uuid_ in _BUILTIN:
        return _BUILTIN[uuid_]
    if s is not None:
        from sqlalchemy import select
        from volstack.db.tag_models import GuestOs
        row = s.scalar(select(GuestOs).where(GuestOs.uuid == uuid_))
        return _user_defined(row) if row is not None else None
    return None


# Providers known to this management server, by store role. Storage subsystems add theirs.
STORAGE_PROVIDERS: dict[str, list[str]] = {"primary": [], "image": []}


def register_storage_provider(role: str, name: str) -> None:
    if name not in STORAGE_PROVIDERS[role]:
        STORAGE_PROVIDERS[role].append(name)
