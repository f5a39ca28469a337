"""Who is calling: the identity every service call carries, and the ownership rules that follow.

CloudStack semantics: a user sees only its own account's resources; admins see others only with
listall=true (root admin: everything, domain admin: its domain subtree).
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


def can_access_domain(ctx: CallContext, domain: Domain) -> bool:
    if ctx.is_root_admin:
        return True
    if ctx.account_type == DOMAIN_ADMIN:
        return domain.path.startswith(ctx.domain_path)
    return domain.id == ctx.domain_id


def check_access(s, ctx: CallContext, account_id: int, what: str = "resource") -> None:
    """Raise 531 when the caller may not touch something owned by account_id."""
    if ctx.account_id == account_id or ctx.is_root_admin:
        return
    if ctx.account_type == DOMAIN_ADMIN:
        acc = s.get(Account, account_id)
        dom = s.get(Domain, acc.domain_id) if acc else None
        if dom is not None and dom.path.startswith(ctx.domain_path):
            return
    raise PermissionDenied(f"Account {ctx.account_name} does not have permission to access this {what}")


def owner_filter(s, ctx: CallContext, model, *, listall=False, isrecursive=False, account=None, domain_uuid=None):
    """The WHERE clauses that limit a list to what the caller may see, as CloudStack does."""
    if domain_uuid:
        dom = s.scalar(select(Domain).where(Domain.uuid == domain_uuid))
        if dom is None:
            raise InvalidParameter(f"Unable to find domain by id {domain_uuid}")
        if not can_access_domain(ctx, dom):
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
            sub = select(Account.id).join(Domain, Domain.id == Account.domain_id).where(Domain.path.startswith(base.path))
        return [model.account_id.in_(sub)]
    return [model.account_id == ctx.account_id]
