"""listConfigurations / updateConfiguration / resetConfiguration over the settings registry."""
from sqlalchemy import delete, select

from volstack.db.models import Account, Cluster, ConfigValue, Domain, Zone
from volstack.errors import InvalidParameter
from volstack.services import events
from volstack.services.context import require_root_admin
from volstack.services.settings import KEYS, Settings, key_by_name

# scope name -> model whose uuid identifies the scope. Storage subsystems add storagepool and imagestore.
SCOPE_MODELS = {"zone": Zone, "cluster": Cluster, "account": Account, "domain": Domain}


def register_scope(scope: str, model) -> None:
    SCOPE_MODELS[scope] = model


def resolve_scope(s, scope_uuids: dict) -> tuple[str, int]:
    """scope_uuids: {scope: uuid or None}; at most one may be given."""
    given = [(k, v) for k, v in scope_uuids.items() if v]
    if len(given) > 1:
        raise InvalidParameter("Pass at most one of zoneid, clusterid, storageid, accountid, domainid, imagestoreuuid")
    if not given:
        return "global", 0
    scope, uuid = given[0]
    model = SCOPE_MODELS.get(scope)
    if model is None:
        raise InvalidParameter(f"There is nothing of scope {scope} in this installation yet")
    row = s.scalar(select(model).where(model.uuid == uuid))
    if row is None:
        raise InvalidParameter(f"Unable to find {scope} by id {uuid}")
    return scope, row.id


_UNREAD = object()


def _row(s, key, scope, scope_id, scope_uuid, value=_UNREAD):
    if value is _UNREAD:
        value = Settings.value_in(s, key, **{scope: scope_id})
    return {"name": key.name, "value": key.format(value) or "",
            "default": key.format(key.default), "category": key.category, "description": key.description,
            "scope": scope if scope != "global" else ",".join(key.scopes) if len(key.scopes) == 1 else key.scopes[0],
            "type": {int: "Long" if "size" in key.name or "wait" in key.name else "Integer", float: "Float",
                     bool: "Boolean"}.get(key.type, "String"),
            "id": scope_uuid}


def list_configurations(s, ctx, scope_uuids: dict, name=None, category=None, keyword=None):
    require_root_admin(ctx)
    scope, scope_id = resolve_scope(s, scope_uuids)
    scope_uuid = next((v for v in scope_uuids.values() if v), None)
    keys = []
    for key in sorted(KEYS.values(), key=lambda k: k.name):
        if scope != "global" and scope not in key.scopes:
            continue
        if name and name.lower() not in key.name.lower():
            continue
        if category and category.lower() != key.category.lower():
            continue
        if keyword and keyword.lower() not in key.name.lower():
            continue
        keys.append(key)
    values = Settings.many_in(s, keys, scope, (scope_id,))      # one query for the whole list
    return [_row(s, key, scope, scope_id, scope_uuid, values[(key.name, scope_id)]) for key in keys]


def update_configuration(s, ctx, name, value, scope_uuids: dict) -> dict:
    require_root_admin(ctx)
    key = key_by_name(name)
    scope, scope_id = resolve_scope(s, scope_uuids)
    if value is None:
        raise InvalidParameter("Unable to execute API command updateconfiguration due to missing parameter value")
    Settings(None).set(key, value, scope, scope_id, session=s)
    s.flush()
    events.record(s, ctx, "CONFIGURATION.VALUE.EDIT", f"Setting {name} set to {value!r} at {scope} scope",
                  resource_type="Configuration")
    return _row(s, key, scope, scope_id, next((v for v in scope_uuids.values() if v), None))


def reset_configuration(s, ctx, name, scope_uuids: dict) -> dict:
    require_root_admin(ctx)
    key = key_by_name(name)
    scope, scope_id = resolve_scope(s, scope_uuids)
    if scope not in key.scopes:
        raise InvalidParameter(f"Scope {scope} is not valid for {key.name}; it can be set at: {', '.join(key.scopes)}")
    s.execute(delete(ConfigValue).where(ConfigValue.name == key.name, ConfigValue.scope == scope,
                                        ConfigValue.scope_id == scope_id))
    events.record(s, ctx, "CONFIGURATION.VALUE.EDIT", f"Setting {name} reset at {scope} scope", resource_type="Configuration")
    return _row(s, key, scope, scope_id, next((v for v in scope_uuids.values() if v), None))
