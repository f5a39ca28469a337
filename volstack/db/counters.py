"""Counters maintained in the transaction that changes what they count (CloudStack's resource_count).

A counted model declares what one row contributes: `counted(Model, fn)` with fn(values) -> [(scope,
owner id, resource type, amount)], values being the row's attributes as a dict. Before every flush the
difference between each new, changed or deleted row's old and new contribution is added to the
`resource_count` rows with one upsert per (scope, owner, type). So a limit check or a pool's allocated bytes
is one primary-key read instead of a scan, on SQLite and PostgreSQL alike, and exact as long as every
change goes through the ORM: bulk UPDATE/DELETE statements on counted columns bypass it (none exist; keep
it so) and `recalculate` (updateResourceCount) rebuilds an owner's counts from the rows themselves.
"""
from sqlalchemy import event, func, inspect as sa_inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from volstack.db.models import ResourceCount

_counted: dict = {}          # model -> [(attribute names, fn)]


def counted(model, names: tuple, fn) -> None:
    """fn(session, values: dict of names) -> iterable of (scope, owner_id, resource_type, amount)."""
    _counted.setdefault(model, []).append((names, fn))
    for n in names:    # setting a counted attribute loads its old value first, so the old contribution is known
        event.listen(getattr(model, n), "set", _noop, active_history=True, retval=True)


def _noop(target, value, oldvalue, initiator):
    return value


def _old_values(obj, names) -> dict:
    st = sa_inspect(obj)
    out = {}
    for n in names:
        h = st.attrs[n].history       # counted columns keep active history: the old value is always loaded
        out[n] = h.deleted[0] if h.deleted else (h.unchanged[0] if h.unchanged else getattr(obj, n))
    return out


def _new_values(obj, names) -> dict:
    return {n: getattr(obj, n) for n in names}


@event.listens_for(Session, "before_flush")
def _before_flush(session, _ctx, _instances) -> None:
    deltas: dict = {}

    def add(values, fn, sign):
        for scope, owner, rtype, amount in fn(session, values):
            if owner is not None and amount:
                k = (scope, owner, rtype)
                deltas[k] = deltas.get(k, 0) + sign * int(amount)

    with session.no_autoflush:
        for obj in session.new:
            for names, fn in _counted.get(type(obj), ()):
                add(_new_values(obj, names), fn, 1)
        for obj in session.dirty:
            for names, fn in _counted.get(type(obj), ()):
                if session.is_modified(obj):
                    add(_old_values(obj, names), fn, -1)
                    add(_new_values(obj, names), fn, 1)
        for obj in session.deleted:
            for names, fn in _counted.get(type(obj), ()):
                add(_old_values(obj, names), fn, -1)
    for (scope, owner, rtype), d in sorted(deltas.items()):    # a fixed order: no lock-order deadlocks
        if d:
            bump(session, scope, owner, rtype, d)


def bump(session, scope: str, owner: int, rtype: str, delta: int) -> None:
    """count += delta, creating the row at delta (one statement, safe against a concurrent creator)."""
    ins = (pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert)(ResourceCount)
    stmt = ins.values(scope=scope, owner_id=owner, resource_type=rtype, count=delta)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["scope", "owner_id", "resource_type"],
        set_={"count": ResourceCount.count + stmt.excluded.count}))


def get(session, scope: str, owner: int, rtype: str) -> int:
    v = session.scalar(select(ResourceCount.count).where(ResourceCount.scope == scope, ResourceCount.owner_id == owner,
                                                         ResourceCount.resource_type == rtype))
    return int(v or 0)


def sum_all(session, scope: str, rtype: str) -> int:
    """Σ of one type's counts over every owner of a scope (as many rows as owners, not objects)."""
    return int(session.scalar(select(func.coalesce(func.sum(ResourceCount.count), 0)).where(
        ResourceCount.scope == scope, ResourceCount.resource_type == rtype)))


def get_many(session, scope: str, owners) -> dict:
    """{owner id: {resource type: count}} for many owners in one query (a missing type counts 0)."""
    out: dict = {}
    for o, rtype, c in session.execute(select(ResourceCount.owner_id, ResourceCount.resource_type, ResourceCount.count)
                                       .where(ResourceCount.scope == scope, ResourceCount.owner_id.in_(list(owners)))):
        out.setdefault(o, {})[rtype] = int(c)
    return out


def set_count(session, scope: str, owner: int, rtype: str, value: int) -> int:
    """Overwrite one count (recalculation); returns the previous value."""
    old = int(session.scalar(select(ResourceCount.count).where(
        ResourceCount.scope == scope, ResourceCount.owner_id == owner, ResourceCount.resource_type == rtype)
        .with_for_update()) or 0)
    if old != value:
        bump(session, scope, owner, rtype, value - old)
    return old
