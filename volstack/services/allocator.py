"""Which primary pool a volume goes to (CloudStack's storage pool allocators, reference §6).

Every rejected pool gets a reason, so "nothing fits" errors say, pool by pool, why.
Concurrent allocations never overcommit a pool: the space check runs under the write
transaction that also records the choice (SQLite: BEGIN IMMEDIATE; PostgreSQL: a row lock on the pool).
"""
import random

from types import SimpleNamespace

from sqlalchemy import func, select

from volstack.db.models import Host
from volstack.db.storage_models import StoragePool, StoragePoolHost, Volume
from volstack.drivers import driver_for
from volstack.errors import InsufficientCapacity
from volstack.services import settings as S
from volstack.services.pools import allocated_bytes


def offering_tags(offering) -> list[str]:
    return [t.strip() for t in (offering.tags or "").split(",") if t.strip()] if offering else []


def tags_match(pool, wanted: list[str]) -> bool:
    if pool.is_tag_a_rule:
        return _rule_matches(pool.tags or "", wanted)
    have = {t.strip() for t in (pool.tags or "").split(",") if t.strip()}
    return set(wanted) <= have


def _rule_matches(rule: str, wanted: list[str]) -> bool:
    """Tag rules are JavaScript in CloudStack; volstack evaluates the common forms safely:
    `tags.includes('x')`, `tags.indexOf('x') >= 0`, joined with && / ||, and `tags.length == 0`."""
    import re
    expr = rule
    expr = re.sub(r"tags\.includes\(\s*'([^']*)'\s*\)", lambda m: str(m.group(1) in wanted), expr)
    expr = re.sub(r"tags\.indexOf\(\s*'([^']*)'\s*\)\s*(>=\s*0|!=\s*-1|>\s*-1)", lambda m: str(m.group(1) in wanted), expr)
    expr = re.sub(r"tags\.length\s*==\s*(\d+)", lambda m: str(len(wanted) == int(m.group(1))), expr)
    expr = expr.replace("&&", " and ").replace("||", " or ").replace("!", " not ").replace("true", "True") \
        .replace("false", "False")
    if not re.fullmatch(r"[\sTrueFalsnotd()]*", expr):
        return False
    try:
        return eval(expr, {"__builtins__": {}}, {}) is True   # only True/False/and/or/not/parentheses remain
    except Exception:          # anything else (a name, bad syntax) is not a match
        return False


def placement_of(pool):
    """What a volume already on `pool` asks of another pool (or of more room on this one) when it moves or grows:
    the same scope, no tags (its pool was checked against its offering already). Encryption comes from the
    volume itself: pass candidates(encrypted=...)."""
    return SimpleNamespace(storage_type="local" if pool.scope == "HOST" else "shared", tags=None, encrypt=False)


def candidates(s, *, zone_id, size: int, offering, hypervisor: str, host: Host | None = None,
               cluster_id: int | None = None, account_id: int | None = None, exclude: tuple = (),
               encrypted: bool | None = None):
    """(suitable pools in preference order, {pool name: reason} for the rejected). encrypted: the volume is
    encrypted (default: its offering says encrypt)."""
    local = offering is not None and offering.storage_type == "local"
    encrypted = bool(offering is not None and offering.encrypt) if encrypted is None else encrypted
    stmt = select(StoragePool).where(StoragePool.zone_id == zone_id, StoragePool.state != "Removed")
    pools = list(s.scalars(stmt.order_by(StoragePool.id)))
    wanted = offering_tags(offering)
    ok, why = [], {}
    cap_threshold = S.Settings.value_in(s, S.CAPACITY_DISABLE, zone=zone_id)
    alloc_threshold = S.Settings.value_in(s, S.ALLOCATED_DISABLE, zone=zone_id)
    for pool in pools:
        reason = _reject(s, pool, local, wanted, hypervisor, host, cluster_id, size, cap_threshold, alloc_threshold, exclude)
        if reason is None and encrypted and not driver_for(pool.provider).CAPABILITIES.get("encryption"):
            reason = f"its driver ({driver_for(pool.provider).name}) cannot encrypt volumes"
        if reason:
            why[pool.name] = reason
        else:
            ok.append(pool)
    return _order(s, ok, account_id, zone_id), why


def _reject(s, pool, local, wanted, hypervisor, host, cluster_id, size, cap_threshold, alloc_threshold, exclude):
    if pool.id in exclude:
        return "excluded (the volume is already there)"
    if pool.state != "Up":
        return f"state is {pool.state}"
    if local != (pool.scope == "HOST"):
        return "local storage needed by the offering" if local else "host-local pool, the offering wants shared storage"
    if pool.scope == "HOST" and host is not None and pool.host_id != host.id:
        return "local to another host"
    if pool.scope == "CLUSTER" and cluster_id is not None and pool.cluster_id != cluster_id:
        return "in another cluster than the VM's host"
    if pool.hypervisor not in (None, "Any") and hypervisor and pool.hypervisor != hypervisor:
        return f"hypervisor {pool.hypervisor}, volume needs {hypervisor}"
    if host is not None and not s.scalar(select(StoragePoolHost.id).where(StoragePoolHost.pool_id == pool.id,
                                                                           StoragePoolHost.host_id == host.id)):
        return f"not connected on host {host.name}"
    if pool.is_tag_a_rule:
        if not tags_match(pool, wanted):
            return f"tag rule {pool.tags!r} is false for {wanted}"
    elif wanted and not tags_match(pool, wanted):
        return f"tags {pool.tags or '(none)'} lack {','.join(wanted)}"
    if not pool.capacity_bytes:
        return "capacity unknown (no statistics yet)"
    if pool.used_bytes / pool.capacity_bytes >= cap_threshold:
        return (f"{pool.used_bytes * 100 // pool.capacity_bytes}% used ≥ pool.storage.capacity.disablethreshold "
                f"{cap_threshold}")
    factor = S.Settings.value_in(s, S.OVERPROVISIONING, storagepool=pool.id) if driver_for(pool.provider).overprovisions(pool) else 1
    total = pool.capacity_bytes * factor
    allocated = allocated_bytes(s, pool)
    if (allocated + size) / total > alloc_threshold:
        return (f"allocated {allocated} + asked {size} bytes > {alloc_threshold} × {int(total)} "
                "(pool.storage.allocated.capacity.disablethreshold × capacity × overprovisioning)")
    return None


def _order(s, pools, account_id, zone_id):
    algo = S.Settings.value_in(s, S.VOLUME_ALLOCATION_ALGORITHM)
    if algo in ("random", "userconcentratedpod_random") or (account_id is None and algo == "userdispersing"):
        pools = pools[:]
        random.shuffle(pools)
        return pools
    if algo == "userdispersing":
        counts = dict(s.execute(select(Volume.pool_id, func.count()).where(Volume.account_id == account_id,
                                                                            Volume.removed.is_(None))
                                .group_by(Volume.pool_id)).all())
        return sorted(pools, key=lambda p: counts.get(p.id, 0))
    if algo == "firstfitleastconsumed":
        return sorted(pools, key=lambda p: -(p.capacity_bytes - allocated_bytes(s, p)))
    return pools   # firstfit: database order


def choose(s, **kw) -> StoragePool:
    ok, why = candidates(s, **kw)
    if not ok:
        detail = "; ".join(f"{name}: {reason}" for name, reason in why.items()) or "no storage pool in the zone"
        raise InsufficientCapacity(f"No suitable storage pool for a volume of {kw['size']} bytes: {detail}")
    pool = ok[0]
    if s.bind.dialect.name == "postgresql":       # serialize allocations on this pool
        s.execute(select(StoragePool.id).where(StoragePool.id == pool.id).with_for_update())
    return pool
