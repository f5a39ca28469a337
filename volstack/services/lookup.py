"""Existence checks for uuid parameters: which table each entity name lives in."""
from sqlalchemy import select

from volstack.db import models as m

ENTITIES = {
    "Zone": m.Zone, "Pod": m.Pod, "Cluster": m.Cluster, "Host": m.Host,
    "Domain": m.Domain, "Account": m.Account, "User": m.User, "Role": m.Role,
    "AsyncJob": m.AsyncJob, "Event": m.Event,
}


# Projects: none exist yet, so a projectid names nothing (431), never a filter that is ignored
ENTITIES["Project"] = None


def register_entity(name: str, model) -> None:
    ENTITIES[name] = model


def exists(s, entity: str, uuid: str) -> bool:
    model = ENTITIES[entity]
    if model is None:                # an entity volstack has none of (yet): every id is unknown
        return False
    return s.scalar(select(model.id).where(model.uuid == uuid)) is not None
