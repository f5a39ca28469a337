"""Paging and keyword search shared by every list service."""
from dataclasses import dataclass

from sqlalchemy import func, select


@dataclass
class ListQuery:
    keyword: str | None = None
    page: int | None = None
    pagesize: int | None = None      # None: the default page size; -1: everything
    listall: bool = False
    isrecursive: bool = False
    account: str | None = None
    domainid: str | None = None


def paginate(s, stmt, q: ListQuery, default_size: int = 500, scalars: bool = True, total: int | None = None):
    """Run stmt one page at a time; returns (rows, total matches). scalars=False: rows are tuples of the
    statement's columns. total: the count when the caller knows it without counting (a maintained count);
    otherwise the matches are counted."""
    if total is None:
        total = int(s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())))
    run = s.scalars if scalars else (lambda st: [tuple(r) for r in s.execute(st)])
    if q.pagesize == -1:
        return list(run(stmt)), total
    size = q.pagesize or default_size
    page = q.page or 1
    return list(run(stmt.limit(size).offset((page - 1) * size))), total


def keyword_filter(q: ListQuery, *columns):
    if not q.keyword:
        return []
    from sqlalchemy import or_
    # % and _ in a keyword are the characters themselves, not wildcards
    escaped = q.keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [or_(*[c.ilike(f"%{escaped}%", escape="\\") for c in columns])]



def identity_filter(model, f: dict) -> list:
    """The id / ids / name / tags filters every list command of a uuid-and-name object takes. Names compare
    ignoring case, as CloudStack's do on its MySQL collation (an idempotent client looking up `Data1` must find
    `data1`)."""
    conds = []
    if f.get("id"):
        conds.append(model.uuid == f["id"])
    if f.get("ids"):
        conds.append(model.uuid.in_(f["ids"]))
    if f.get("name"):
        conds.append(func.lower(model.name) == f["name"].lower())
    if f.get("tags"):
        from volstack.services.tags import tag_filter
        conds += tag_filter(model, f["tags"])
    return conds
