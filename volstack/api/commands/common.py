"""Small helpers shared by command modules."""
from volstack.api.registry import Lst, Obj
from volstack.api.views import Lookups
from volstack.errors import InvalidParameter
from volstack.services import settings as S
from volstack.services.listing import ListQuery


def list_query(req, p) -> ListQuery:
    """Validate page/pagesize the way BaseListCmd does and build the service-side query."""
    max_size = req.ms.settings_value(S.DEFAULT_PAGE_SIZE, req.s)
    page, size = p.page, p.pagesize
    if size is not None:
        if size == -1:
            if page is not None:
                raise InvalidParameter("Can't specify page parameter when pagesize is -1 (Unlimited)")
        elif size < 1:
            raise InvalidParameter(f"Page size must be a positive number or -1 (unlimited): got {size}")
        elif size > max_size:
            raise InvalidParameter(f"Page size can't exceed max allowed page size value: {max_size}")
        elif page is None:
            raise InvalidParameter("\"page\" parameter is required when \"pagesize\" is specified")
    if page is not None:
        if size is None:
            raise InvalidParameter("\"pagesize\" parameter is required when \"page\" is specified")
        if page < 1:
            raise InvalidParameter(f"Page number must be 1 or more: got {page}")
    return ListQuery(keyword=p.keyword, page=page, pagesize=size, listall=bool(p.listall),
                     isrecursive=bool(p.isrecursive), account=p.account, domainid=p.domainid)


def obj(req, view, row) -> Obj:
    return Obj(view.key, view.render(row, Lookups(req.s)))


def lst(req, view, rows_total) -> Lst:
    """A page of rows rendered with one query per referenced model (Lookups.render_all)."""
    rows, total = rows_total
    return Lst(view.key, Lookups(req.s).render_all(view, rows), total)


def paged(req, p, view, items: list) -> Lst:
    """A list command over rows held in memory (files on a pool, fixed catalogues): one page of them."""
    return page_of(req, p, view.key, Lookups(req.s).render_all(view, items))


def page_of(req, p, key: str, rows: list[dict]) -> Lst:
    """Rendered rows held in memory: keyword (a part of the name, ignoring case, as keyword_filter), then one page;
    so list commands built in memory honour keyword/page/pagesize like those built by a query."""
    q = list_query(req, p)
    if q.keyword:
        rows = [r for r in rows if q.keyword.lower() in str(r.get("name") or "").lower()]
    size = len(rows) if q.pagesize in (None, -1) else q.pagesize
    start = ((q.page or 1) - 1) * size
    return Lst(key, rows[start:start + size], len(rows))


def own_account_only(req, p, doing: str, instead: str) -> None:
    """account/domainid name the new object's owner. volstack makes it for the caller's own account only: naming
    another is refused (531 outside the caller's reach, 431 otherwise) rather than accepted and ignored."""
    if not (p.account or p.domainid):
        return
    from volstack.services import accounts
    dom = accounts.get_domain(req.s, req.ctx, p.domainid) if p.domainid else None
    if (p.account and p.account != req.ctx.account_name) or (dom is not None and dom.id != req.ctx.domain_id):
        raise InvalidParameter(f"{doing} for another account (account/domainid) is not supported: {instead}, or "
                               "leave both out")


def pick(p, *names) -> dict:
    return {n: p.get(n) for n in names if p.get(n) is not None}
