"""Who is calling: the identity every service call carries, and the ownership rules that follow.

CloudStack semantics: a user sees only its own account's resources; admins see others only with
listall=true (root admin: everything, domain admin: its domain subtree).

The subtree is decided by domain ids (parent links), never by comparing path strings: a path is a name
that a rename changes, and two paths that share a prefix are not parent and child.
"""
from dataclasses import dataclass

from sqlalchemy import select

from volstack.db.models import Account, Domain
from volstack.errors import InvalidParameter, PermissionDenied

USER, ROOT_ADMIN, DOMAIN_ADMIN = 0, 1, 2
ROLE_OF_TYPE = {USER: "User", ROOT_ADMIN: "Admin", DOMAIN_ADMIN: "DomainAdmin"}


@dataclass(frozen=True)
class CallContext:
    user_id: int
    account_id: int
    domain_id: int
    domain_path: str
    account_type: int
    user_uuid: str = ""
    account_name: str = ""
    job_uuid: str | None = None

    @property
    def role_type(self) -> str:
        return ROLE_OF_TYPE[self.account_type]

    @property
    def is_root_admin(self) -> bool:
        return self.account_type == ROOT_ADMIN

    @property
    def is_admin(self) -> bool:
        return self.account_type in (ROOT_ADMIN, DOMAIN_ADMIN)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def system_context() -> CallContext:
    """The identity of periodic tasks and of `volstack apply`: the root admin of the ROOT domain."""
    return CallContext(user_id=2, account_id=2, domain_id=1, domain_path="/", account_type=ROOT_ADMIN,
                       account_name="admin")


def require_root_admin(ctx: CallContext) -> None:
    if not ctx.is_root_admin:
        raise PermissionDenied("Only the root administrator can perform this operation")


def ancestor_ids(s, domain_id: int) -> list[int]:
    """domain_id, its parent, ... up to ROOT, by the parent links."""
    out = []
    while domain_id is not None and domain_id not in out:
        out.append(domain_id)
        domain_id = s.scalar(select(Domain.parent_id).where(Domain.id == domain_id))
    return out


def subtree_ids(domain_id: int):
    """A SELECT of the ids of domain_id and all its descendants (recursive over parent links), for IN (...)."""
    tree = select(Domain.id).where(Domain.id == domain_id).cte("subtree", recursive=True)
    tree = tree.union_all(select(Domain.id).where(Domain.parent_id == tree.c.id))
    return select(tree.c.id)


def in_subtree(s, domain_id: int, top_id: int) -> bool:
    return top_id in ancestor_ids(s, domain_id)


def can_access_domain(s, ctx: CallContext, domain: Domain) -> bool:
    if ctx.is_root_admin:
        return True
    if ctx.account_type == DOMAIN_ADMIN:
        return in_subtree(s, domain.id, ctx.domain_id)
    return domain.id == ctx.domain_id


def check_access(s, ctx: CallContext, account_id: int, what: str = "resource") -> None:
    """Raise 531 when the caller may not touch something owned by account_id."""
    if ctx.account_id == account_id or ctx.is_root_admin:
        return
    if ctx.account_type == DOMAIN_ADMIN:
        acc = s.get(Account, account_id)
        if acc is not None and in_subtree(s, acc.domain_id, ctx.domain_id):
            return
    raise PermissionDenied(f"Account {ctx.account_name} does not have permission to access this {what}")


def owner_filter(s, ctx: CallContext, model, *, listall=False, isrecursive=False, account=None, domain_uuid=None):
    """The WHERE clauses that limit a list to what the caller may see, as CloudStack does."""
    if domain_uuid:
        dom = s.scalar(select(Domain).where(Domain.uuid == domain_uuid))
        if dom is None:
            raise InvalidParameter(f"Unable to find domain by id {domain_uuid}")
        if not can_access_domain(s, ctx, dom):
            raise PermissionDenied(f"Account {ctx.account_name} does not have permission to access domain {dom.name}")
    else:
        dom = None
    if not ctx.is_admin:
        return [model.account_id == ctx.account_id]
    if account:
        dom = dom or s.get(Domain, ctx.domain_id)
        acc = s.scalar(select(Account).where(Account.name == account, Account.domain_id == dom.id))
        if acc is None:
            raise InvalidParameter(f"Unable to find account {account} in domain {dom.name}")
        return [model.account_id == acc.id]
    if dom is not None or listall:
        base = dom or s.get(Domain, ctx.domain_id)
        if dom is not None and not (listall or isrecursive):
            sub = select(Account.id).where(Account.domain_id == base.id)
        elif base.path == "/":
            return []       # every account: no filter, so the planner walks the page's index, not the owners'
        else:
            sub = select(Account.id).where(Account.domain_id.in_(subtree_ids(base.id)))
        return [model.account_id.in_(sub)]
    return [model.account_id == ctx.account_id]
