"""Resource limits: CloudStack's resource types with the setting holding each default, the usage counters that
subsystems register (volumes, snapshots, storage bytes...), limit checks (532) and updateResourceLimit /
updateResourceCount's recount. Usage reads are the maintained counts of db/counters.py."""
from sqlalchemy import select

from volstack.db import counters
from volstack.db.models import Account, ResourceLimit
from volstack.errors import InvalidParameter, PermissionDenied, ResourceLimitExceeded
from volstack.services import events, settings as S
from volstack.services.context import ROOT_ADMIN, USER, require_root_admin

# Resource limits: CloudStack's resource types, the setting holding each default, and a counter of
# current usage that later subsystems register (volumes, snapshots, storage bytes...).
LIMIT_TYPES = {
    "volume": (2, S.MAX_ACCOUNT_VOLUMES),
    "snapshot": (3, S.MAX_ACCOUNT_SNAPSHOTS),
    "template": (4, S.MAX_ACCOUNT_TEMPLATES),
    "primary_storage": (10, S.MAX_ACCOUNT_PRIMARY_GB),
    "secondary_storage": (11, S.MAX_ACCOUNT_SECONDARY_GB),
}
LIMIT_BY_NUMBER = {num: name for name, (num, _) in LIMIT_TYPES.items()}
_usage_counters: dict = {}
GIB = 1024 ** 3


def register_usage_counter(resource_type: str, fn) -> None:
    """fn(session, account_id) -> current usage (a count, or bytes for *_storage), counted from the rows
    themselves: what updateResourceCount recalculates. Reads use the maintained count (db/counters.py), which
    the subsystem keeps with counters.counted(Model, ...)."""
    _usage_counters[resource_type] = fn


_internal_counters: dict = {}


def register_internal_counter(name: str, fn) -> None:
    """A count kept per account that is not a limit (e.g. the rows a plain list counts): fn recounts it for
    updateResourceCount, which repairs it silently."""
    _internal_counters[name] = fn


def add_usage_counter(resource_type: str, fn) -> None:
    """Another subsystem's share of a usage that one already counts (snapshot backups besides templates on
    image stores): the recount becomes the sum. Register it after the first counter."""
    prev = _usage_counters.get(resource_type)
    _usage_counters[resource_type] = fn if prev is None else (lambda s, acc: prev(s, acc) + fn(s, acc))



def limits_of(s, acc: Account) -> dict:
    """{resource type: max} of one account: its explicit limits, else the defaults (root admins: none)."""
    explicit = limits_many(s, [acc.id]).get(acc.id, {})
    defaults = default_limits(s) if acc.account_type != ROOT_ADMIN and len(explicit) < len(LIMIT_TYPES) else {}
    return {t: explicit.get(t, defaults.get(t, -1)) for t in LIMIT_TYPES}


def limit_of(s, account_id: int, resource_type: str) -> int:
    row = s.scalar(select(ResourceLimit).where(ResourceLimit.account_id == account_id,
                                               ResourceLimit.resource_type == resource_type))
    if row is not None:
        return row.max
    acc = s.get(Account, account_id)
    if acc is not None and acc.account_type == ROOT_ADMIN:
        return -1
    return S.Settings.value_in(s, LIMIT_TYPES[resource_type][1])


def usage_of(s, account_id: int, resource_type: str) -> int:
    """The account's maintained count: one primary-key read, never a scan of its objects."""
    return counters.get(s, "account", account_id, resource_type)


def usage_many(s, account_ids) -> dict:
    """{account id: {resource type: usage}} for many accounts in one query (listAccounts pages)."""
    return counters.get_many(s, "account", account_ids)


def usages(s, account_id: int) -> dict:
    """{resource type: usage} of every counted type (deleteAccount refuses while any is not 0)."""
    return {t: usage_of(s, account_id, t) for t in _usage_counters}


def limits_many(s, account_ids) -> dict:
    """{account id: {resource type: max}} of the explicit limits of many accounts in one query."""
    out: dict = {}
    for row in s.scalars(select(ResourceLimit).where(ResourceLimit.account_id.in_(list(account_ids)))):
        out.setdefault(row.account_id, {})[row.resource_type] = row.max
    return out


def default_limits(s) -> dict:
    """{resource type: the max.account.* default} in one query; root admins have no limits."""
    values = S.Settings.many_in(s, [key for _, key in LIMIT_TYPES.values()])
    return {rtype: values[(key.name, 0)] for rtype, (_, key) in LIMIT_TYPES.items()}


def recalculate(s, acc: Account, types=None) -> dict:
    """updateResourceCount: recount the account's usage from its objects; {type: (old, new)}."""
    out = {}
    for rtype, fn in _usage_counters.items():
        if types is None or rtype in types:
            new = int(fn(s, acc.id))
            out[rtype] = (counters.set_count(s, "account", acc.id, rtype, new), new)
    if types is None:
        for name, fn in _internal_counters.items():
            counters.set_count(s, "account", acc.id, name, int(fn(s, acc.id)))
    return out


def check_limit(s, account_id: int, resource_type: str, delta: int = 1) -> None:
    """Raise 532 when adding delta (a count, or bytes for *_storage) would pass the account's limit."""
    limit = limit_of(s, account_id, resource_type)
    if limit < 0:
        return
    used = usage_of(s, account_id, resource_type)
    scale = GIB if resource_type.endswith("_storage") else 1
    if used + delta > limit * scale:
        acc = s.get(Account, account_id)
        unit = " GiB" if scale > 1 else ""
        raise ResourceLimitExceeded(
            f"Maximum amount of resources of Type = '{resource_type}' for Account Name = {acc.name} is exceeded: "
            f"Account Resource Limit = {limit}{unit}, Current Account Resource Amount = {used // scale}{unit}, "
            f"Requested Resource Amount = {-(-delta // scale)}{unit}.")


def update_resource_limit(s, ctx, acc: Account, resource_type: str, max_: int) -> ResourceLimit:
    require_root_admin(ctx) if acc.account_type != USER else None
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can change resource limits")
    if max_ < -1:
        raise InvalidParameter("Please specify either '-1' for an infinite limit, or a limit that is at least '0'")
    row = s.scalar(select(ResourceLimit).where(ResourceLimit.account_id == acc.id, ResourceLimit.resource_type == resource_type))
    if row is None:
        row = ResourceLimit(account_id=acc.id, resource_type=resource_type, max=max_)
        s.add(row)
    else:
        row.max = max_
    events.record(s, ctx, "RESOURCE.LIMIT.UPDATE", f"Limit of {resource_type} for account {acc.name} set to {max_}",
                  resource_type="Account", resource_uuid=acc.uuid)
    return row
